"""How much of classifier-free guidance's effect a one-evaluation-per-step method recovers.

* ``cfg_gap_closed``: on final latents sampled from identical noise, ``1 - mean||z_m - z_cfg|| / mean||z_unguided - z_cfg||``
  (the plumbing demos' measure; on a trained model trajectories diverge in detail even when the image is right).
* ``gain_recovered``: the share of CFG's gain over unguided sampling in a score (e.g. prompt accuracy), with a
  paired bootstrap interval over prompts.
"""
from __future__ import annotations

import numpy as np
import torch


def cfg_gap_closed(z_uncond: torch.Tensor, z_cfg: torch.Tensor, z_dice: torch.Tensor) -> float:
    """1 = the method's latents are CFG's, 0 = no closer than unguided sampling's."""
    dist = lambda a, b: (a.float() - b.float()).flatten(1).norm(dim=1).mean().item()  # noqa: E731
    return 1.0 - dist(z_dice, z_cfg) / dist(z_uncond, z_cfg)


def gain_recovered(unguided: float, cfg: float, dice: float) -> float:
    """Share of CFG's accuracy gain over unguided sampling that DICE recovers."""
    return (dice - unguided) / (cfg - unguided) if cfg != unguided else float("nan")


def gain_recovered_interval(unguided, cfg, dice, num_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Paired percentile-bootstrap 95% interval of :func:`gain_recovered` from per-prompt 0/1
    correctness (the three methods share prompts and seeds, so prompts are resampled together)."""
    values = np.stack([np.asarray(v, dtype=np.float64) for v in (unguided, cfg, dice)])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[1], size=(num_resamples, values.shape[1]))
    means = values[:, idx].mean(axis=2)  # [3, resamples]
    gain = means[1] - means[0]
    shares = ((means[2] - means[0]) / np.where(gain != 0, gain, np.nan))
    shares = shares[np.isfinite(shares)]
    if not len(shares):  # CFG never differs from unguided: there is no gain to recover
        return float("nan"), float("nan")
    return float(np.quantile(shares, 0.025)), float(np.quantile(shares, 0.975))
