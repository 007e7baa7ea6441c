"""The random-weight plumbing demos: ``python -m dice.demo sd15|sdxl|pixart|pixart-sigma|sd3``.

A sharpener is trained (``--preset demo``) on a tiny random-weight pipeline of the family and a small captioned
folder, and the demo reports ``cfg_gap_closed`` over held-out prompts: how much of the unguided-to-CFG distance
of the final latents DICE closes. The images are noise; this measures the distillation machinery, not image
quality (the shapes world, dice/shapes_world/demo.py, measures that). ``free_residual_steps`` also fits one
free residual per held-out prompt (dice.residuals) as the reference for what any rewrite of the prompt
embedding can do on such a model.
"""
from __future__ import annotations

import json
import random
import shlex
import time
from pathlib import Path

from dice.adapters import adapter_class
from dice.adapters.registry import entry_script
from dice.checkpoint import load_sharpener
from dice.presets import preset
from dice.residuals import fit_prompt_residuals
from dice.sampling import generate, use_scheduler
from dice.training import main as train_main
from evaluation.metrics.guidance_gap import cfg_gap_closed

from .data import write_synthetic_dataset
from .tiny import save_tiny_pipeline

# The tiny SD3 trains its demo at 77 T5 tokens (diffusers' SD3 training examples' length), not the pipeline's 256: the
# sharpener's work grows with the tokens, and 256 made its 600 updates ~2.4x slower on 2 CPU cores.
DEMO_ARGUMENTS = {"sd3": ["--max_sequence_length", "77"]}

HELD_OUT_TEMPLATES = [
    "a picture of a {size} {color} {shape} near a {color2} tree",
    "a painting of a {color} {shape} under the {color2} sky",
    "a {color} {shape} and a {color2} dog",
    "a bright {color} {shape} next to a dark {color2} house",
]


def held_out_prompts(count: int, seed: int = 1234) -> list[str]:
    """Prompts phrased unlike any training caption (see dice.testkit.data.write_synthetic_dataset)."""
    rng = random.Random(seed)
    colors = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
    shapes = ["ball", "cup", "house", "tree", "car", "flower", "cat", "boat", "chair"]
    return [
        HELD_OUT_TEMPLATES[i % len(HELD_OUT_TEMPLATES)].format(
            size=rng.choice(["small", "large"]), color=rng.choice(colors), color2=rng.choice(colors),
            shape=rng.choice(shapes))
        for i in range(count)
    ]


def measure_gap(adapter, sharpener, prompts: list[str], guidance_scale: float, resolution: int, steps: int = 20) -> dict:
    use_scheduler(adapter)  # the family's sampler: the paper's DPM-Solver++ for epsilon models
    seeds = list(range(len(prompts)))
    common = dict(steps=steps, resolution=resolution, output_type="latent")
    z_uncond = generate(adapter, prompts, seeds, cfg_scale=1.0, **common)
    z_cfg = generate(adapter, prompts, seeds, cfg_scale=guidance_scale, **common)
    z_dice = generate(adapter, prompts, seeds, sharpener=sharpener, **common)
    return {"cfg_gap_closed": cfg_gap_closed(z_uncond, z_cfg, z_dice), "num_prompts": len(prompts),
            "guidance_scale": guidance_scale, "steps": steps}


def run(family: str = "sd15", exps_root: str = "exps", max_train_steps: int | None = None, num_prompts: int = 32,
        model_seed: int = 0, free_residual_steps: int = 0) -> dict:
    start = time.time()
    cache = Path(exps_root) / "_demo_assets"
    model = save_tiny_pipeline(cache / f"tiny-{family}-seed{model_seed}", family, seed=model_seed)
    data = cache / "synthetic-captions"
    if not (data / "metadata.jsonl").is_file():
        write_synthetic_dataset(data, num_images=256, size=48)
    argv = ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data), "--preset", "demo",
            "--output_dir", exps_root, "--desc", f"demo-{family}", "--dataloader_num_workers", "0",
            "--validation_inference_steps", "10", *DEMO_ARGUMENTS.get(family, [])]
    if max_train_steps:
        argv += ["--max_train_steps", str(max_train_steps), "--checkpointing_steps", str(max_train_steps)]
    print(f"$ python {entry_script(family)} {shlex.join(argv)}", flush=True)
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
