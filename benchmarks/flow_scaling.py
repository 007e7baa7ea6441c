"""Scaling's s on the flow world (issue 29): the paper gives none for SD3, so it is chosen here, on the **validation**
prompts (512, prompt seed 1, image seeds 500000+, as benchmarks/flow_recipe.py), never on the demo's or Table 1's.

    python benchmarks/flow_scaling.py --out benchmarks/results/flow_scaling-validation.json --work DIR \
        --scales 1 1.1 1.2 1.3 1.5 1.75 2 2.5 3
    python benchmarks/flow_scaling.py ... --tokens_only --scales 1 1.1 1.2 1.3 1.5

Each s samples the flow world unguided with the prompt tokens multiplied by s (`sample.py --embedding_scale`, the
Scaling row of `launch.sh table1`), 20 Euler steps, and is scored by the world's evaluator. Unguided and CFG w=3 are
sampled once on the same prompts and seeds (or taken from flow_recipe's results file, which holds them), so every
share of CFG's gain comes with a paired bootstrap interval. s = 1 must give unguided's images: a check that the
baselines taken from elsewhere are this script's. Results are written after each s; a rerun skips what is there.

Two rules were candidates, each with its s: Scaling as shipped multiplies SD3's pooled vector by s as well, since the
sharpener rewrites it (`--pooled_embedding sharpen`, the default); ``--tokens_only`` measures the other rule, the tokens
alone with the pooled vector left as it is (SDXL's rule, and this repository's for SD3 until the measurement here).
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the JSON results file")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder: prompts and samples")
    parser.add_argument("--scales", type=float, nargs="+", required=True, help="the values of s")
    parser.add_argument("--baselines", type=Path, default=Path(__file__).parent / "results" / "flow_recipe-validation.json",
                        help="a results file holding unguided and CFG on the same validation prompts (sampled if absent)")
    parser.add_argument("--tokens_only", action="store_true", help="leave the pooled vector as it is (the other candidate rule)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    import torch

    from dice.presets import SHAPES_WORLD_FLOW_GUIDANCE_SCALE
    from dice.sample_cli import main as sample_main
    from evaluation.metrics.guidance_gap import gain_recovered, gain_recovered_interval

    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"validation": {}, "rules": {}}
    if not results["validation"] and args.baselines.is_file():
        results["validation"] = json.loads(args.baselines.read_text())["validation"]
    rule = "tokens" if args.tokens_only else "tokens and pooled vector"
    samples = args.work / ("samples" if args.tokens_only else "samples-scale-pooled")  # the same folder names: apart
    sampling = [*validation_sampling(args.work), "--model_name", "shapes-world-flow", "--outdir", str(samples)]
    if args.tokens_only:
        import dice.sampling
        from dice.methods.scaling import scale_prompt_embedding

        def scale_tokens(adapter, cond, scale):
            return scale_prompt_embedding(adapter, cond, scale).replace(pooled=cond.pooled)

        dice.sampling.scale_prompt_embedding = scale_tokens

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results) + "\n")

    for baseline, extra in (("unguided", []), ("cfg", ["--cfg_scale", f"{SHAPES_WORLD_FLOW_GUIDANCE_SCALE:g}"])):
        if baseline not in results["validation"]:
            results["validation"][baseline] = score(sample_main([*sampling, *extra]))
            save()
    unguided, cfg = (results["validation"][m] for m in ("unguided", "cfg"))
    scales = results["rules"].setdefault(rule, {})
    for s in args.scales:
        if f"{s:g}" in scales:
            continue
        started = time.time()
        scored = score(sample_main([*sampling, "--embedding_scale", f"{s:g}"]))
        low, high = gain_recovered_interval(unguided["per_image"], cfg["per_image"], scored["per_image"])
        scales[f"{s:g}"] = {
            "accuracy": scored["accuracy"], "cfg_gain_recovered": gain_recovered(unguided["accuracy"], cfg["accuracy"], scored["accuracy"]),
            "cfg_gain_recovered_ci95": [low, high], "per_image": scored["per_image"],
            "seconds": round(time.time() - started, 1), "load_average": os.getloadavg()}
        if s == 1 and scored["per_image"] != unguided["per_image"]:
            sys.exit("s = 1 does not reproduce the unguided baseline's per-image scores: the baselines are not this set's")
        save()
        print(f"{rule}, s={s:g}: accuracy {scored['accuracy']:.3f}, CFG gain recovered "
              f"{scales[f'{s:g}']['cfg_gain_recovered']:.1%} [{low:.1%}, {high:.1%}]", flush=True)
    candidates = [(rule, s) for rule, scales in results["rules"].items() for s in scales]
    best = max(candidates, key=lambda c: results["rules"][c[0]][c[1]]["accuracy"])
    results["chosen"] = {"rule": best[0], "s": float(best[1]), "by": "the highest validation accuracy"}
    save()
    print(f"chosen: s = {best[1]}, scaling the {best[0]} (the highest validation accuracy)")


if __name__ == "__main__":
    main()
