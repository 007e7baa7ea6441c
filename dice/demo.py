"""The embedded demo: a complete tiny DICE experiment on CPU, no downloads.

Builds a tiny random-weight pipeline and a synthetic captioned image set, trains a sharpener into
``exps/``, then samples held-out prompts unguided, with CFG and with DICE from identical noise and
reports how much of the unguided-to-CFG gap DICE closes on the final latents:

    cfg_gap_closed = 1 - mean||z_dice - z_cfg|| / mean||z_uncond - z_cfg||

This measures the distillation machinery on random weights, not image quality.

``--free_residual_steps N`` also fits one free residual per held-out prompt (no sharpener; the same
DICE loss, data and guidance scale, fitted on the held-out prompts themselves) and reports its gap: a
reference for how far a rewrite of the prompt embedding, the sharpener's only lever, moves this random
model towards CFG. A low ``cfg_gap_closed`` beside a similar reference is a limit of the tiny model,
not of the training code.
"""
from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import torch
from torch import nn

from .errors import ArgumentParser, check_output_dir, exit_on_user_error, non_negative_int, positive_int

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


class PromptResiduals(nn.Module):
    """A free residual per prompt, in place of a sharpener: ``forward`` returns it whatever ``c``.

    Only valid for the prompt list it was fitted on, in that order and all in one batch.
    """

    def __init__(self, num_prompts: int, num_tokens: int, dim: int):
        super().__init__()
        self.residual = nn.Parameter(torch.zeros(num_prompts, num_tokens, dim))

    def forward(self, c: torch.Tensor, u: torch.Tensor, u_mask: torch.Tensor | None = None) -> torch.Tensor:
        if c.shape != self.residual.shape:
            raise ValueError(f"fitted for embeddings {tuple(self.residual.shape)}, got {tuple(c.shape)}")
        return self.residual


def fit_prompt_residuals(adapter, prompts: list[str], train_data_dir: str | Path, guidance_scale: float,
                         resolution: int, steps: int, lr: float = 1e-2, seed: int = 0) -> PromptResiduals:
    """Fit free per-prompt residuals with the DICE loss (squared error, uniform timesteps, CFG target
    at ``guidance_scale``) on noised latents of the training images; one batch holds every prompt."""
    from .data import load_records, make_loader, step_generator
    from .losses import distillation_loss
    from tqdm.auto import tqdm

    adapter.freeze("cpu", torch.float32)
    _, records = load_records(train_data_dir)
    loader = make_loader(records, resolution, len(prompts), 0, 1, seed)
    cond = adapter.encode_prompts(prompts)
    uncond = adapter.encode_negative([""] * len(prompts))
    residuals = PromptResiduals(len(prompts), *cond.embeds.shape[1:])
    optimizer = torch.optim.Adam(residuals.parameters(), lr=lr)
    batches = iter(loader)
    for step in tqdm(range(steps), desc="fitting free per-prompt residuals", leave=False):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        gen = step_generator(seed, step)
        latents = adapter.encode_images(batch["pixels"])
        timesteps = torch.randint(0, adapter.num_train_timesteps, (len(prompts),), generator=gen)
        x_t = adapter.add_noise(latents, torch.randn(latents.shape, generator=gen), timesteps)
        teacher = adapter.teacher_noise(x_t, timesteps, cond, uncond, guidance_scale, batch["sizes"])
        student = adapter.predict_noise(x_t, timesteps, adapter.sharpen(residuals, cond, uncond), batch["sizes"])
        loss = distillation_loss(student, teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return residuals.requires_grad_(False)


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
    print("This measures the distillation machinery on a tiny random-weight model, not image quality:")
    print(f"DICE closes this fraction of the unguided-to-CFG (w={result['guidance_scale']:g}) distance over the final "
          f"latents of {result['num_prompts']} held-out prompts, sampled from identical noise.")
    if free_residual_steps:
        print(f"Reference on this model: free per-prompt residuals fitted with the same loss ({free_residual_steps} steps) "
              f"close free_residual_gap_closed={result['free_residual_gap_closed']:.3f}")
    print(f"cfg_gap_closed={result['cfg_gap_closed']:.3f}")
    return result


def cli(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m dice.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", nargs="?", default="sd15", choices=["sd15", "sdxl", "pixart"])
    parser.add_argument("--exps_root", default="exps", help="where the experiment folder goes")
    parser.add_argument("--max_train_steps", type=positive_int, default=None, help="override the demo preset's 600 updates")
    parser.add_argument("--num_prompts", type=positive_int, default=32, help="held-out prompts for cfg_gap_closed")
    parser.add_argument("--model_seed", type=non_negative_int, default=0, help="seed of the tiny random model's weights")
    parser.add_argument("--free_residual_steps", type=non_negative_int, default=0,
                        help="also fit free per-prompt residuals for this many steps and report their gap (0: off; the README figures use 300)")
    args = parser.parse_args(argv)
    check_output_dir(args.exps_root, "--exps_root")
    run(args.family, args.exps_root, args.max_train_steps, args.num_prompts, args.model_seed, args.free_residual_steps)


if __name__ == "__main__":
    with exit_on_user_error():
        cli()
