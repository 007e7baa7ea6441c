"""Flow matching (rectified flow), the diffusion process of SD3 / SD3.5 and of SANA, Lumina or Qwen-Image:

    x_t = (1 - sigma) x_0 + sigma eps,   timestep = 1000 sigma (continuous),   the network predicts v = eps - x_0,

sampled with FlowMatchEulerDiscreteScheduler at the model's ``shift`` (sigma -> shift sigma / (1 + (shift - 1) sigma)).
CFG combines velocities exactly as it combines noise predictions, so the teacher, the student and the loss of
:mod:`dice.distillation` stay as they are and compare velocities. What differs is a family fact the step and the
sampler ask for: the training draw of sigma (:meth:`draw_timesteps`), the noising (:meth:`add_noise`) and the
samplers (:meth:`scheduler_overrides`). A flow-matching family subclasses :class:`FlowMatchingAdapter` and adds
only its text side (dice/adapters/sd3.py).

The training sigmas (``--flow_sigmas``): the paper distils at uniform t, the distribution its DDPM models were
trained with, and the same reasoning gives the default here:
- "logit_normal" (default): the distribution SD3 was trained with: sigma = shift(sigmoid(n)), n ~ N(0, 1) (the SD3
  paper's logit-normal sampling, at the shift of its 1024-px training and of its sampler; diffusers'
  ``compute_density_for_timestep_sampling`` and its SD3 training examples draw the same).
- "uniform": sigma = shift(u), u ~ U(0, 1): the density of the sigmas the Euler sampler visits with the model's
  shift (its steps are uniform in u), weighting each part of the sampling path as sampling does.
"""
from __future__ import annotations

import inspect

import torch

from ..errors import UserError
from .base import Adapter

FLOW_SIGMA_CHOICES = ("logit_normal", "uniform")


class FlowMatchingAdapter(Adapter):
    """Base class of the flow-matching families: the diffusion process; subclasses give the text side."""

    prediction_type = "flow"  # the velocity eps - x_0
    training_scheduler = "FlowMatchEulerDiscreteScheduler"
    default_scheduler = "flow_euler"  # the model's own sampler at its own shift
    option_defaults = {"flow_sigmas": "logit_normal"}

    def __init__(self, pipe, model, options=None):
        super().__init__(pipe, model, options)
        if self.options["flow_sigmas"] not in FLOW_SIGMA_CHOICES:
            raise ValueError(f"flow_sigmas must be one of {FLOW_SIGMA_CHOICES}, not {self.options['flow_sigmas']!r}")
        if self.noise_scheduler.config.get("use_dynamic_shifting"):
            raise UserError(f"'{model}' shifts its timesteps by image size (use_dynamic_shifting), which DICE's training "
                            "draw does not model. Use a model with a fixed shift (SD3 and SD3.5 have one)")

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument(
            "--flow_sigmas", choices=FLOW_SIGMA_CHOICES, default=None,
            help="training noise levels: 'logit_normal' = the distribution the model was trained with (SD3: "
            "logit-normal at the model's shift), 'uniform' = uniform steps at the model's shift (what the Euler "
            f"sampler visits). Unset: the preset's, else '{FlowMatchingAdapter.option_defaults['flow_sigmas']}'",
        )

    # ---- the diffusion process -------------------------------------------------------------
    @property
    def shift(self) -> float:
        """The model's timestep shift (its scheduler config; SD3 and SD3.5: 3.0)."""
        return float(self.noise_scheduler.config.shift)

    def shifted(self, sigma: torch.Tensor) -> torch.Tensor:
        """The shift FlowMatchEulerDiscreteScheduler applies to its sigmas."""
        return self.shift * sigma / (1 + (self.shift - 1) * sigma)

    def draw_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` timesteps 1000 sigma (float), sigma drawn as ``flow_sigmas`` says (module docstring)."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        scheme = "logit_normal" if self.options["flow_sigmas"] == "logit_normal" else "uniform"
        u = compute_density_for_timestep_sampling(scheme, count, logit_mean=0.0, logit_std=1.0, generator=generator)
        return self.shifted(u) * self.num_train_timesteps

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``(1 - sigma) x_0 + sigma eps`` at sigma = timestep / 1000, as the scheduler's ``scale_noise`` computes it."""
        sigma = (timesteps.float() / self.num_train_timesteps).to(latents.dtype)
        sigma = sigma.view(-1, *[1] * (latents.ndim - 1))
        return sigma * noise + (1.0 - sigma) * latents

    @classmethod
    def check_scheduler(cls, class_name: str) -> None:
        import diffusers

        scheduler = getattr(diffusers, class_name)
        if class_name.startswith("FlowMatch") or "use_flow_sigmas" in inspect.signature(scheduler.__init__).parameters:
            return
        raise UserError(f"--scheduler {class_name} samples noise-prediction models, and {cls.family} is a flow-matching "
                        "(velocity) model. Use flow_euler (its own sampler, the default), dpmsolver++ or "
                        "UniPCMultistepScheduler (both with flow sigmas at the model's shift)")

    def scheduler_overrides(self, class_name: str) -> dict:
        """A multistep solver (DPM-Solver++, UniPC) samples a flow model with its flow sigmas at the model's shift
        and the velocity as its prediction (diffusers' flow support, as SANA ships it)."""
        self.check_scheduler(class_name)
        if class_name.startswith("FlowMatch"):
            return {}
        return {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": self.shift}
