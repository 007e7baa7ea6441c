"""GD on the flow world (issue 29): does the authors' ω range, U[2, 14), suit a model whose CFG is used at w = 3?

    python benchmarks/flow_gd_omega.py --out benchmarks/results/flow_gd_omega-validation.json --work DIR \
        --candidate authors_range '[]' --candidate fixed_w3 '["--guidance_scale", "3"]'

Each candidate trains GD with `train_sd3.py --preset toy --method gd` (600 updates of 16, the authors' GD settings, the
budget of `launch.sh table1 toy-flow`) plus the options it adds, samples the **validation** prompts (512, prompt seed 1,
image seeds 500000+: never the table's) at ω = 3 in one evaluation per step, and is scored by the world's evaluator.
Unguided and CFG w=3 on the same prompts and seeds come from flow_recipe's results file, so every share of CFG's gain
has a paired bootstrap interval; last, each candidate's accuracy minus the first's, paired.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo_recipe import score, validation_sampling  # noqa: E402 - the validation set and scoring every recipe uses
from flow_recipe import TRAIN_IMAGES, compare  # noqa: E402 - the paired differences of flow_recipe's file layout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the JSON results file")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder: training images, runs, samples")
    parser.add_argument("--candidate", nargs=2, action="append", metavar=("NAME", "TRAIN_ARGS_JSON"), required=True,
                        help="a name and the train_sd3.py options it adds (a JSON list)")
    parser.add_argument("--baselines", type=Path, default=Path(__file__).parent / "results" / "flow_recipe-validation.json",
                        help="the results file holding unguided and CFG w=3 on the same validation prompts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    import torch

    from dice.experiments import latest_checkpoint
    from dice.presets import SHAPES_WORLD_FLOW, SHAPES_WORLD_FLOW_GUIDANCE_SCALE
    from dice.sample_cli import main as sample_main
    from dice.shapes_world.world import write_imagefolder
    from dice.training import main as train_main
    from evaluation.metrics.guidance_gap import gain_recovered, gain_recovered_interval

    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {
        "validation": json.loads(args.baselines.read_text())["validation"], "candidates": {}}
    unguided, cfg = (results["validation"][m] for m in ("unguided", "cfg"))
    data = write_imagefolder(args.work / f"shapes-world-train-{TRAIN_IMAGES}", TRAIN_IMAGES, "train")
    omega = f"{SHAPES_WORLD_FLOW_GUIDANCE_SCALE:g}"
    for name, extra in args.candidate:
        entry = results["candidates"].setdefault(name, {"train_args": json.loads(extra), "points": {}})
        if entry["points"]:
            continue
        argv = ["--pretrained_model_name_or_path", SHAPES_WORLD_FLOW, "--train_data_dir", str(data), "--preset", "toy",
                "--method", "gd", "--output_dir", str(args.work / "exps"), "--desc", f"gd-{name}",
                "--dataloader_num_workers", "0", "--validation_prompts", *entry["train_args"]]
        runs = sorted((args.work / "exps").glob(f"[0-9][0-9][0-9][0-9][0-9]-gd-{name}"))
        if runs and latest_checkpoint(runs[-1]):
            argv += ["--resume_from_checkpoint", "latest", "--experiment", str(runs[-1])]
        started = time.time()
        run_dir = train_main("sd3", argv)
        entry["train_seconds"], entry["load_average"] = round(time.time() - started, 1), os.getloadavg()
        scored = score(sample_main(["--model_path", str(run_dir), "--gd_scale", omega, *validation_sampling(args.work),
                                    "--outdir", str(args.work / "samples")]))
        low, high = gain_recovered_interval(unguided["per_image"], cfg["per_image"], scored["per_image"])
        step = int(latest_checkpoint(run_dir).name.rsplit("-", 1)[1])  # checkpoint-<step>
        entry["points"][str(step)] = {
            "updates": step, "accuracy": scored["accuracy"],
            "cfg_gain_recovered": gain_recovered(unguided["accuracy"], cfg["accuracy"], scored["accuracy"]),
            "cfg_gain_recovered_ci95": [low, high], "per_image": scored["per_image"]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results) + "\n")
        print(f"GD {name} at {step} updates, sampled at ω={omega}: accuracy {scored['accuracy']:.3f}, CFG gain recovered "
              f"{entry['points'][str(step)]['cfg_gain_recovered']:.1%} [{low:.1%}, {high:.1%}]", flush=True)
    compare(args.out)


if __name__ == "__main__":
    main()
