"""The CFG target and the distillation loss (SPEC section 1 and 4).

Defaults are the paper's (squared error, a timestep per sample, mean over elements). The authors'
code differs; each difference is a named option (see README, "paper / authors' code / this repo").
"""
from __future__ import annotations

import torch

from .runtime import to_device

LOSS_TYPES = ("mse", "l1")
REDUCTIONS = ("mean", "sum_per_sample")


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: ``eps_u + w * (eps_c - eps_u)``; ``w`` one number or one per sample [B]."""
    if isinstance(guidance_scale, torch.Tensor):
        # fp32 scales (and so an fp32 target): a bf16 scale would round 5.37 to 5.375
        guidance_scale = to_device(guidance_scale, eps_cond.device, torch.float32).view(-1, *[1] * (eps_cond.ndim - 1))
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, loss_type: str = "mse", reduction: str = "mean",
) -> torch.Tensor:
    """Distance between the student's and the CFG teacher's predictions, computed in float32.

    ``reduction="mean"`` averages over every element. ``"sum_per_sample"`` sums each sample's
    element errors and averages over samples: with DDP's gradient averaging this equals the
    authors' "sum per sample / global batch".
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"loss_reduction must be one of {REDUCTIONS}, got {reduction!r}")
    diff = student.float() - teacher.float()
    err = diff.square() if loss_type == "mse" else diff.abs()
    if reduction == "mean":
        return err.mean()
    return err.flatten(1).sum(dim=1).mean()
