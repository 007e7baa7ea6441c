"""The one interface every training method implements (the method axis, beside the family axis).

A method owns what is trained (its module and that module's initialisation), the teacher's guidance
scale, the student's prediction given the adapter, ``x_t``, ``t``, the prompt and null conditioning and
the guidance scale ω, how the module is saved and loaded (safetensors + JSON), and what it hands the
stock diffusers pipeline at sampling time. :mod:`dice.distillation` (the step), :mod:`dice.training`
(the only training loop) and :mod:`dice.sampling` (the only sampler) talk to methods only through this
class, as they talk to model families through adapters. A method is built from named values (its
training options); one built without them can load and sample what was trained.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from ..adapters.base import Adapter, Conditioning
from ..checkpoint import METHOD_CONFIG_NAME, TrainedConfig
from ..errors import UserError
from ..paper import GUIDANCE_SCALE
from ..runtime import to_device


OMEGA_DRAWS = ("sample", "batch")


class Method:
    """Base class; subclasses fill in one method."""

    name: ClassVar[str]  # as on the command line: dice, gd, pnp
    title: ClassVar[str]  # as in the paper's Table 1
    config_name: ClassVar[str] = METHOD_CONFIG_NAME
    # True: the trained model is sampled together with classifier-free guidance if asked (DICE + CFG, paper
    # A.5); False: it replaces CFG (one guidance scale ω, given at sampling time).
    combines_with_cfg: ClassVar[bool] = False
    # True: ω is an input of the student, drawn per sample over --guidance_scale_range in training.
    conditioned_on_scale: ClassVar[bool] = True

    def __init__(self, guidance_scale: float | None = GUIDANCE_SCALE, guidance_scale_range: tuple[float, float] | None = None,
                 omega_draw: str | None = None):
        """The teacher's guidance scale: a fixed ``guidance_scale``, or (GD, PnP) ω drawn uniformly from
        ``guidance_scale_range``, one per sample (``omega_draw`` "sample", default) or one for the whole global batch
        ("batch", the authors' runs)."""
        if omega_draw not in OMEGA_DRAWS + (None,):
            raise ValueError(f"omega_draw must be one of {OMEGA_DRAWS}, not {omega_draw!r}")
        self.guidance_scale = guidance_scale
        self.guidance_scale_range = tuple(guidance_scale_range) if guidance_scale_range else None
        self.omega_draw = omega_draw or "sample"

    # ---- which families ------------------------------------------------------------------------
    @classmethod
    def unsupported_reason(cls, adapter_class: type[Adapter]) -> str | None:
        """Why this method cannot train or sample a family, or None."""
        return None

    @classmethod
    def check_family(cls, adapter_class: type[Adapter]) -> None:
        reason = cls.unsupported_reason(adapter_class)
        if reason:
            raise UserError(f"--method {cls.name} is not available for {adapter_class.family}: {reason}")

    # ---- training --------------------------------------------------------------------------------
    def build(self, adapter: Adapter) -> nn.Module:
        """The trainable module, initialised, in fp32 on the adapter's device (global RNG seeded by the caller)."""
        raise NotImplementedError

    def training_guidance(self, batch_size: int, generator: torch.Generator,
                          shared_generator: torch.Generator | None = None) -> float | torch.Tensor:
        """The teacher's guidance scale: the fixed one, else ω drawn uniformly from the range, one per sample from
        ``generator`` or one per global batch from ``shared_generator`` (the same on every process)."""
        if self.guidance_scale is not None:
            return self.guidance_scale
        low, high = self.guidance_scale_range
        if self.omega_draw == "batch":
            return (low + (high - low) * torch.rand(1, generator=shared_generator)).repeat(batch_size)
        return low + (high - low) * torch.rand(batch_size, generator=generator)

    def student_noise(self, module: nn.Module, adapter: Adapter, x_t: torch.Tensor, t: torch.Tensor,
                      cond: Conditioning, uncond: Conditioning, guidance, sizes: torch.Tensor | None) -> torch.Tensor:
        """The student's noise prediction, to be matched to the CFG teacher's at ``guidance``."""
        raise NotImplementedError

    def enable_gradient_checkpointing(self, adapter: Adapter, module: nn.Module) -> None:
        """Recompute activations in the backward pass of whatever the gradient flows through."""
        raise NotImplementedError

    def method_options(self, adapter: Adapter, module: nn.Module) -> dict[str, Any]:
        """What the checkpoint records about the method: parameter counts, and what :meth:`load` needs."""
        return {"trainable_parameters": count_parameters(module), "base_parameters": count_parameters(adapter.denoiser)}

    def make_config(self, module: nn.Module, adapter: Adapter, **common) -> TrainedConfig:
        return TrainedConfig(method=self.name, method_options=self.method_options(adapter, module), **common)

    # ---- files -------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, module: nn.Module, config: TrainedConfig) -> None:
        """Weights (a diffusers model folder, safetensors) and ``config`` (JSON) into ``folder``."""
        raise NotImplementedError

    def load(self, folder: Path, config: TrainedConfig, device="cpu", dtype: torch.dtype | None = None) -> nn.Module:
        """The trained module from a folder :meth:`save` wrote, in eval mode without gradients."""
        raise NotImplementedError

    # ---- sampling ----------------------------------------------------------------------------------
    def condition(self, adapter: Adapter, module: nn.Module, cond: Conditioning, uncond: Conditioning,
                  strength: float) -> tuple[Conditioning, Conditioning]:
        """The embeddings handed to the pipeline (DICE rewrites the prompt's); default unchanged."""
        return cond, uncond

    @contextlib.contextmanager
    def pipeline(self, adapter: Adapter, module: nn.Module, strength: float, resolution: int) -> Iterator[tuple[Any, dict]]:
        """(stock pipeline to call, extra keyword arguments of the call) while sampling with ``module``."""
        yield adapter.pipe, {}

    def evaluations_per_step(self, adapter: Adapter, module: nn.Module) -> float:
        """Network evaluations per sampling step as the paper's NFE column counts them."""
        return 1.0


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def write_config(folder: str | os.PathLike, config: TrainedConfig, name: str = METHOD_CONFIG_NAME) -> None:
    (Path(folder) / name).write_text(json.dumps(config.__dict__, indent=2, default=str) + "\n")


def pipeline_with(pipe, class_name: str | None = None, **replace):
    """A stock pipeline (of ``class_name``, default ``pipe``'s class) sharing ``pipe``'s components and
    settings, some replaced or added (a fine-tuned denoiser, a ControlNet). Unlike diffusers' ``from_pipe``
    nothing is cast (it casts every shared module to one dtype) and ``pipe`` itself is not changed."""
    import diffusers

    cls = getattr(diffusers, class_name) if class_name else type(pipe)
    accepted = inspect.signature(cls.__init__).parameters
    components = {**pipe.components, **replace}
    settings = {k: v for k, v in pipe.config.items() if not k.startswith("_") and k not in components}
    new = cls(**{k: v for k, v in {**settings, **components}.items() if k in accepted})
    new.set_progress_bar_config(disable=True)
    return new


def scale_tensor(value: float | torch.Tensor, batch_size: int, device="cpu") -> torch.Tensor:
    """ω as one float per sample [B] on ``device`` (from the host without a wait for the GPU)."""
    if not isinstance(value, torch.Tensor):
        value = torch.full((batch_size,), float(value))
    return to_device(value.float().expand(batch_size), device)


@dataclass
class TrainedModel:
    """A trained method ready to sample: the method, its module and the config it was saved with."""

    method: Method
    module: nn.Module
    config: TrainedConfig | None = None
