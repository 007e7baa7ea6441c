"""launch.sh itself: what a newcomer meets before any model loads, the order of a recipe's commands (with a
recording stand-in for Python), and the rehearsal's stand-ins. The recipes end to end: tests/test_rehearsal.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


def launch(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "launch.sh"), *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("command", [["demo"], ["table1", "toy"], ["rehearse"]])
def test_a_python_without_the_requirements_is_one_line(command, tmp_path):
    """`bash launch.sh demo` with the system Python (no torch) once ended in ModuleNotFoundError's traceback."""
    bare = executable(tmp_path / "python", f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')  # no site-packages: no torch
    for python, fragment in ((bare, "has no torch, diffusers, transformers, accelerate"), (tmp_path / "missing", "is not a Python")):
        proc = launch(*command, PYTHON=str(python), WORKDIR=str(tmp_path / "work"))
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert fragment in lines[0] and "PYTHON=.venv/bin/python" in lines[0] and "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "work").exists()  # nothing written


def test_no_command_prints_the_usage():
    proc = launch()
    assert proc.returncode == 2 and "bash launch.sh rehearse" in proc.stdout and "TRAIN_ARGS" in proc.stdout
    header = [line for line in (REPO / "launch.sh").read_text().splitlines()[1:] if line.startswith("#")]
    assert proc.stdout.splitlines() == header[:len(proc.stdout.splitlines())] and proc.stdout.rstrip().endswith("256 for table1, 128 for figures).")


def recorded(tmp_path: Path, *args: str, **env: str) -> list[str]:
    """The Python commands a recipe runs, in order, with a stand-in PYTHON that records them and does nothing
    (but answers launch.sh's check for the requirements with the real interpreter)."""
    log = tmp_path / "python.log"
    python = executable(tmp_path / "python", f'#!/bin/sh\n[ "$1" = -c ] && exec "{sys.executable}" "$@"\n'
                                             f'echo "$*" >> "{log}"\n')
    proc = launch(*args, PYTHON=str(python), WORKDIR=str(tmp_path / "clean-checkout"), **env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [line.replace(str(REPO) + "/", "") for line in log.read_text().splitlines()]


def test_figures_toy_on_a_clean_checkout_trains_then_runs_every_figure(tmp_path):
    """With no exps/ yet, `ls exps/...-figures-toy` under `set -euo pipefail` once ended the script before training."""
    calls = recorded(tmp_path, "figures", "toy", TRAIN_ARGS="--max_train_steps=40 --checkpointing_steps=10", TOY_PROMPTS="8")
    scripts = [re.match(r"(-m \S+|\S+)", call).group(1) for call in calls]
    assert scripts == ["-m dice.shapes_world", "-m dice.shapes_world", "train_sd15.py", *(f"figures/{name}.py" for name in (
        "quality_vs_nfe", "alpha_sweep", "dice_cfg_sweep", "training_curve", "sharpener_structure")), "-m dice.testkit.single_file",
        *(f"figures/{name}.py" for name in ("transfer_matrix", "semantic_padding", "embedding_pca", "attention_maps",
                                            "prompt_optimisation")), "evaluation/results.py"]
    train = calls[2]
    assert "--desc=figures-toy" in train and "--resume_from_checkpoint" not in train  # nothing to continue yet
    assert train.endswith("--max_train_steps=40 --checkpointing_steps=10 --desc=figures-toy")  # TRAIN_ARGS win
    assert "--num_images=8" in calls[3]
    assert "--train_args=" in calls[7] and "--max_train_steps=40" in calls[7]  # the A.1 sharpener trains as briefly


def test_a_rerun_of_a_block_continues_its_runs(tmp_path):
    """table1 toy with its runs already there: each training command continues its run (`run_of`), none starts anew."""
    for method in ("dice", "gd", "pnp"):
        (tmp_path / "clean-checkout" / "exps" / f"0000{'dgp'.index(method[0])}-table1-toy-{method}").mkdir(parents=True)
    calls = [call for call in recorded(tmp_path, "table1", "toy") if call.startswith("train_sd15.py")]
    assert len(calls) == 3
    for k, (call, method) in enumerate(zip(calls, ("dice", "gd", "pnp"))):
        assert f"--method={method} --resume_from_checkpoint=latest --experiment=exps/0000{k}-table1-toy-{method}" in call


def test_the_flow_worlds_block_trains_dice_and_gd_and_samples_at_its_teachers_w(tmp_path):
    """table1 toy-flow: the flow world (SD3 architecture) has no PnP row; its runs train with train_sd3.py; CFG's w and
    GD's sampled ω are read from the DICE run's teacher once it is trained (3 there, not the paper's 5)."""
    for k, method in enumerate(("dice", "gd")):
        (tmp_path / "clean-checkout" / "exps" / f"0000{k}-table1-toy-flow-{method}").mkdir(parents=True)
    calls = recorded(tmp_path, "table1", "toy-flow")
    trains = [call for call in calls if call.startswith("train_")]
    assert [call.split()[0] for call in trains] == ["train_sd3.py", "train_sd3.py"]
    assert ["--method=dice" in trains[0], "--method=gd" in trains[1]] == [True, True]
    assert all("shapes_world/shapes-world-flow" in call and "--preset=toy" in call for call in trains)
    assert "-m dice.recipes embedding-scale shapes-world-flow" in calls
    asked_w = calls.index("-m dice.recipes guidance-scale exps/00000-table1-toy-flow-dice")
    assert asked_w > calls.index(trains[-1])  # after training: the teacher's w is in the DICE run
    samples = [call for call in calls if call.startswith("sample.py")]
    assert len(samples) == 5 and all("--outdir=samples/table1-toy-flow" in call for call in samples)
    assert sum("--model_name=shapes-world-flow" in call for call in samples) == 3  # CFG, unguided, Scaling
    dice_row, gd_row = samples[3:]
    assert "--model_path=exps/00000-table1-toy-flow-dice" in dice_row and "--gd_scale" not in dice_row
    assert "--model_path=exps/00001-table1-toy-flow-gd" in gd_row and "--gd_scale=" in gd_row


def test_the_demos_reach_their_modules(tmp_path):
    """`bash launch.sh demo [family] [options]` and `demo-eval`: options pass through (the modules are tested themselves)."""
    assert recorded(tmp_path, "demo", "sdxl", "--num_prompts", "4") == ["-m dice.demo sdxl --num_prompts 4"]
    (tmp_path / "eval").mkdir()
    assert recorded(tmp_path / "eval", "demo-eval", "3", "--steps", "2") == ["-m dice.testkit.demo_eval 3 --steps 2"]


def test_train_takes_the_models_after_the_paper(tmp_path):
    """`train sd3.5-medium` runs train_sd3.py on that model; `train pixart-sigma-512` puts the 512 transformer into the
    PixArt-Sigma 1024 pipeline at the 512 preset."""
    (sd3,) = recorded(tmp_path, "train", "sd3.5-medium", MODELS_DIR="/models")
    assert "train_sd3.py --pretrained_model_name_or_path=/models/sd3.5-medium " in sd3
    (tmp_path / "sigma").mkdir()
    (sigma,) = recorded(tmp_path / "sigma", "train", "pixart-sigma-512", MODELS_DIR="/models")
    assert "train_pixart_sigma.py --pretrained_model_name_or_path=/models/pixart-sigma " in sigma
    assert "--pretrained_transformer_model_name_or_path=/models/pixart-sigma-512 --preset=paper-512" in sigma
    proc = launch("train", "flux-dev", PYTHON=sys.executable)
    assert proc.returncode == 2 and "unknown model 'flux-dev'" in proc.stderr


def test_model_ids_come_from_the_presets(tmp_path):
    from dice.paper import VAES
    from dice.presets import MODELS
    from dice.recipes import model_id

    proc = subprocess.run([sys.executable, "-m", "dice.recipes", "model", "dreamshaper"], cwd=REPO, capture_output=True, text=True)
    assert proc.stdout.strip() == MODELS["dreamshaper"][1] == model_id("dreamshaper")
    assert model_id("sdxl-vae") == VAES["sdxl-vae"]
    launch_sh = (REPO / "launch.sh").read_text()
    for hub_id in [path for _, path in MODELS.values()] + list(VAES.values()):
        assert hub_id not in launch_sh, f"{hub_id} is written in launch.sh too"


# ---- the rehearsal's stand-ins ------------------------------------------------------------------------

def test_the_stand_in_coco_and_prompt_sets_load_as_the_real_ones(tmp_path, monkeypatch):
    from dice.data import load_records
    from dice.prompts import load_prompts
    from dice.testkit.rehearsal import HPS_SETS, write_coco, write_prompt_sets

    coco = write_coco(tmp_path / "coco2017", train_images=4, val_images=2)
    layout, records = load_records(coco)
    assert layout == "coco2017" and len(records) == 4 and all(r.path.suffix == ".jpg" and r.path.is_file() and r.captions for r in records)
    assert len(list((coco / "val2017").glob("*.jpg"))) == 2
    val = json.loads((coco / "annotations" / "captions_val2017.json").read_text())
    assert len(val["images"]) == 2 and {a["image_id"] for a in val["annotations"]} == {i["id"] for i in val["images"]}
    monkeypatch.setenv("DICE_PROMPTS_DIR", str(write_prompt_sets(tmp_path / "prompts")))
    assert all(len(load_prompts(name)) == 3 for name in HPS_SETS)


def test_rehearsal_recipes_bring_what_they_read():
    from dice.testkit.rehearsal import RECIPES, with_prerequisites

    assert with_prerequisites(["table"]) == ["train", "sample", "eval", "table"]
    assert with_prerequisites(["figures", "train"]) == ["train", "train-variants", "figures"]
    assert with_prerequisites(list(reversed(RECIPES))) == list(RECIPES)


def test_the_docs_show_the_slurm_job_that_the_rehearsal_runs():
    job = (REPO / "slurm" / "train_sd15.sbatch").read_text()
    assert job in (REPO / "docs" / "cluster.md").read_text()
