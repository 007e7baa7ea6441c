"""GD: guidance distillation, stage one of Meng et al. 2023, as the DICE authors re-implemented it.

The whole denoiser is fine-tuned with the guidance scale ω as an extra input, against the CFG teacher
(the frozen base denoiser) at that ω; ω is drawn per sample from --guidance_scale_range (the authors'
[2, 14), continuous: their student saw ω cast to an integer while the teacher used the float).

The ω-input, "processed in the way similar to the timestep" (paper A.3): ``emb(ω − 1)``, the
sinusoidal embedding the stock SD / SDXL pipelines compute (``get_guidance_scale_embedding``) for a UNet
with ``time_cond_proj_dim`` (diffusers' own LCM / guidance-distillation input), which adds a bias-free
linear map of it to the timestep features. So a trained GD UNet is a stock ``UNet2DConditionModel``
that the stock pipeline samples with ``guidance_scale=ω`` at one evaluation per step. We zero that map
at the start, so the student starts as exactly the unguided base model. PixArt's and SD3's transformers have no
such input: :class:`GuidanceEmbedded` adds the same map at the same place with a forward hook.
"""
from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UserError, one_line
from ..paper import GUIDANCE_SCALE
from ..runtime import to_device
from .base import Method, count_parameters, pipeline_with, scale_tensor, write_config

# Width of the sinusoidal ω-embedding: LCM distillation's default --unet_time_cond_proj_dim.
GUIDANCE_EMBEDDING_DIM = 256
GUIDANCE_EMBEDDING_FILE = "guidance_embedding.safetensors"
# Denoisers without a guidance-scale input (no time_cond_proj_dim) -> the submodule whose output is the
# timestep's sinusoidal features, where GD adds its ω-embedding.
TIMESTEP_PROJECTIONS = {"PixArtTransformer2DModel": "adaln_single.emb.time_proj", "SD3Transformer2DModel": "time_text_embed.time_proj"}


def timestep_projection_path(denoiser: nn.Module) -> str | None:
    """Where GD adds the ω-embedding to a denoiser without a guidance-scale input; None for one with it."""
    return TIMESTEP_PROJECTIONS.get(type(denoiser).__name__)


def guidance_embedding(omega: torch.Tensor, dim: int = GUIDANCE_EMBEDDING_DIM) -> torch.Tensor:
    """``emb(ω − 1)`` [B, dim] in fp32: what the stock SD / SDXL pipelines feed a UNet with
    ``time_cond_proj_dim`` when called with ``guidance_scale=ω``."""
    from diffusers import StableDiffusionPipeline

    # The pipelines' own function; it is a method but does not use its instance.
    return StableDiffusionPipeline.get_guidance_scale_embedding(None, omega.detach().float().cpu() - 1, embedding_dim=dim)


class GuidanceEmbedded(nn.Module):
    """A denoiser without a guidance-scale input (PixArt's transformer) with GD's ω-input added: a
    bias-free linear map of ``emb(ω − 1)`` added to the timestep's sinusoidal features (the output of
    ``projection_path``), as ``time_cond_proj_dim`` does in a UNet. A forward hook does it; the
    denoiser stays a stock diffusers model that ``from_pretrained`` reads."""

    def __init__(self, denoiser: nn.Module, projection_path: str, embedding_dim: int = GUIDANCE_EMBEDDING_DIM):
        super().__init__()
        self.denoiser = denoiser
        self.projection_path = projection_path
        site = denoiser.get_submodule(projection_path)
        self.cond_proj = nn.Linear(embedding_dim, site.num_channels, bias=False)
        nn.init.zeros_(self.cond_proj.weight)
        self._condition: torch.Tensor | None = None
        site.register_forward_hook(self._add_guidance)

    def _add_guidance(self, module, inputs, output):
        if self._condition is None:
            raise RuntimeError("a GD denoiser was called without ω: call it through GuidanceEmbedded or inside conditioned()")
        condition = self._condition.to(output.device, self.cond_proj.weight.dtype)
        return output + self.cond_proj(condition).to(output.dtype)

    @contextlib.contextmanager
    def conditioned(self, timestep_cond: torch.Tensor):
        """Calls of the bare denoiser (e.g. by the stock pipeline) inside see this ω-embedding [B or 1, dim]."""
        self._condition = timestep_cond
        try:
            yield
        finally:
            self._condition = None

    def forward(self, hidden_states, timestep_cond: torch.Tensor, **kwargs):
        with self.conditioned(timestep_cond):
            return self.denoiser(hidden_states, **kwargs)


def _has_guidance_input(denoiser: nn.Module) -> bool:
    return "time_cond_proj_dim" in denoiser.config


OMEGA_STUDENT_INPUTS = ("float", "integer")


