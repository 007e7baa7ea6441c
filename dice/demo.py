"""The embedded demo: a complete DICE experiment on CPU, no downloads.

``python -m dice.demo`` (= ``bash launch.sh demo``) runs the paper in miniature on the **shapes world**,
a trained toy text-to-image model shipped in dice/assets/shapes_world: ``train_sd15.py`` fits a
sharpener now (``--preset toy``: 600 updates of 16, lr 1e-3 with a moving average of the weights),
``sample.py`` samples held-out prompts (half of them attribute combinations never seen in training)
unguided, with CFG (w=5), with the converged sharpener shipped beside the model and with the one just
trained, all from identical noise, and ``evaluation/shapes_world.py`` scores them: prompt accuracy (every
attribute of the prompt right) and a Fréchet distance on the world evaluator's features. It ends
with the table, a grid PNG, and

    accuracy_unguided=… accuracy_cfg=… accuracy_dice=… (shipped) accuracy_dice_now=… (trained now)
    cfg_gain_recovered = (accuracy_dice - accuracy_unguided) / (accuracy_cfg - accuracy_unguided)   (and _now)
    cfg_gap_closed = 1 - mean||z_dice - z_cfg|| / mean||z_uncond - z_cfg||   (final latents, shipped sharpener)

``python -m dice.demo sd15|sdxl|pixart`` are the random-weight **plumbing** demos: tiny random
models whose images are noise; they report only cfg_gap_closed, which measures the distillation
machinery, not image quality. ``--free_residual_steps N`` also fits one free residual per held-out
prompt (no sharpener; the same DICE loss, data and guidance scale, fitted on the held-out prompts
themselves) and reports its gap: a reference for how far a rewrite of the prompt embedding, the
sharpener's only lever, moves such a random model towards CFG.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from pathlib import Path

import torch

from .errors import ArgumentParser, UserError, check_output_dir, check_output_file, exit_on_user_error, non_negative_int, positive_int
from .figures.optimise import PromptResiduals, fit_prompt_residuals  # noqa: F401 - the demo's free-residual reference

HELD_OUT_TEMPLATES = [
    "a picture of a {size} {color} {shape} near a {color2} tree",
    "a painting of a {color} {shape} under the {color2} sky",
    "a {color} {shape} and a {color2} dog",
    "a bright {color} {shape} next to a dark {color2} house",
]


def held_out_prompts(count: int, seed: int = 1234) -> list[str]:
    """Prompts phrased unlike any training caption (see data.write_synthetic_dataset)."""
    import random

    rng = random.Random(seed)
    colors = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
    shapes = ["ball", "cup", "house", "tree", "car", "flower", "cat", "boat", "chair"]
    return [
        HELD_OUT_TEMPLATES[i % len(HELD_OUT_TEMPLATES)].format(
            size=rng.choice(["small", "large"]), color=rng.choice(colors), color2=rng.choice(colors),
            shape=rng.choice(shapes))
        for i in range(count)
    ]


def cfg_gap_closed(z_uncond: torch.Tensor, z_cfg: torch.Tensor, z_dice: torch.Tensor) -> float:
    dist = lambda a, b: (a.float() - b.float()).flatten(1).norm(dim=1).mean().item()  # noqa: E731
    return 1.0 - dist(z_dice, z_cfg) / dist(z_uncond, z_cfg)


def measure_gap(adapter, sharpener, prompts: list[str], guidance_scale: float, resolution: int, steps: int = 20) -> dict:
    from .sampling import generate, use_scheduler

    use_scheduler(adapter, "dpmsolver++")
    seeds = list(range(len(prompts)))
    common = dict(steps=steps, resolution=resolution, output_type="latent")
    z_uncond = generate(adapter, prompts, seeds, cfg_scale=1.0, **common)
    z_cfg = generate(adapter, prompts, seeds, cfg_scale=guidance_scale, **common)
    z_dice = generate(adapter, prompts, seeds, sharpener=sharpener, **common)
    return {"cfg_gap_closed": cfg_gap_closed(z_uncond, z_cfg, z_dice), "num_prompts": len(prompts),
            "guidance_scale": guidance_scale, "steps": steps}


def run(family: str = "sd15", exps_root: str = "exps", max_train_steps: int | None = None, num_prompts: int = 32,
        model_seed: int = 0, free_residual_steps: int = 0) -> dict:
    from .adapters import adapter_class
    from .checkpoint import load_sharpener
    from .data import write_synthetic_dataset
    from .presets import preset
    from .tiny import save_tiny_pipeline
    from .training import main as train_main

    start = time.time()
    cache = Path(exps_root) / "_demo_assets"
    model = save_tiny_pipeline(cache / f"tiny-{family}-seed{model_seed}", family, seed=model_seed)
    data = cache / "synthetic-captions"
    if not (data / "metadata.jsonl").is_file():
        write_synthetic_dataset(data, num_images=256, size=48)
    argv = ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data), "--preset", "demo",
            "--output_dir", exps_root, "--desc", f"demo-{family}", "--dataloader_num_workers", "0",
            "--validation_inference_steps", "10"]
    if max_train_steps:
        argv += ["--max_train_steps", str(max_train_steps), "--checkpointing_steps", str(max_train_steps)]
    print(f"$ python train_{family}.py {shlex.join(argv)}", flush=True)
    run_dir = train_main(family, argv)

    sharpener, config = load_sharpener(run_dir, family=family)
    adapter = adapter_class(family).from_pretrained(config.base_model, **config.family_options)
    settings = preset(family, "demo")
    prompts = held_out_prompts(num_prompts)
    result = measure_gap(adapter, sharpener, prompts, settings["guidance_scale"], settings["resolution"])
    if free_residual_steps:
        residuals = fit_prompt_residuals(adapter, prompts, data, settings["guidance_scale"], settings["resolution"], free_residual_steps)
        reference = measure_gap(adapter, residuals, prompts, settings["guidance_scale"], settings["resolution"])
        result.update(free_residual_gap_closed=reference["cfg_gap_closed"], free_residual_steps=free_residual_steps)
    result.update(family=family, model_seed=model_seed, experiment=str(run_dir), train_steps=config.step,
                  seconds=round(time.time() - start, 1))
    (run_dir / "demo_result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nDemo finished in {result['seconds']} s: {run_dir}")
    print("Random-weight PLUMBING demo: this measures the distillation machinery on a tiny random model, not image quality:")
    print(f"DICE closes this fraction of the unguided-to-CFG (w={result['guidance_scale']:g}) distance over the final "
          f"latents of {result['num_prompts']} held-out prompts, sampled from identical noise.")
    if free_residual_steps:
        print(f"Reference on this model: free per-prompt residuals fitted with the same loss ({free_residual_steps} steps) "
              f"close free_residual_gap_closed={result['free_residual_gap_closed']:.3f}")
    print(f"cfg_gap_closed={result['cfg_gap_closed']:.3f}")
    return result


# ---- the shapes world ------------------------------------------------------------------------------

TOY_TRAIN_IMAGES = 4000
TOY_VALIDATION_PROMPTS = [
    "a red circle and a blue square", "a yellow triangle next to a green cross",
    "a white square on the left and a purple circle on the right", "a blue cross and a red triangle",
]
TOY_GRID_COLUMNS = 8
# name -> (sample.py options, NFE per step); alpha 0 is the base model itself. {run}: the sharpener trained
# now; {shipped}: the converged one in dice/assets/shapes_world/sharpener.
TOY_METHODS = {
    "unguided": (["--sharpener_path", "{run}", "--alpha", "0"], 1),
    "cfg": (["--sharpener_path", "{run}", "--alpha", "0", "--cfg_scale", "{w}"], 2),
    "dice": (["--sharpener_path", "{shipped}"], 1),
    "dice_now": (["--sharpener_path", "{run}"], 1),
}


def folder_latents(adapter, folder: Path) -> torch.Tensor:
    """The VAE latents (posterior mean) of a sample folder's PNGs, in prompt order."""
    import numpy as np

    from evaluation.metrics.images import open_image_collection

    collection = open_image_collection(folder)
    pixels = torch.stack([torch.from_numpy(np.array(collection.open_image(r.name))).permute(2, 0, 1) for r in collection.records])
    return adapter.encode_images(pixels.float() / 127.5 - 1.0)


