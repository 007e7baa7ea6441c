"""Process-group setup shared by training, sampling and evaluation."""
from __future__ import annotations

import os

import torch


def needs_cpu_process_group() -> bool:
    """True when several processes were launched on a machine without CUDA.

    accelerate then gives every process a world of one unless asked for CPU explicitly; with
    ``cpu=True`` it forms a gloo group (how our multi-process tests run DDP on CPU).
    """
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