class GDMethod(Method):
    name = "gd"
    title = "GD"

    def __init__(self, guidance_scale=GUIDANCE_SCALE, guidance_scale_range=None, omega_draw=None,
                 omega_student_input: str | None = None):
        """``omega_student_input``: the ω the student is told in training, "float" (the teacher's ω, default) or
        "integer" (truncated: the authors' runs handed the student ``ω.long()`` while the teacher used the float)."""
        super().__init__(guidance_scale, guidance_scale_range, omega_draw)
        if omega_student_input not in OMEGA_STUDENT_INPUTS + (None,):
            raise ValueError(f"omega_student_input must be one of {OMEGA_STUDENT_INPUTS}, not {omega_student_input!r}")
        self.omega_student_input = omega_student_input or "float"

    def build(self, adapter):
        base = adapter.denoiser
        if _has_guidance_input(base):
            if base.config.time_cond_proj_dim is not None:
                raise UserError(f"{adapter.model} already takes a guidance-scale embedding (time_cond_proj_dim="
                                f"{base.config.time_cond_proj_dim}, e.g. an LCM). Distil guidance from a model without one")
            with torch.device(adapter.device):
                student = type(base).from_config(base.config, time_cond_proj_dim=GUIDANCE_EMBEDDING_DIM)
            missing, unexpected = student.load_state_dict(base.state_dict(), strict=False)
            if missing != ["time_embedding.cond_proj.weight"] or unexpected:
                raise RuntimeError(f"unexpected GD student layout: missing {missing}, unexpected {unexpected}")
            nn.init.zeros_(student.time_embedding.cond_proj.weight)
        else:
            student = GuidanceEmbedded(copy.deepcopy(base), timestep_projection_path(base)).to(adapter.device)
        return student.float().train().requires_grad_(True)

    def student_noise(self, module, adapter, x_t, t, cond, uncond, guidance, sizes):
        omega = scale_tensor(guidance, len(x_t))
        if self.omega_student_input == "integer":
            omega = omega.trunc()
        emb = to_device(guidance_embedding(omega), x_t.device)
        return adapter.predict_noise(x_t, t, cond, sizes, denoiser=module, timestep_cond=emb)

    def enable_gradient_checkpointing(self, adapter, module):
        _denoiser_of(module).enable_gradient_checkpointing()  # the teacher runs without gradients

    def method_options(self, adapter, module):
        options = super().method_options(adapter, module)
        options.update(guidance_embedding_dim=GUIDANCE_EMBEDDING_DIM, denoiser_component=adapter.denoiser_component,
                       guidance_embedding_parameters=count_parameters(_guidance_projection(module)))
        if isinstance(module, GuidanceEmbedded):
            options["timestep_projection_path"] = module.projection_path
        return options

    def save(self, folder, module, config):
        folder = Path(folder)
        _denoiser_of(module).save_pretrained(folder / config.method_options["denoiser_component"], safe_serialization=True)
        if isinstance(module, GuidanceEmbedded):
            save_file({"weight": module.cond_proj.weight.detach().contiguous().cpu()}, str(folder / GUIDANCE_EMBEDDING_FILE))
        write_config(folder, config)

    def load(self, folder, config, device="cpu", dtype=None):
        options = config.method_options
        denoiser = load_model_folder(Path(folder) / options["denoiser_component"], dtype)
        module = denoiser
        if options.get("timestep_projection_path"):
            module = GuidanceEmbedded(denoiser, options["timestep_projection_path"], options["guidance_embedding_dim"])
            module.cond_proj.load_state_dict(load_file(str(Path(folder) / GUIDANCE_EMBEDDING_FILE)))
        return module.to(device, dtype).eval().requires_grad_(False)

    @contextlib.contextmanager
    def pipeline(self, adapter, module, strength, resolution):
        pipe = pipeline_with(adapter.pipe, **{adapter.denoiser_component: _denoiser_of(module)})
        if isinstance(module, GuidanceEmbedded):
            # The stock pipeline runs unguided (guidance_scale 1: no CFG); ω comes through the hook.
            embedding = guidance_embedding(torch.tensor([float(strength)]), module.cond_proj.in_features)
            with module.conditioned(embedding):
                yield pipe, {"guidance_scale": 1.0}
        else:
            # A UNet with time_cond_proj_dim: the stock pipeline turns CFG off and embeds guidance_scale − 1.
            yield pipe, {"guidance_scale": float(strength)}


def _denoiser_of(module: nn.Module) -> nn.Module:
    return module.denoiser if isinstance(module, GuidanceEmbedded) else module


def _guidance_projection(module: nn.Module) -> nn.Module:
    return module.cond_proj if isinstance(module, GuidanceEmbedded) else module.time_embedding.cond_proj


def load_model_folder(path: Path, dtype: torch.dtype | None):
    """A diffusers model folder (config.json + safetensors) as its own class."""
    import diffusers

    try:
        class_name = json.loads((path / "config.json").read_text())["_class_name"]
        return getattr(diffusers, class_name).from_pretrained(str(path), dtype=dtype)
    except Exception as err:  # noqa: BLE001 - a missing, truncated or foreign folder: one line
        raise UserError(f"'{path}' is not a readable diffusers model folder ({one_line(err)}). "
                        "Restore the checkpoint folder, or pick another checkpoint of the run") from err