def toy_grid(folders: dict[str, Path], labels: list[str], entries: list[dict], path: Path) -> Path:
    """A row per method, the same prompts and seeds; half seen, half unseen combinations."""
    from PIL import Image

    from .sampling import image_grid

    seen = [e for e in entries if e["split"] == "seen"][: TOY_GRID_COLUMNS // 2]
    unseen = [e for e in entries if e["split"] == "unseen"][: TOY_GRID_COLUMNS // 2]
    picks = seen + unseen
    rows = [[Image.open(folder / f"{e['index']:05d}.png").convert("RGB") for e in picks] for folder in folders.values()]
    captions = [f"{e['prompt']} ({e['split']})" for e in picks]
    image_grid(rows, labels, captions, scale=4).save(path)
    return path


def training_samples(config) -> int:
    """Training samples a sharpener has seen: updates x global batch."""
    return int(config.step) * int(config.training_options["global_batch_size"])


def run_toy(exps_root: str = "exps", max_train_steps: int | None = None, num_prompts: int = 256,
            train_batch_size: int | None = None, grid_out: str | None = None) -> dict:
    """The shapes-world demo; returns what it writes to demo_result.json."""
    from .adapters import adapter_class
    from .checkpoint import load_sharpener
    from evaluation.metrics import append_result
    from .shapes_world.folder_scores import calc_shapes_world
    from .presets import preset
    from .sample_cli import main as sample_main
    from .shapes_world import DEFAULT_PIPELINE, DEFAULT_SHARPENER, evaluation_prompts, write_imagefolder, write_prompt_file
    from .shapes_world.scoring import gain_recovered, gain_recovered_interval
    from .training import main as train_main

    start = time.time()
    assets = Path(exps_root) / "_demo_assets"
    data = write_imagefolder(assets / f"shapes-world-train-{TOY_TRAIN_IMAGES}", TOY_TRAIN_IMAGES, "train")
    prompt_file = write_prompt_file(assets / f"shapes-world-prompts-{num_prompts}.jsonl", num_prompts)
    settings = preset("sd15", "toy")
    w = settings["guidance_scale"]
    argv = ["--pretrained_model_name_or_path", str(DEFAULT_PIPELINE), "--train_data_dir", str(data), "--preset", "toy",
            "--output_dir", exps_root, "--desc", "demo-toy", "--dataloader_num_workers", "0",
            "--validation_prompts", *TOY_VALIDATION_PROMPTS]
    if max_train_steps:
        argv += ["--max_train_steps", str(max_train_steps), "--checkpointing_steps", str(max_train_steps)]
    if train_batch_size:
        argv += ["--train_batch_size", str(train_batch_size)]
    print(f"$ python train_sd15.py {shlex.join(argv)}", flush=True)
    run_dir = train_main("sd15", argv)

    folders, nfe = {}, {}
    for name, (options, evaluations_per_step) in TOY_METHODS.items():
        sample_argv = [a.format(w=f"{w:g}", run=run_dir, shipped=DEFAULT_SHARPENER) for a in options]
        sample_argv += ["--prompts", str(prompt_file), "--outdir", str(run_dir / "samples"), "--batch_gpu", "64"]
        print(f"$ python sample.py {shlex.join(sample_argv)}", flush=True)
        folders[name] = sample_main(sample_argv)
        nfe[name] = 20 * evaluations_per_step
    scores = {}
    for name, folder in folders.items():
        print(f"$ python evaluation/shapes_world.py calc --images {shlex.quote(str(folder))} --results {run_dir / 'results.jsonl'}", flush=True)
        scores[name] = calc_shapes_world(folder)
        for result in scores[name]:
            append_result(run_dir / "results.jsonl", result)

    adapter = adapter_class("sd15").from_pretrained(str(DEFAULT_PIPELINE))
    latents = {name: folder_latents(adapter, folder) for name, folder in folders.items()}
    accuracy = {name: s[0] for name, s in scores.items()}
    samples = {"dice": training_samples(load_sharpener(DEFAULT_SHARPENER)[1]),
               "dice_now": training_samples(load_sharpener(run_dir)[1])}
    labels = {"unguided": "unguided", "cfg": f"CFG w={w:g}", "dice": f"DICE (shipped, {samples['dice']:,} samples)",
              "dice_now": f"DICE (trained now, {samples['dice_now']:,} samples)"}
    grid = toy_grid(folders, [f"{labels[m]} (NFE {nfe[m]})" for m in folders], evaluation_prompts(num_prompts),
                    run_dir / "demo_grid.png")
    if grid_out:  # e.g. the README's copy
        Path(grid_out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(grid, grid_out)
    baseline = [accuracy[m].value for m in ("unguided", "cfg")]
    per_image = [accuracy[m].per_image for m in ("unguided", "cfg")]
    result = {
        "world": "shapes", "experiment": str(run_dir), "train_steps": max_train_steps or settings["max_train_steps"],
        "train_batch_size": train_batch_size or settings["train_batch_size"],
        "num_prompts": num_prompts, "guidance_scale": w, "grid": str(grid), "shipped_sharpener": str(DEFAULT_SHARPENER),
        "methods": {name: {"label": labels[name], "nfe": nfe[name], "folder": str(folders[name]),
                           "accuracy": accuracy[name].value,
                           **{k: accuracy[name].options[k] for k in ("accuracy_ci95", "accuracy_seen", "accuracy_unseen")},
                           "fd": scores[name][1].value, "fd_real_vs_real": scores[name][1].options["fd_real_vs_real"],
                           **({"training_samples": samples[name]} if name in samples else {})}
                    for name in folders},
        "cfg_gain_recovered": gain_recovered(*baseline, accuracy["dice"].value),
        "cfg_gain_recovered_ci95": list(gain_recovered_interval(*per_image, accuracy["dice"].per_image)),
        "cfg_gain_recovered_now": gain_recovered(*baseline, accuracy["dice_now"].value),
        "cfg_gain_recovered_now_ci95": list(gain_recovered_interval(*per_image, accuracy["dice_now"].per_image)),
        "cfg_gap_closed": cfg_gap_closed(latents["unguided"], latents["cfg"], latents["dice"]),
        "seconds": round(time.time() - start, 1),
    }
    (run_dir / "demo_result.json").write_text(json.dumps(result, indent=2) + "\n")
    print_toy_report(result)
    return result


def print_toy_report(result: dict) -> None:
    methods = result["methods"]
    print(f"\nDemo finished in {result['seconds']} s: {result['experiment']}")
    print(f"Shapes world, {result['num_prompts']} held-out prompts (half unseen combinations), DPM-Solver++ 20 steps, "
          "the same seeds for every method. Prompt accuracy: all four attributes right (world evaluator).\n")
    print(f"| method | NFE | accuracy seen | unseen | pooled [95% CI] | FD (real vs real {methods['cfg']['fd_real_vs_real']:.1f}) |")
    print("|---|---|---|---|---|---|")
    for m in methods.values():
        lo, hi = m["accuracy_ci95"]
        print(f"| {m['label']} | {m['nfe']} | {m['accuracy_seen']:.3f} | {m['accuracy_unseen']:.3f} | "
              f"{m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {m['fd']:.1f} |")
    print(f"\nGrid (a row per method, same prompts and seeds): {result['grid']}")
    for key, which in (("cfg_gain_recovered", "shipped"), ("cfg_gain_recovered_now", "trained now")):
        lo, hi = result[f"{key}_ci95"]
        print(f"DICE ({which}) recovers {result[key]:.0%} of CFG's accuracy gain (paired bootstrap 95% CI "
              f"{lo:.0%} to {hi:.0%}) at half CFG's network evaluations.")
    print(f"accuracy_unguided={methods['unguided']['accuracy']:.3f}")
    print(f"accuracy_cfg={methods['cfg']['accuracy']:.3f}")
    print(f"accuracy_dice={methods['dice']['accuracy']:.3f}")
    print(f"accuracy_dice_now={methods['dice_now']['accuracy']:.3f}")
    print(f"cfg_gain_recovered={result['cfg_gain_recovered']:.3f}")
    print(f"cfg_gain_recovered_now={result['cfg_gain_recovered_now']:.3f}")
    print(f"cfg_gap_closed={result['cfg_gap_closed']:.3f}")


def cli(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m dice.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("world", nargs="?", default="toy", choices=["toy", "sd15", "sdxl", "pixart"],
                        help="toy: the trained shapes world (default); sd15/sdxl/pixart: random-weight plumbing demos")
    parser.add_argument("--exps_root", default="exps", help="where the experiment folder goes")
    parser.add_argument("--max_train_steps", type=positive_int, default=None, help="override the preset's updates (toy and plumbing: 600)")
    parser.add_argument("--train_batch_size", type=positive_int, default=None, help="toy: override the preset's batch (16)")
    parser.add_argument("--grid_out", default=None, help="toy: also copy the grid PNG here (the README's is docs/shapes_world_demo.png)")
    parser.add_argument("--num_prompts", type=positive_int, default=None, help="held-out prompts (toy: 256, half unseen; plumbing: 32)")
    parser.add_argument("--model_seed", type=non_negative_int, default=0, help="plumbing demos: seed of the tiny random model's weights")
    parser.add_argument("--free_residual_steps", type=non_negative_int, default=0,
                        help="plumbing demos: also fit free per-prompt residuals for this many steps and report their gap (0: off; the README figures use 300)")
    args = parser.parse_args(argv)
    if args.world == "toy" and (args.model_seed or args.free_residual_steps):
        raise UserError("--model_seed and --free_residual_steps apply to the random-weight plumbing demos. "
                        "Name one (python -m dice.demo sd15 ...), or drop them")
    if args.world != "toy" and (args.train_batch_size or args.grid_out):
        raise UserError("--train_batch_size and --grid_out apply to the shapes-world demo. Drop them, or run `python -m dice.demo toy`")
    if args.grid_out:
        check_output_file(args.grid_out, "--grid_out")
    check_output_dir(args.exps_root, "--exps_root")
    if args.world == "toy":
        run_toy(args.exps_root, args.max_train_steps, args.num_prompts or 256, args.train_batch_size, args.grid_out)
    else:
        run(args.world, args.exps_root, args.max_train_steps, args.num_prompts or 32, args.model_seed, args.free_residual_steps)


if __name__ == "__main__":
    with exit_on_user_error():
        cli()
