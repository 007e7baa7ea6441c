"""Free per-prompt residuals fitted with DICE's loss: the paper's preliminary study (Fig. 3), and the
embedding-only ceiling a sharpener is measured against.

A free residual per prompt (no sharpener, nothing shared between prompts) is fitted with DICE's loss:
the unguided prediction on ``c + r`` against the CFG prediction at ``w`` on noised latents. The latents
are those of a training image folder when one is given, otherwise of the model's own CFG samples of the
prompt (what the optimised unguided sampling should reach). Runs on the model's device.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import load_records, make_loader, step_generator
from .distillation import cfg_teacher, distillation_loss
from .methods.dice import sharpen, sharpening_rule
from .sampling import generate


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


def _latent_batches(adapter, prompts, train_data_dir, guidance_scale, resolution, seed, samples_per_prompt=4):
    """An endless supply of (x0 latents [len(prompts), ...], sizes) for the fit."""
    if train_data_dir is not None:
        _, records = load_records(train_data_dir)
        loader = make_loader(records, resolution, len(prompts), 0, 1, seed)
        while True:
            for batch in loader:
                yield adapter.encode_images(batch["pixels"]), batch["sizes"]
    # The prompt's own CFG images: samples_per_prompt seeds each, cycled through.
    pool = [generate(adapter, prompts, [seed * 1000 + k * len(prompts) + i for i in range(len(prompts))],
                     cfg_scale=guidance_scale, resolution=resolution, output_type="latent") for k in range(samples_per_prompt)]
    sizes = torch.tensor([[resolution, resolution, 0, 0]] * len(prompts))
    while True:
        yield from ((latents, sizes) for latents in pool)


def fit_prompt_residuals(adapter, prompts: list[str], train_data_dir: str | Path | None, guidance_scale: float,
                         resolution: int, steps: int, lr: float = 1e-2, seed: int = 0, history: list | None = None,
                         after_step=None) -> PromptResiduals:
    """Fit free per-prompt residuals with the DICE loss (squared error, the family's training timesteps, CFG target at
    ``guidance_scale``) on noised latents (of ``train_data_dir``'s images, else of the prompts' own CFG
    samples), on the adapter's device; one batch holds every prompt. ``history`` collects the losses;
    ``after_step(steps_done, residuals)`` is called after every step (e.g. to score the fit so far)."""
    adapter.freeze(adapter.device, adapter.dtype)  # no gradients into the model, wherever it lives
    device = adapter.device
    cond = adapter.encode_prompts(prompts)
    uncond = adapter.encode_negative([""] * len(prompts))
    tokens = cond.embeds.shape[1] + int(sharpening_rule(adapter)["sharpen_pooled"])  # SD3: the pooled vector, one more
    residuals = PromptResiduals(len(prompts), tokens, cond.embeds.shape[2]).to(device)
    optimizer = torch.optim.Adam(residuals.parameters(), lr=lr)
    batches = _latent_batches(adapter, prompts, train_data_dir, guidance_scale, resolution, seed)
    for step in tqdm(range(steps), desc="fitting free per-prompt residuals", leave=False):
        latents, sizes = next(batches)
        gen = step_generator(seed, step)
        timesteps = adapter.draw_timesteps(len(prompts), gen).to(device)
        noise = torch.randn(latents.shape, generator=gen).to(device, latents.dtype)
        x_t = adapter.add_noise(latents, noise, timesteps)
        teacher = cfg_teacher(adapter, x_t, timesteps, cond, uncond, guidance_scale, sizes.to(device))
        sharpened = sharpen(adapter, residuals, cond.to(dtype=torch.float32), uncond.to(dtype=torch.float32))
        student = adapter.predict_noise(x_t, timesteps, sharpened.to(dtype=adapter.dtype), sizes.to(device))
        loss = distillation_loss(student.float(), teacher.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if history is not None:
            history.append(loss.item())
        if after_step is not None:
            after_step(step + 1, residuals)
    return residuals.requires_grad_(False)
