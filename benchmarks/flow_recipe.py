"""The flow world's DICE recipe (issue 29): each candidate's share of CFG's accuracy gain on the **validation** prompts
(512, prompt seed 1, image seeds 500000+), never on the demo's 256, at several training lengths.

    python benchmarks/flow_recipe.py --out benchmarks/results/flow_recipe-validation.json --work DIR \
        --candidate logit_normal '{}' --candidate uniform '{"flow_sigmas": "uniform"}' --score_at 200

Each candidate trains ``train_sd3.py`` on the flow world's 4,000 training images with the shipped recipe's batch
(64), EMA 0.999 and teacher (w=3, 8 zero T5 rows) and the options it changes, for max(score_at) updates with a
checkpoint at each length; every checkpoint's sharpener samples the validation prompts unguided (the flow world's
Euler sampler, 20 steps) and is scored. Unguided and CFG w=3 are sampled once on the same prompts and seeds, so
every share of the gain comes with a paired bootstrap interval. At 200 updates the weight average equals the demo's
0.99 one (diffusers' EMA: min(decay, (1+n)/(10+n)) stays below 0.99 up to n = 890). Results are written after each
checkpoint, and a rerun continues a candidate's run and skips what is in the file. Last, each candidate's accuracy
minus the first's, paired (the same prompts and seeds), with a bootstrap interval.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo_recipe import score, validation_sampling  # noqa: E402 - the epsilon demo's validation set and scoring

TRAIN_IMAGES = 4000
# The options every candidate shares: the shipped recipe's batch and average, the flow world's teacher and encoding.
BASE = {"train_batch_size": 64, "learning_rate": 1e-3, "lr_scheduler": "constant", "lr_warmup_steps": 0, "ema_decay": 0.999,
        "resolution": 32, "guidance_scale": 3.0, "max_sequence_length": 8, "adam_weight_decay": 0.0}


def validate(name: str, overrides: dict, score_at: list[int], out: Path, work: Path, seed: int = 0) -> dict:
    from dice.experiments import latest_checkpoint
    from dice.sample_cli import main as sample_main
    from dice.shapes_world.scoring import DEFAULT_FLOW_PIPELINE
    from dice.shapes_world.world import write_imagefolder
    from dice.training import main as train_main
    from evaluation.metrics.guidance_gap import gain_recovered, gain_recovered_interval

    results = json.loads(out.read_text()) if out.is_file() else {"validation": {}, "candidates": {}}
    sampling = validation_sampling(work)

    def save():
        out.write_text(json.dumps(results) + "\n")

    key = f"{name} seed {seed}"
    entry = results["candidates"].setdefault(key, {"overrides": overrides, "seed": seed, "points": {}})
    if all(str(step) in entry["points"] for step in score_at) and results["validation"]:
        return entry
    data = write_imagefolder(work / f"shapes-world-train-{TRAIN_IMAGES}", TRAIN_IMAGES, "train")
    options = {**BASE, **overrides, "max_train_steps": max(score_at), "checkpointing_steps": math.gcd(*score_at)}
    argv = ["--pretrained_model_name_or_path", str(DEFAULT_FLOW_PIPELINE), "--train_data_dir", str(data),
            "--output_dir", str(work / "exps"), "--desc", f"flow-{name}-seed{seed}", "--dataloader_num_workers", "0",
            "--seed", str(seed), "--validation_prompts"]
    for option, value in options.items():
        argv += [f"--{option}", str(value)]
    runs = sorted((work / "exps").glob(f"[0-9][0-9][0-9][0-9][0-9]-flow-{name}-seed{seed}"))
    if runs and latest_checkpoint(runs[-1]):
        argv += ["--resume_from_checkpoint", "latest", "--experiment", str(runs[-1])]
    started = time.time()
    run_dir = train_main("sd3", argv)
    entry.setdefault("train_seconds", []).append(round(time.time() - started, 1))
    entry.setdefault("load_average", []).append(os.getloadavg())
    for baseline, extra in (("unguided", []), ("cfg", ["--cfg_scale", f"{BASE['guidance_scale']:g}"])):
        if baseline not in results["validation"]:  # the base model itself: alpha 0, the checkpoint's encoding options
            folder = sample_main(["--sharpener_path", str(run_dir), "--alpha", "0", *extra, *sampling,
                                  "--outdir", str(work / "samples")])
            results["validation"][baseline] = score(folder)
            save()
    unguided, cfg = (results["validation"][m] for m in ("unguided", "cfg"))
    for step in score_at:
        if str(step) in entry["points"]:
            continue
        folder = sample_main(["--sharpener_path", str(run_dir / f"checkpoint-{step}"), *sampling, "--outdir", str(run_dir / "samples")])
        scored = score(folder)
        low, high = gain_recovered_interval(unguided["per_image"], cfg["per_image"], scored["per_image"])
        entry["points"][str(step)] = {
            "updates": step, "training_samples": step * BASE["train_batch_size"], "accuracy": scored["accuracy"],
            "cfg_gain_recovered": gain_recovered(unguided["accuracy"], cfg["accuracy"], scored["accuracy"]),
            "cfg_gain_recovered_ci95": [low, high], "per_image": scored["per_image"]}
        save()
        print(f"{key} at {step} updates: accuracy {scored['accuracy']:.3f}, CFG gain recovered "
              f"{entry['points'][str(step)]['cfg_gain_recovered']:.1%} [{low:.1%}, {high:.1%}]", flush=True)
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the JSON results file")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder: training images, runs, samples")
    parser.add_argument("--candidate", nargs=2, action="append", metavar=("NAME", "OVERRIDES_JSON"), required=True,
                        help="a name and the training options it changes (BASE above)")
    parser.add_argument("--score_at", type=int, nargs="+", default=[200], help="updates at which each run is scored (the demo trains 200)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of each candidate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, overrides in args.candidate:
        for seed in args.seeds:
            validate(name, json.loads(overrides), args.score_at, args.out, args.work, seed)
    compare(args.out)


def compare(out: Path, num_resamples: int = 2000) -> None:
    """Each candidate's accuracy minus the first one's at the same updates, with a paired bootstrap 95% interval
    (the same prompts and seeds: prompts are resampled together), into the results file."""
    import numpy as np

    results = json.loads(out.read_text())
    (first, reference), *others = results["candidates"].items()
    results["paired_difference"] = {}
    for name, entry in others:
        for step, point in entry["points"].items():
            if step not in reference["points"]:
                continue
            diff = np.asarray(point["per_image"], float) - np.asarray(reference["points"][step]["per_image"], float)
            idx = np.random.default_rng(0).integers(0, len(diff), size=(num_resamples, len(diff)))
            low, high = np.quantile(diff[idx].mean(axis=1), [0.025, 0.975])
            results["paired_difference"][f"{name} - {first} at {step}"] = {
                "accuracy": float(diff.mean()), "accuracy_ci95": [float(low), float(high)],
                "prompts_only_right_in": {name: int((diff > 0).sum()), first: int((diff < 0).sum())}}
    out.write_text(json.dumps(results) + "\n")
    print(json.dumps(results["paired_difference"], indent=1))


if __name__ == "__main__":
    main()
