"""Process-group setup shared by training, sampling and evaluation."""
from __future__ import annotations

import atexit
import os

import torch


def needs_cpu_process_group() -> bool:
    """True when several processes were launched on a machine without CUDA.

    accelerate then gives every process a world of one unless asked for CPU explicitly; with
    ``cpu=True`` it forms a gloo group (how our multi-process tests run DDP on CPU).
    """
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def to_device(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Copy a host tensor to ``device`` without making the host wait for the GPU.

    A plain ``.to("cuda")`` from pageable memory synchronises the stream: the host stops until every
    queued kernel has run, and the GPU then idles while the next kernels are queued. From pinned
    memory the copy is queued like a kernel. Elsewhere this is an ordinary ``.to``.
    """
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device=device, dtype=dtype, non_blocking=True)


def quiet_threads() -> None:
    """One intra-op thread unless told otherwise: tiny models gain nothing from more, and on a shared
    CPU spinning OpenMP threads made every op many times slower (measured)."""
    if "OMP_NUM_THREADS" not in os.environ and not torch.cuda.is_available():
        torch.set_num_threads(1)


def process_state(cpu: bool):
    """The processes ``accelerate launch`` started (one when run plainly), as accelerate's PartialState. With several,
    each leaves the process group when it exits: a gloo process that exits inside it can abort ("terminate called
    without an active exception") after its work is done, and fail the whole launch."""
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    if state.num_processes > 1:
        atexit.register(_leave_process_group)
    return state


def _leave_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

