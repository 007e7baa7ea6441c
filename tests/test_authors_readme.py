"""The authors' README sampling-and-evaluation block (zju-pi/dice, first commit) runs as written, on the
tiny model, through `accelerate launch`: their sample.py flags, their sample-folder name, their
evaluator names and --desc. Only what their block cannot know is added: one process instead of 8,
four images instead of 5,000 (--num_images), and --smoke_test on the evaluators (no metric weights here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dice.checkpoint import SharpenerConfig, save_sharpener
from evaluation.metrics.fid import save_stats
from dice import Sharpener

REPO = Path(__file__).resolve().parents[1]

# Their block, verbatim but for the three additions named above ($EXTRA_SAMPLE, $EXTRA_EVAL, num_processes).
AUTHORS_BLOCK = r"""
# Sampling using trained DICE sharpener
model_name="sd15"
sharpener_path=3
sharpener_id=$sharpener_path
steps=20
alpha=1.0
batch_gpu=16
accelerate launch --num_processes=1 sample.py --model_name=$model_name --sharpener_path=$sharpener_path --sharpener_id=$sharpener_id --steps=$steps --alpha=$alpha --batch_gpu=$batch_gpu $EXTRA_SAMPLE;

# Evaluation using FID, CLIP score and Aeathetic score
out_folder="${model_name}_${sharpener_id}_steps${steps}_alpha${alpha}"
image_path="./samples/${out_folder}"
ref="$REF"
desc="${out_folder}"
accelerate launch --num_processes=1 ./evaluation/eval_fid.py calc --images=$image_path --ref=$ref --desc=$desc $EXTRA_EVAL;
accelerate launch --num_processes=1 ./evaluation/eval_clip_score.py calc --images=$image_path --desc=$desc $EXTRA_EVAL;
accelerate launch --num_processes=1 ./evaluation/eval_aes_score.py calc --images=$image_path --desc=$desc $EXTRA_EVAL;
"""


@pytest.mark.slow  # four `accelerate launch` processes (the rehearsal launches sample.py and the evaluators too)
def test_authors_readme_block_runs_as_written(tiny_model, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("sample.py", "evaluation"):  # their commands name the scripts relative to the checkout
        (work / name).symlink_to(REPO / name)
    torch.manual_seed(0)
    config = SharpenerConfig(family="sd15", base_model=str(tiny_model("sd15")), dim=32, step=1,
                             training_options={"resolution": 32})
    save_sharpener(work / "exps" / "00003-sd15-tiny" / "checkpoint-1", Sharpener(32), config)
    save_stats(work / "ref.npz", np.zeros(64), np.eye(64))  # the smoke-test Inception stand-in is 64-d
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), REF=str(work / "ref.npz"),
               EXTRA_SAMPLE="--num_images=4", EXTRA_EVAL="--smoke_test --num_workers=0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-euc", AUTHORS_BLOCK], cwd=work, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    alias = work / "samples" / "sd15_3_steps20_alpha1.0"
    assert alias.is_symlink() and alias.resolve().parent == (work / "samples").resolve()
    assert alias.resolve().name.startswith("sd15-dice-00003-a1-20steps-coco5k-")  # our name stays the real folder
    options = json.loads((alias / "sampling_options.json").read_text())
    assert options["base_model"] == str(tiny_model("sd15"))  # --model_name=sd15 named the family, as theirs does
    assert options["method"] == "dice" and options["steps"] == 20 and options["num_images"] == 4
    records = [json.loads(line) for line in (work / "results" / "results.jsonl").read_text().splitlines()]
    assert [r["metric"] for r in records] == ["fid", "clip_score", "aesthetic"]
    assert all(r["options"]["desc"] == "sd15_3_steps20_alpha1.0" and r["count"] == 4 for r in records)
    assert all(r["options"]["smoke_test"] and np.isfinite(r["value"]) for r in records)
