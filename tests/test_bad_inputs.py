"""Bad input through the real entry points (issue 9): each is refused with one line
``error: <what is wrong>. <how to fix it>`` on stderr, a non-zero exit status, no traceback, and no new
files. Then what must hold after a crash and a resume.

Most cases run an entry point's ``__main__`` block in this process (``runpy``, as ``python <script>`` or
``python -m`` would), so dozens of cases cost no interpreter start-ups; ``test_real_processes`` runs a few
through real ``python`` processes for the exit status and stderr of the process itself.
"""
from __future__ import annotations

import errno
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from dice.checkpoint import SharpenerConfig, save_sharpener
from evaluation.metrics.fid import save_stats
from dice import Sharpener

REPO = Path(__file__).resolve().parents[1]
PROGRESS_BAR = re.compile(r"\d+%\|")  # model-loading progress bars of diffusers / transformers: not messages

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # runpy re-running an imported dice module


def run_entry(entry: str, argv: list, monkeypatch, capsys) -> tuple[int | str | None, str]:
    """(exit status, stderr) of ``python <entry> argv`` (a script path) or ``python -m <entry>`` (dice.*)."""
    monkeypatch.setattr(sys, "argv", [entry, *map(str, argv)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        if entry.startswith("dice."):
            runpy.run_module(entry, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(REPO / entry), run_name="__main__")
    return exit.value.code, capsys.readouterr().err


def assert_one_error_line(status, stderr: str, *fragments: str) -> str:
    assert status not in (0, None), stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def tree(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.fixture
def workspace(tmp_path, monkeypatch, capsys):
    """A working directory; ``refused(entry, argv, *fragments)`` asserts the refusal wrote nothing in it."""
    monkeypatch.chdir(tmp_path)

    def refused(entry, argv, *fragments):
        before = tree(tmp_path)
        line = assert_one_error_line(*run_entry(entry, argv, monkeypatch, capsys), *fragments)
        assert tree(tmp_path) == before, f"{entry} {argv} wrote {tree(tmp_path) - before}"
        return line

    return tmp_path, refused


def write_file(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- training ------------------------------------------------------------------------------------
def test_training_refuses_bad_input_before_making_a_run_folder(tiny_model, tiny_dataset, workspace):
    root, refused = workspace
    sd15 = tiny_model("sd15")
    base = ["--pretrained_model_name_or_path", sd15, "--train_data_dir", tiny_dataset, "--output_dir", "exps",
            "--preset", "demo", "--max_train_steps", "1", "--validation_prompts", "--dataloader_num_workers", "0"]
    train = "train_sd15.py"
    refused(train, base + ["--learning_rate", "-1"], "--learning_rate", "'-1'")
    refused(train, base + ["--train_batch_size", "0"], "--train_batch_size", "'0'")
    refused(train, base + ["--resolution", "0"], "--resolution", "'0'")
    refused(train, base + ["--adam_beta1", "1.5"], "--adam_beta1")
    refused(train, base + ["--negative_prompt_prob", "0.5"], "--negative_prompt_prob needs --negative_prompts")
    refused(train, base + ["--negative_prompts", write_file(root / "inputs" / "none.txt", "\n \n")], "has no prompts")
    refused(train, base + ["--lr_scheduler", "fastest"], "--lr_scheduler 'fastest'", "linear")
    refused(train, base + ["--sharpener_inner_dim", "100"], "--sharpener_inner_dim 100 is not divisible by --sharpener_heads 8")
    refused(train, base + ["--sharpener_heads", "0"], "--sharpener_heads", "'0'")
    refused(train, base + ["--method", "gd", "--sharpener_heads", "4"], "--method gd trains none")
    refused(train, base + ["--method", "pnp", "--project_u_once"], "--method pnp trains none")
    refused(train, base + ["--report_to", "wandb"], "not installed")
    refused(train, base + ["--experiment", "3"], "--resume_from_checkpoint latest")
    refused(train, base + ["--resume_from_checkpoint", "latest"], "--experiment")
    refused(train, base + ["--output_dir", write_file(root / "inputs" / "a_file") / "exps"], "is a file")
    # Data.
    refused(train, base + ["--train_data_dir", root / "inputs"], "neither a COCO layout nor metadata.jsonl")
    coco = root / "inputs" / "coco"
    (coco / "train2017").mkdir(parents=True)
    write_file(coco / "annotations" / "captions_train2017.json",
               json.dumps({"images": [{"id": 1, "file_name": 7}], "annotations": [{"image_id": 1, "caption": ["x"]}]}))
    refused(train, base + ["--train_data_dir", coco], "captions_train2017.json is not a COCO captions file")
    write_file(root / "inputs" / "gone" / "metadata.jsonl", '{"file_name": "missing.png", "text": "a cat"}\n')
    refused(train, base + ["--train_data_dir", root / "inputs" / "gone"], "do not exist", "missing.png")
    for folder in ("no-caption", "latin-1"):  # readable images: only the captions file is wrong
        for name in ("a.png", "b.png"):
            write_file(root / "inputs" / folder / name)
            PIL.Image.new("RGB", (32, 32), (200, 40, 40)).save(root / "inputs" / folder / name)
    write_file(root / "inputs" / "no-caption" / "metadata.jsonl", '{"file_name": "a.png", "text": "a cat"}\n{"file_name": "b.png", "text": []}\n')
    refused(train, base + ["--train_data_dir", root / "inputs" / "no-caption"], "line 2", "empty list")
    (root / "inputs" / "latin-1" / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "a caf\xe9"}\n')
    refused(train, base + ["--train_data_dir", root / "inputs" / "latin-1"], "is not UTF-8 text", "Save it as UTF-8")
    # A guidance scale below 1 (1 = unguided) is refused everywhere (dice/errors.py guidance_scale says why).
    refused(train, base + ["--guidance_scale", "-1"], "--guidance_scale", "a guidance scale >= 1")
    refused(train, base + ["--guidance_scale", "0"], "--guidance_scale", "'0'")
    refused(train, base + ["--method", "gd", "--guidance_scale_range", "0.5", "3"], "--guidance_scale_range", "'0.5'")
    # Model.
    refused(train, base + ["--pretrained_model_name_or_path", root / "no-such-model"], "does not exist")
    refused(train, base + ["--pretrained_model_name_or_path", "some-org/not-downloaded"], "not in the Hugging Face cache")
    refused(train, base + ["--pretrained_model_name_or_path", tiny_model("sdxl")], "is a sdxl model", "train_sdxl.py")
    refused(train, base + ["--resolution", "33"], "--resolution 33 is not a multiple of 2")  # after loading the model
    # Resume: an ambiguous experiment number names both folders.
    (root / "exps" / "00001-a").mkdir(parents=True)
    (root / "exps" / "00001-b").mkdir()
    refused(train, base + ["--resume_from_checkpoint", "latest", "--experiment", "1"], "ambiguous", "00001-a", "00001-b")
    assert sorted(p.name for p in (root / "exps").iterdir()) == ["00001-a", "00001-b"]  # no run folder was made


def test_resuming_a_checkpoint_of_another_family_or_shape_is_refused(tiny_model, tiny_dataset, workspace):
    """Its weights have other shapes (once: `size mismatch for fc2.bias` inside accelerate, after the log was written)."""
    root, refused = workspace
    base = ["--pretrained_model_name_or_path", tiny_model("sd15"), "--train_data_dir", tiny_dataset, "--output_dir", "exps",
            "--preset", "demo", "--max_train_steps", "4", "--validation_prompts", "--dataloader_num_workers", "0"]

    def checkpoint(run: str, **config) -> Path:
        torch.manual_seed(0)
        folder = root / "exps" / run / "checkpoint-2"
        save_sharpener(folder, Sharpener(config.get("dim", 32), inner_dim=64, num_heads=4),
                       SharpenerConfig(base_model=str(tiny_model(config.get("family", "sd15"))), step=2, inner_dim=64, num_heads=4,
                                       **{"family": "sd15", "dim": 32, **config}))
        return folder

    sdxl, wide, small = checkpoint("00000-sdxl", family="sdxl", dim=64), checkpoint("00001-wide", dim=48), checkpoint("00002-small")
    refused("train_sd15.py", base + ["--resume_from_checkpoint", sdxl], "was trained with family sdxl (this command: sd15)",
            "Resume it with train_sdxl.py")
    refused("train_sd15.py", base + ["--resume_from_checkpoint", "latest", "--experiment", "0"], "family sdxl (this command: sd15)")
    refused("train_sd15.py", base + ["--resume_from_checkpoint", small], "sharpener_inner_dim 64 (this command: 512)",
            "sharpener_heads 4 (this command: 8)")
    refused("train_sd15.py", base + ["--resume_from_checkpoint", small, "--method", "gd"], "method dice (this command: gd)")
    refused("train_sd15.py", base + ["--resume_from_checkpoint", wide, "--sharpener_inner_dim", "64", "--sharpener_heads", "4"],
            "48-wide text embeddings", "gives 32-wide ones")  # found once the base model is loaded, before anything is written


def test_disk_full_during_a_checkpoint_is_one_line_and_logged(tiny_model, tiny_dataset, workspace, monkeypatch, capsys):
    root, _ = workspace

    def no_space(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr("dice.checkpoint.save_file", no_space)
    status, stderr = run_entry("train_sd15.py", [
        "--pretrained_model_name_or_path", tiny_model("sd15"), "--train_data_dir", tiny_dataset, "--output_dir", "exps",
        "--preset", "demo", "--train_batch_size", "1", "--max_train_steps", "2", "--checkpointing_steps", "1",
        "--validation_prompts", "--dataloader_num_workers", "0"], monkeypatch, capsys)
    line = assert_one_error_line(status, stderr, "no space left on device while saving checkpoint 1", ".checkpoint-1.tmp",
                                 "--resume_from_checkpoint latest --experiment")
    (run,) = (root / "exps").iterdir()
    assert not list(run.glob("*checkpoint-*"))  # the half-written folder is gone
    assert line in (run / "log.txt").read_text()  # a run that fails after starting says why in its log


# ---- sampling ------------------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tiny_model, tmp_path):
    """A sharpener checkpoint for the tiny SD1.5 (32-wide text), outside the workspace's tree checks."""
    torch.manual_seed(0)
    config = SharpenerConfig(family="sd15", base_model=str(tiny_model("sd15")), dim=32, step=1,
                             training_options={"resolution": 32})
    folder = tmp_path / "inputs" / "ckpt" / "checkpoint-1"
    save_sharpener(folder, Sharpener(32), config)
    return folder


def edited_copy(checkpoint: Path, name: str, **changes) -> Path:
    copy = checkpoint.parent.parent / name / checkpoint.name
    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / "sharpener.json").read_text())
    (copy / "sharpener.json").write_text(json.dumps({**config, **changes}))
    return copy


def test_sampling_refuses_bad_input_before_writing(tiny_model, checkpoint, workspace):
    root, refused = workspace
    prompts = write_file(root / "inputs" / "prompts.txt", "a cat\na dog\n")
    base = ["--sharpener_path", checkpoint, "--prompts", prompts, "--steps", "1"]
    refused("sample.py", base + ["--alpha", "nan"], "--alpha", "'nan'")
    refused("sample.py", base + ["--steps", "0"], "--steps", "'0'")
    refused("sample.py", base + ["--resolution", "0"], "--resolution", "'0'")
    refused("sample.py", base + ["--batch_gpu", "0"], "--batch_gpu")
    refused("sample.py", base + ["--cfg_scale", "-1"], "--cfg_scale", "a guidance scale >= 1 (1 = unguided)")
    refused("sample.py", base + ["--cfg_scale", "0.5"], "--cfg_scale", "'0.5'")
    refused("sample.py", base + ["--prompts", write_file(root / "inputs" / "empty.txt", "\n")], "holds no prompts")
    refused("sample.py", base + ["--prompts", write_file(root / "inputs" / "bad.jsonl", '{"caption": 3}\n')], "line 1 is not a prompt")
    refused("sample.py", base + ["--scheduler", "FastestScheduler"], "unknown scheduler")
    refused("sample.py", base + ["--outdir", write_file(root / "inputs" / "plain") / "samples"], "is a file")
    refused("sample.py", base + ["--pretrained_vae_model_name_or_path", "vae"], "SDXL only")
    refused("sample.py", base + ["--sharpener_id", "3"], "different sharpeners")
    refused("sample.py", base + ["--sharpener_path", "7"], "no experiment number 7")
    refused("sample.py", base + ["--resolution", "33"], "--resolution 33 is not a multiple of 2")  # after loading the model

    truncated = edited_copy(checkpoint, "truncated")
    weights = truncated / "sharpener.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused("sample.py", base + ["--sharpener_path", truncated], "not a readable safetensors file", str(weights))
    refused("sample.py", base + ["--sharpener_path", edited_copy(checkpoint, "widened", dim=64)],
            "does not match its sharpener.json", "fc1.weight")

    # sharpener.json says SDXL, the model is SD1.5: each hint leads somewhere else than the other.
    sdxl_json = edited_copy(checkpoint, "says-sdxl", family="sdxl")
    first = refused("sample.py", base + ["--sharpener_path", sdxl_json], "is a sd15 model", "trained for sdxl",
                    "Pass a sdxl base model")
    assert "--family" not in first
    second = refused("sample.py", base + ["--sharpener_path", sdxl_json, "--family", "sd15"], "--family sd15",
                     "trained for sdxl", "drop --family")
    assert "--family sdxl" not in second

    torch.manual_seed(0)
    wide = checkpoint.parent.parent / "wide" / "checkpoint-1"
    save_sharpener(wide, Sharpener(64), SharpenerConfig(family="sd15", base_model=str(tiny_model("sd15")), dim=64, step=1))
    refused("sample.py", base + ["--sharpener_path", wide], "expects 64-wide text embeddings but this model's are 32-wide")


def test_method_options_are_refused_before_anything_is_written(tiny_model, tiny_dataset, checkpoint, workspace):
    """GD / PnP / Scaling options (issue 10): training and sampling refuse what does not apply, in one line."""
    root, refused = workspace
    base = ["--train_data_dir", tiny_dataset, "--output_dir", "exps", "--max_train_steps", "1", "--validation_prompts"]
    refused("train_pixart.py", base + ["--pretrained_model_name_or_path", tiny_model("pixart"), "--method", "pnp"],
            "--method pnp is not available for pixart", "no ControlNet", "--method gd or dice")
    sd15 = base + ["--pretrained_model_name_or_path", tiny_model("sd15")]
    refused("train_sd15.py", sd15 + ["--guidance_scale_range", "2", "14"], "--guidance_scale_range applies to --method gd and pnp")
    refused("train_sd15.py", sd15 + ["--method", "gd", "--guidance_scale_range", "9", "2"], "--guidance_scale_range 9 2 is empty")
    refused("train_sd15.py", sd15 + ["--method", "pnp", "--guidance_scale", "5", "--guidance_scale_range", "2", "14"],
            "exclude each other")
    refused("train_sd15.py", sd15 + ["--method", "cfg"], "--method", "'cfg'")

    # A GD checkpoint as far as sample.py reads it before loading anything: its method.json.
    gd = root / "inputs" / "exps" / "00004-gd" / "checkpoint-1"
    write_file(gd / "method.json", json.dumps({"family": "sd15", "base_model": str(tiny_model("sd15")), "dim": 32, "step": 1,
                                               "method": "gd", "method_options": {"denoiser_component": "unet"}}))
    prompts = ["--prompt", "a cat", "--steps", "1"]
    refused("sample.py", prompts + ["--model_path", gd, "--cfg_scale", "5"], "a gd model replaces CFG", "--gd_scale")
    refused("sample.py", prompts + ["--model_path", gd, "--alpha", "2"], "--alpha is DICE's strength")
    refused("sample.py", prompts + ["--model_path", gd, "--model_name", tiny_model("sdxl")], "fine-tuned copy of the whole denoiser")
    refused("sample.py", prompts + ["--model_path", gd, "--embedding_scale", "1.2"], "training-free Scaling baseline")
    refused("sample.py", prompts + ["--model_path", gd, "--sharpener_path", checkpoint], "both name a trained model")
    refused("sample.py", prompts + ["--sharpener_path", gd], "holds a gd model, not a DICE sharpener", "--model_path")
    refused("sample.py", prompts + ["--model_path", "4", "--exps_root", root / "inputs" / "exps"],
            "is not a readable diffusers model folder")  # no weights beside method.json: found when loading
    refused("sample.py", prompts + ["--sharpener_path", checkpoint, "--gd_scale", "3"], "--gd_scale is the guidance scale of a GD or PnP model")
    refused("sample.py", prompts + ["--sharpener_path", checkpoint, "--embedding_scale", "1.2"], "training-free Scaling baseline")
    refused("sample.py", prompts + ["--model_name", tiny_model("sd15"), "--embedding_scale", "0"], "--embedding_scale", "'0'")


# ---- evaluation ----------------------------------------------------------------------------------
def killed_sample_folder(folder: Path, present: int = 12, promised: int = 40) -> Path:
    """What a sample.py killed early left: some PNGs, sampling_options.json, no manifest.jsonl yet."""
    folder.mkdir(parents=True)
    for i in range(present):
        PIL.Image.new("RGB", (16, 16), (i * 20 % 256, 100, 50)).save(folder / f"{i:05d}.png")
    (folder / "sampling_options.json").write_text(json.dumps({"num_images": promised, "method": "dice"}))
    return folder


def test_evaluators_refuse_an_unfinished_sample_folder(workspace, monkeypatch, capsys):
    root, refused = workspace
    folder = killed_sample_folder(root / "inputs" / "killed")
    finished = killed_sample_folder(root / "inputs" / "finished", present=4, promised=4)
    save_stats(root / "inputs" / "ref.npz", np.zeros(64), np.eye(64))
    calc = ["calc", "--images", folder, "--smoke_test", "--num_workers", "0", "--results", "results.jsonl"]
    for script in ("evaluation/fid.py", "evaluation/clip_score.py", "evaluation/aesthetic.py"):
        extra = ["--ref", root / "inputs" / "ref.npz"] if script.endswith("fid.py") else []
        refused(script, calc + extra, "no manifest.jsonl yet", "12 of the 40 images", "--allow_incomplete")
    # Several folders in one call are all checked first: a finished one before the unfinished one is not scored either.
    several = ["calc", "--images", finished, folder, *calc[3:], "--ref", root / "inputs" / "ref.npz"]
    refused("evaluation/fid.py", several, "no manifest.jsonl yet", "12 of the 40 images")
    # CLIP score needs each image's prompt: without a manifest even --allow_incomplete cannot pair them.
    refused("evaluation/clip_score.py", calc + ["--allow_incomplete"], "has no manifest.jsonl pairing each image with its prompt")
    # --allow_incomplete scores the images present; several folders give a line each, in order.
    for script, extra in (("evaluation/fid.py", ["--ref", root / "inputs" / "ref.npz"]), ("evaluation/aesthetic.py", [])):
        argv = ["calc", "--images", folder, finished, *calc[3:], *extra, "--allow_incomplete"]
        monkeypatch.setattr(sys, "argv", [script, *map(str, argv)])
        runpy.run_path(str(REPO / script), run_name="__main__")
    assert [json.loads(line)["count"] for line in (root / "results.jsonl").read_text().splitlines()] == [12, 4, 12, 4]


def test_evaluators_refuse_bad_files_and_unwritable_outputs(workspace):
    root, refused = workspace
    inputs = root / "inputs"
    folder = killed_sample_folder(inputs / "done", present=4, promised=4)
    save_stats(inputs / "ref.npz", np.zeros(64), np.eye(64))
    np.savez(inputs / "wrong_shape.npz", mu=np.zeros(64), sigma=np.eye(32))
    np.savez(inputs / "no_sigma.npz", mu=np.zeros(64))
    write_file(inputs / "not.npz", "hello")
    refused("evaluation/fid.py", ["dist", inputs / "ref.npz", inputs / "wrong_shape.npz"], "wrong_shape.npz", "mu (D,) and sigma (D, D)")
    refused("evaluation/fid.py", ["dist", inputs / "no_sigma.npz", inputs / "ref.npz"], "needs arrays 'mu' and 'sigma'")
    refused("evaluation/fid.py", ["dist", inputs / "not.npz", inputs / "ref.npz"], "not a readable .npz file")
    save_stats(inputs / "other_dim.npz", np.zeros(8), np.eye(8))
    refused("evaluation/fid.py", ["dist", inputs / "ref.npz", inputs / "other_dim.npz"], "64-d features", "8-d")
    weights = write_file(inputs / "aesthetic.pth", "not the LAION head")
    refused("evaluation/aesthetic.py", ["calc", "--images", folder, "--aesthetic_weights", weights, "--num_workers", "0",
                                        "--results", "results.jsonl"], "sha256", "Download it again")
    blocker = write_file(inputs / "a_file")
    smoke = ["--smoke_test", "--num_workers", "0"]
    refused("evaluation/fid.py", ["calc", "--images", folder, "--ref", inputs / "ref.npz", "--results", blocker / "r.jsonl"] + smoke, "--results", "is a file")
    refused("evaluation/clip_score.py", ["calc", "--images", folder, "--results", blocker / "r.jsonl"] + smoke, "--results", "is a file")
    refused("evaluation/aesthetic.py", ["calc", "--images", folder, "--results", blocker / "r.jsonl"] + smoke, "--results", "is a file")
    refused("evaluation/fid.py", ["ref", "--data", folder, "--dest", blocker / "ref.npz"] + smoke, "--dest", "is a file")
    refused("evaluation/fid.py", ["calc", "--images", folder, "--ref", inputs / "ref.npz", "--batch_size", "0"] + smoke, "--batch_size")
    write_file(inputs / "results.jsonl", "{not json\n")
    refused("evaluation/results.py", ["--results", inputs / "results.jsonl", "--out", "table"], "line 1 is not a result")
    refused("evaluation/results.py", ["--results", inputs / "none.jsonl", "--out", "table"], "Results file not found")
    write_file(inputs / "ok.jsonl", json.dumps({"images": "x", "metric": "fid", "value": 1.0}) + "\n")
    refused("evaluation/results.py", ["--results", inputs / "ok.jsonl", "--out", blocker / "table"], "--out", "is a file")


# ---- figures -------------------------------------------------------------------------------------
def test_figure_scripts_refuse_bad_input(tiny_model, checkpoint, workspace, monkeypatch):
    root, refused = workspace
    monkeypatch.setenv("HPS_ROOT", str(root / "no-hps-cache"))
    monkeypatch.delenv("DICE_PROMPTS_DIR", raising=False)
    sweep = ["--sharpener_path", checkpoint, "--out", "fig"]
    refused("sample.py", ["--sharpener_path", checkpoint, "--prompts", "hps-anime"], "prompt set 'hps-anime'", "hf download zhwang/HPDv2")
    refused("figures/alpha_sweep.py", sweep + ["--ref", "missing.npz"], "--ref 'missing.npz' does not exist", "launch.sh ref")
    refused("figures/alpha_sweep.py", sweep + ["--metrics", "world", "--smoke_test"], "apply to --metrics paper")
    refused("figures/alpha_sweep.py", sweep + ["--alphas", "nan"], "--alphas", "'nan'")
    refused("figures/quality_vs_nfe.py", sweep + ["--nfe", "0"], "--nfe", "'0'")
    refused("figures/sharpener_structure.py", ["--out", "fig"], "nothing to compare")
    refused("figures/sharpener_structure.py", ["--train", "10x3"], "width must be a positive multiple of the heads")
    refused("figures/training_curve.py", ["--experiment", "7", "--out", "fig"], "no experiment number 7")
    refused("figures/attention_maps.py", ["--sharpener_path", "7"], "no experiment number 7")
    refused("figures/embedding_pca.py", ["--sharpener_path", checkpoint, "--num_prompts", "0"], "--num_prompts")
    refused("figures/prompt_optimisation.py", ["--fit_steps", "5"], "one of the arguments")
    refused("evaluation/hps.py", ["calc", "--images", root / "nothing"], "not found")


# ---- demos ---------------------------------------------------------------------------------------
def test_demos_refuse_bad_input(workspace):
    root, refused = workspace
    refused("dice.demo", ["--num_prompts", "0"], "--num_prompts")
    refused("dice.demo", ["--exps_root", write_file(root / "inputs" / "a_file") / "exps"], "--exps_root", "is a file")
    refused("dice.demo", ["sd15", "--train_batch_size", "4"], "--train_batch_size", "shapes-world demo")
    refused("dice.demo", ["toy", "--free_residual_steps", "10"], "--free_residual_steps", "plumbing demos")
    refused("dice.demo", ["--grid_out", root / "inputs"], "--grid_out", "is a folder")
    refused("dice.demo", ["--results_out", root / "inputs"], "--results_out", "is a folder")
    refused("dice.demo", ["pixart", "--seed", "1"], "--seed", "shapes-world demo")
    refused("dice.shapes_world", ["prompts", "--out", root / "inputs", "--num_prompts", "4"], "--out", "is a folder")
    refused("dice.shapes_world", ["pretrain", "--out", root / "w", "--unet_steps", "-1"], "--unet_steps", "negative")
    refused("dice.shapes_world", ["pretrain", "--family", "flow", "--out", root / "w", "--unet_steps", "5"], "--unet_steps", "flow recipe")
    refused("dice.shapes_world", ["pretrain", "--out", root / "w", "--world", root / "inputs"], "--world", "--family flow")
    refused("dice.shapes_world", ["pretrain", "--family", "flow", "--out", root / "w", "--world", root / "inputs"], "--world", "no shapes world")
    refused("dice.shapes_world", ["quality", "--sampling_shift", "3"], "--sampling_shift", "epsilon world")
    refused("dice.testkit.demo_eval", ["--exps_root", root / "inputs"], "no demo experiment", "bash launch.sh demo")
    refused("dice.testkit.demo_eval", ["--steps", "0"], "--steps")
    refused("dice.testkit.rehearsal", ["train", "cluster"], "no recipe 'cluster' to rehearse", "train-variants")
    refused("dice.testkit.rehearsal", ["--dir", write_file(root / "inputs" / "used" / "a_file").parent], "is not empty")
    refused("dice.recipes", ["model", "sd14"], "no model named 'sd14'", "dreamshaper")


# ---- real processes ------------------------------------------------------------------------------
def test_real_processes(tmp_path):
    """The entry scripts as processes: exit status 2, exactly one stderr line, no traceback, no files."""
    save_stats(tmp_path / "a.npz", np.zeros(4), np.eye(4))
    np.savez(tmp_path / "b.npz", mu=np.zeros(4))
    commands = [
        (["train_sd15.py", "--pretrained_model_name_or_path", "m", "--train_data_dir", "d", "--learning_rate", "-1"], "--learning_rate"),
        (["sample.py", "--steps", "0"], "--steps"),
        (["evaluation/fid.py", "dist", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")], "'mu' and 'sigma'"),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    before = tree(tmp_path)
    running = [(subprocess.Popen([sys.executable, str(REPO / argv[0]), *argv[1:]], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True), fragment) for argv, fragment in commands]
    for process, fragment in running:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, stderr
        assert_one_error_line(process.returncode, stderr, fragment)
    assert tree(tmp_path) == before


# ---- after a crash and a resume ------------------------------------------------------------------
def test_resume_after_a_crash_repairs_stats_and_grids(tiny_model, tiny_dataset, tmp_path):
    from dice.training import main

    argv = ["--pretrained_model_name_or_path", str(tiny_model("sd15")), "--train_data_dir", str(tiny_dataset),
            "--output_dir", str(tmp_path / "exps"), "--preset", "demo", "--train_batch_size", "1", "--max_train_steps", "4",
            "--checkpointing_steps", "2", "--validation_prompts", "a red ball", "--validation_inference_steps", "1",
            "--dataloader_num_workers", "0"]
    run = main("sd15", argv)
    checkpoint = run / "checkpoint-2"
    assert {oct(p.stat().st_mode & 0o777) for p in checkpoint.iterdir() if p.is_file()} == {
        oct((run / "log.txt").stat().st_mode & 0o777)}  # weights as readable as the JSON and the log
    # What a kill during step 4's checkpoint leaves: stats of steps 3-4 after the last complete
    # checkpoint (2), a half-written checkpoint, step 2's grid lost, step 4's grid empty.
    shutil.rmtree(run / "checkpoint-4")
    (run / ".checkpoint-4.tmp").mkdir()
    (run / "validation" / "step-000002.png").unlink()
    (run / "validation" / "step-000004.png").write_bytes(b"")
    with open(run / "stats.jsonl", "a") as stats:
        stats.write('{"step": 5, "lo')  # a line cut short by the kill
    main("sd15", argv + ["--resume_from_checkpoint", "latest", "--experiment", str(run)])
    assert [json.loads(line)["step"] for line in (run / "stats.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    for step in (2, 4):
        with PIL.Image.open(run / "validation" / f"step-{step:06d}.png") as grid:
            assert grid.size[1] == 3 * 32  # unguided / CFG / DICE rows
    assert not list(run.glob(".checkpoint-*")) and (run / "checkpoint-4").is_dir()
