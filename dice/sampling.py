"""The one sampling routine: embeddings in, stock diffusers pipeline out.

Unguided (``cfg_scale=1``, one network evaluation per step), CFG, DICE (a sharpener rewrites the
prompt embedding, strength ``alpha``) and DICE + CFG are all the same call with different arguments.
Image i's starting noise depends only on its own seed, so results do not depend on batch size or
the number of processes.
"""
from __future__ import annotations

import torch
from torch import nn

from .adapters.base import Adapter

SCHEDULERS = {
    # name -> (diffusers class, config overrides). DPM-Solver++ 2M is the paper's sampler (SPEC section 5).
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def make_scheduler(name: str, base_config):
    """A sampling scheduler built from the base model's own scheduler config (its noise schedule)."""
    import diffusers

    if name in SCHEDULERS:
        class_name, overrides = SCHEDULERS[name]
    elif hasattr(diffusers, name) and name.endswith("Scheduler"):
        class_name, overrides = name, {}
    else:
        raise ValueError(f"unknown scheduler {name!r}; use one of {sorted(SCHEDULERS)} or a diffusers *Scheduler class name")
    return getattr(diffusers, class_name).from_config(base_config, **overrides)


def use_scheduler(adapter: Adapter, name: str = "dpmsolver++") -> None:
    adapter.pipe.scheduler = make_scheduler(name, adapter.noise_scheduler.config)


def image_seed(base_seed: int, index: int) -> int:
    """Seed of image ``index``: a function of the index alone, whatever the batching."""
    return base_seed + index


def initial_noise(adapter: Adapter, seeds: list[int], resolution: int) -> torch.Tensor:
    size = resolution // adapter.vae_scale_factor
    noise = [torch.randn(adapter.latent_channels, size, size, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(noise).to(adapter.device, adapter.dtype)


@torch.no_grad()
def generate(
    adapter: Adapter, prompts: list[str], seeds: list[int], *, sharpener: nn.Module | None = None,
    alpha: float = 1.0, cfg_scale: float = 1.0, steps: int = 20, negative_prompt: str = "",
    resolution: int | None = None, output_type: str = "pil",
):
    """Generate one image per prompt; returns PIL images, or final latents if ``output_type="latent"``.

    The negative prompt is the CFG negative and, for DICE, the sharpener's context ``u``.
    """
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    resolution = resolution or adapter.default_resolution
    cond = adapter.encode_prompts(list(prompts))
    uncond = adapter.encode_negative([negative_prompt] * len(prompts))
    if sharpener is not None:
        cond = adapter.sharpen(sharpener, cond.to(dtype=torch.float32), uncond.to(dtype=torch.float32), alpha)
    cond, uncond = cond.to(adapter.device, adapter.dtype), uncond.to(adapter.device, adapter.dtype)
    out = adapter.pipe(
        **adapter.pipeline_kwargs(cond, uncond), guidance_scale=cfg_scale, num_inference_steps=steps,
        height=resolution, width=resolution, latents=initial_noise(adapter, seeds, resolution),
        output_type=output_type,
    )
    return out.images


def image_grid(rows: list[list], labels: list[str] | None = None):
    """Paste equally sized PIL images into a grid (one row per method)."""
    from PIL import Image, ImageDraw

    w, h = rows[0][0].size
    pad = 70 if labels else 0
    grid = Image.new("RGB", (pad + w * max(len(r) for r in rows), h * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for y, row in enumerate(rows):
        if labels:
            draw.text((4, y * h + h // 2 - 5), labels[y], fill="black")
        for x, img in enumerate(row):
            grid.paste(img, (pad + x * w, y * h))
    return grid
