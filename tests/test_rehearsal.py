"""The rehearsal of the cluster recipes (`bash launch.sh rehearse`), here its SLURM job and one Table 1 block killed
halfway and rerun: minutes on 2 cores, so the slow tier (.ci/run also rehearses every recipe from a fresh clone)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or not hasattr(os, "killpg"), reason="needs bash and process groups")
def test_slurm_job_and_an_interrupted_block_rehearse(tmp_path):
    root = tmp_path / "rehearsal"
    proc = subprocess.run(["bash", str(REPO / "launch.sh"), "rehearse", "slurm", "resume", "--dir", str(root)],
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Rehearsal passed" in proc.stdout and "killed with GD at checkpoint-" in proc.stdout
    from dice.paper import TABLE1_PRESETS  # `launch.sh train sd15` trains the run behind Table 1's block

    (job,) = (root / "work" / "exps").glob(f"*-sd15-sd15-{TABLE1_PRESETS['sd15']}")
    assert json.loads((job / "training_options.json").read_text())["num_processes"] == 2
    for work in ("work", "interrupted"):
        table = json.loads((root / work / "results" / "table1-sd15.json").read_text())
        assert [row["method"] for row in table] == ["cfg", "unguided", "scaling", "gd", "pnp", "dice"]
        assert all(row["smoke_test"] and set(row["values"]) == {"fid", "clip_score", "aesthetic"} for row in table)
