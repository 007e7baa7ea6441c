"""What the two caches (text embeddings, VAE latents) share: refusing a folder another model wrote.

Settings (dimensions, dtype, resolution, ...) are compared exactly; the weights through a probe
input encoded when the folder was written and again now (equal to 1% of the largest value: the same
weights on another device or kernel agree that closely, other weights do not).
"""
from __future__ import annotations

from pathlib import Path

import torch


def refuse_other_writer(folder: Path, index: dict, fingerprint: dict, probe: torch.Tensor, *, error: type[Exception],
                        cache: str, option: str, writer: str) -> None:
    """Raise ``error`` unless ``index`` (the folder's) records ``fingerprint`` and a probe output close to ``probe``."""
    stored = index.get("fingerprint", {})
    differ = {k: (stored.get(k), v) for k, v in fingerprint.items() if stored.get(k) != v}
    if differ:
        raise error(f"{cache} '{folder}' was written for different settings {differ} (stored, now). "
                    f"Use another {option} folder, or delete this one")
    stored_probe = torch.tensor(index["probe"], dtype=torch.float32)
    scale = float(stored_probe.abs().max()) or 1.0
    if stored_probe.shape != probe.shape or not torch.allclose(stored_probe, probe, rtol=1e-2, atol=1e-2 * scale):
        raise error(f"{cache} '{folder}' was written by a different {writer} (its probe input encodes differently "
                    f"now). Use another {option} folder, or delete this one")
