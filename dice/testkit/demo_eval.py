"""Evaluate the demo experiment end to end: sample.py → FID / CLIP / aesthetic (--smoke_test) → table.

    bash launch.sh demo && bash launch.sh demo-eval        # = python -m dice.testkit.demo_eval [EXP]

Takes the latest ``exps/NNNNN-demo-<family>`` (or EXP: an id or a run folder) and, on its tiny
base model at the demo's resolution:
  1. sample.py: DICE (the trained sharpener), CFG (w=5) and unguided on held-out prompts;
  2. evaluation/fid.py ref --smoke_test over the demo's synthetic training images;
  3. evaluation/{fid,clip_score,aesthetic}.py calc --smoke_test on each sample folder;
  4. evaluation/results.py: the table (printed), marked as a smoke test.
Everything lands in ``<run>/demo_eval/``. The evaluators run with --smoke_test (tiny random-weight
networks built in code), so the scores are meaningless: this checks the plumbing, not quality.
Each step calls the command's own entry point in this process (one start-up instead of ten) and
prints the equivalent command line first.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import time
from pathlib import Path

import torch

from ..checkpoint import read_config, resolve_sharpener_files
from ..errors import ArgumentParser, UserError, check_output_dir, exit_on_user_error, positive_int
from ..experiments import resolve_run
from ..presets import preset
from ..sample_cli import main as sample_main
from .plumbing_demo import held_out_prompts

REPO = Path(__file__).resolve().parents[2]
DEMO_RUN = re.compile(r"^\d{5}-demo-")


def latest_demo_run(exps_root: str | Path) -> Path:
    runs = sorted(p for p in Path(exps_root).glob("[0-9][0-9][0-9][0-9][0-9]-demo-*") if p.is_dir() and DEMO_RUN.match(p.name))
    if not runs:
        raise UserError(f"no demo experiment (NNNNN-demo-*) under '{exps_root}/'. Run `bash launch.sh demo` first")
    return runs[-1]


def _script(name: str):
    """evaluation/<name>.py as a module (the scripts are run by path, not imported as a package)."""
    spec = importlib.util.spec_from_file_location(f"dice_eval_{name}", REPO / "evaluation" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _step(script: str, argv: list[str]) -> None:
    print(f"\n$ python {script} {shlex.join(argv)}", flush=True)


def run(
    experiment: str | None = None,
    exps_root: str = "exps",
    out: str | None = None,
    ref_data: str | None = None,
    num_prompts: int = 16,
    steps: int = 20,
) -> Path:
    """Run the chain; returns the table's Markdown path."""
    start = time.time()
    run_dir = resolve_run(experiment, exps_root) if experiment is not None else latest_demo_run(exps_root)
    _, config_path = resolve_sharpener_files(run_dir)
    config = read_config(config_path)
    settings = preset(config.family, "demo")
    resolution, guidance = settings["resolution"], settings["guidance_scale"]
    out = Path(out) if out else run_dir / "demo_eval"
    if ref_data is None:  # the images the demo trained on
        trained_on = config.training_options.get("train_data_dir")
        ref_data = trained_on if trained_on and Path(trained_on).is_dir() else str(Path(exps_root) / "_demo_assets" / "synthetic-captions")
    if not Path(ref_data).exists():
        raise UserError(f"--ref_data '{ref_data}' does not exist. Pass the folder of images for the FID reference")
    check_output_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    print(f"Evaluating {run_dir} (base model {config.base_model}) into {out}")
    print("The evaluators run with --smoke_test: tiny random-weight networks, so the scores are MEANINGLESS; "
          "this checks that sampling, scoring and the table work end to end.")

    prompts = out / "held_out_prompts.txt"
    prompts.write_text("".join(p + "\n" for p in held_out_prompts(num_prompts)), encoding="utf-8")
    common = ["--prompts", str(prompts), "--steps", str(steps), "--resolution", str(resolution),
              "--outdir", str(out / "samples"), "--batch_gpu", str(num_prompts)]
    base = ["--pretrained_model_name_or_path", str(config.base_model), "--family", config.family]
    folders = []
    for argv in (
        ["--sharpener_path", str(run_dir)] + common,  # DICE: the sharpener on its own base model
        base + ["--cfg_scale", f"{guidance:g}"] + common,  # CFG, the teacher
        base + common,  # unguided
    ):
        _step("sample.py", argv)
        folders.append(sample_main(argv))

    results, ref = out / "results.jsonl", out / "fid_ref_smoke.npz"
    fid, clip_score, aesthetic, results_cli = (_script(n) for n in ("fid", "clip_score", "aesthetic", "results"))
    quiet = ["--num_workers", "0", "--smoke_test"]
    steps_to_run = [("evaluation/fid.py", fid, ["ref", "--data", str(ref_data), "--dest", str(ref),
                                                "--center_crop_resize", str(resolution)] + quiet)]
    for folder in folders:
        steps_to_run += [
            ("evaluation/fid.py", fid, ["calc", "--images", str(folder), "--ref", str(ref), "--results", str(results)] + quiet),
            ("evaluation/clip_score.py", clip_score, ["calc", "--images", str(folder), "--results", str(results)] + quiet),
            ("evaluation/aesthetic.py", aesthetic, ["calc", "--images", str(folder), "--results", str(results)] + quiet),
        ]
    steps_to_run.append(("evaluation/results.py", results_cli, ["--results", str(results), "--out", str(out / "table")]))
    for script, module, argv in steps_to_run:
        _step(script, argv)
        module.main(argv)
    print(f"\nDemo evaluation finished in {time.time() - start:.1f} s: {out}")
    return out / "table.md"


def cli(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m dice.testkit.demo_eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", nargs="?", default=None, help="experiment id or run folder (default: the latest NNNNN-demo-*)")
    parser.add_argument("--exps_root", default="exps", help="where experiment ids are looked up")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/demo_eval)")
    parser.add_argument("--ref_data", default=None,
                        help="images for the FID reference (default: the demo's training images, exps/_demo_assets/synthetic-captions)")
    parser.add_argument("--num_prompts", type=positive_int, default=16, help="held-out prompts per configuration")
    parser.add_argument("--steps", type=positive_int, default=20, help="sampling steps (the paper's 20)")
    args = parser.parse_args(argv)
    if "OMP_NUM_THREADS" not in os.environ:
        # Tiny models gain nothing from intra-op threads; on a busy 2-core machine they made this
        # chain ~6x slower (107 s vs 18 s, measured).
        torch.set_num_threads(1)
    run(args.experiment, args.exps_root, args.out, args.ref_data, args.num_prompts, args.steps)


if __name__ == "__main__":
    with exit_on_user_error():
        cli()
