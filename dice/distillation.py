"""The distillation step of every method, top to bottom: paper Algorithm 1 for one batch (SPEC sections 1 and 4).

    t ~ U{0, ..., T-1}, eps ~ N(0, I), x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps      (the model's own schedule)
    teacher = eps(x_t, t, u) + w (eps(x_t, t, c) - eps(x_t, t, u))                   (CFG, no gradients)
    student = eps(x_t, t, c + f(c, u))                                                (DICE: one evaluation)
    loss    = || student - teacher ||^2

GD's and PnP's students (the method's ``student_noise``) replace the third line; everything else is shared.
The first line is the family's (``adapter.draw_timesteps`` / ``add_noise``): a flow-matching family (SD3) draws
sigma from its training distribution, x_t = (1 - sigma) x_0 + sigma eps, and its network predicts the velocity
eps - x_0, in which teacher and student are then compared (dice.adapters.flow_matching).
Defaults are the paper's (squared error, a timestep per sample, mean over elements); the authors' code
differs, and each difference is a named option (docs/authors_code.md: "paper / authors' code / this repo").
"""
from __future__ import annotations

import contextlib

import torch

from .adapters.base import Adapter, Conditioning
from .runtime import to_device

LOSS_TYPES = ("mse", "l1")
REDUCTIONS = ("mean", "sum_per_sample", "sum_per_global_batch")


def distillation_step(adapter: Adapter, method, module: torch.nn.Module, latents: torch.Tensor, captions: list[str],
                      sizes: torch.Tensor | None, negatives, generator: torch.Generator,
                      shared_generator: torch.Generator | None = None, shared_timestep: bool = False,
                      loss_type: str = "mse", reduction: str = "mean", global_batch: int | None = None,
                      autocast=contextlib.nullcontext) -> torch.Tensor:
    """The loss of one micro-batch: clean latents ``x_0`` with their ``captions`` and (SDXL) image sizes.
    ``method`` says what the student is and which guidance scale the teacher uses; ``negatives.sample(B, generator)``
    draws u. ``generator`` draws everything random that differs between processes; ``shared_generator`` (the same
    on every process) what the whole global batch shares: the timestep with ``shared_timestep`` (the authors'
    choice) and the method's ω if it draws one per batch. ``global_batch``: for the "sum_per_global_batch" loss."""
    batch, device = len(latents), latents.device
    # 1. noise and timestep. Host draws go over with to_device: a plain .to("cuda") would make the host wait.
    if not shared_timestep:
        t = adapter.draw_timesteps(batch, generator)
    else:
        t = adapter.draw_timesteps(1, shared_generator).expand(batch).contiguous()
    t = to_device(t, device)
    noise = to_device(torch.randn(latents.shape, generator=generator), device, latents.dtype)
    x_t = adapter.add_noise(latents, noise, t)
    # The prompt c, the null or negative prompt u (paper 3.2), the teacher's w (GD and PnP: one ω per sample).
    cond = adapter.encode_prompts(captions)
    uncond = negatives.sample(batch, generator)
    guidance = method.training_guidance(batch, generator, shared_generator)
    # 2. the teacher: classifier-free guidance, no gradients
    teacher = cfg_teacher(adapter, x_t, t, cond, uncond, guidance, sizes)
    # 3. the student: DICE's is the frozen model on the sharpened prompt embedding, unguided
    with autocast():
        student = method.student_noise(module, adapter, x_t, t, cond, uncond, guidance, sizes)
    # 4. the loss
    return distillation_loss(student, teacher, loss_type, reduction, global_batch)


@torch.no_grad()
def cfg_teacher(adapter: Adapter, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, uncond: Conditioning,
                guidance_scale: float | torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """The CFG target; the unconditional and conditional halves go through one denoiser call."""
    double = lambda x: None if x is None else torch.cat([x, x])  # noqa: E731
    both = adapter.predict_noise(double(x_t), double(t), Conditioning.cat([uncond, cond]), double(sizes))
    eps_uncond, eps_cond = both.chunk(2)
    return cfg_combine(eps_uncond, eps_cond, guidance_scale)


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: ``eps_u + w * (eps_c - eps_u)``; ``w`` one number or one per sample [B]."""
    if isinstance(guidance_scale, torch.Tensor):
        # fp32 scales (and so an fp32 target): a bf16 scale would round 5.37 to 5.375
        guidance_scale = to_device(guidance_scale, eps_cond.device, torch.float32).view(-1, *[1] * (eps_cond.ndim - 1))
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, loss_type: str = "mse", reduction: str = "mean",
    global_batch: int | None = None,
) -> torch.Tensor:
    """Distance between the student's and the CFG teacher's predictions, computed in float32.

    ``reduction="mean"`` averages over every element. ``"sum_per_sample"`` sums each sample's element errors and
    averages over the micro-batch: with DDP's gradient averaging over N processes (and accelerate's division by
    the accumulation steps A) an update follows the per-sample sum averaged over the global batch.
    ``"sum_per_global_batch"`` is the authors' loss as each process computes it: the micro-batch's error sum divided
    by the global batch B x N x A, so an update's gradient is that of "sum_per_sample" divided by N x A, exactly as
    in their runs (Adam divides the scale out but for its epsilon).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"loss_reduction must be one of {REDUCTIONS}, got {reduction!r}")
    diff = student.float() - teacher.float()
    err = diff.square() if loss_type == "mse" else diff.abs()
    if reduction == "mean":
        return err.mean()
    if reduction == "sum_per_sample":
        return err.flatten(1).sum(dim=1).mean()
    if not global_batch:
        raise ValueError("loss_reduction sum_per_global_batch needs the global batch size")
    return err.sum() / global_batch
