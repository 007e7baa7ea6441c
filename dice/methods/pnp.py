"""PnP: the plug-and-play guide network of Hsiao et al. 2024, as the DICE authors re-implemented it.

The guide is diffusers' ``ControlNetModel.from_unet`` of the frozen denoiser: a trainable copy of its
encoder half initialised from it, whose zero-initialised residuals are added to the frozen UNet's skip
connections and mid block (scale 1), so training starts at the unguided base model. The guide sees the
prompt embedding and, as its control image, a constant image equal to ω (the authors' choice: ω in
every pixel, no normalisation), and is trained against the CFG teacher at ω (per sample, over
--guidance_scale_range). Sampling runs the stock ControlNet pipeline: one guide and one UNet evaluation
per step; the NFE column counts the guide by its share of the UNet's parameters (paper Table 1's ≈28).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .base import Method, count_parameters, pipeline_with, scale_tensor, write_config
from .gd import load_model_folder

# The stock diffusers pipeline that runs each family with a ControlNet. diffusers has no PixArt ControlNet
# (only a research example outside the package): no PnP for PixArt-α.
CONTROLNET_PIPELINES = {"sd15": "StableDiffusionControlNetPipeline", "sdxl": "StableDiffusionXLControlNetPipeline"}
# diffusers' ControlNetModel default: four stages, three stride-2 convolutions = SD's VAE factor 8.
CONDITIONING_CHANNELS = (16, 32, 96, 256)
GUIDE_FOLDER = "controlnet"


def conditioning_channels(vae_scale_factor: int) -> tuple[int, ...]:
    """The control-image encoder's widths, one stage per factor 2 of the VAE (SD: the diffusers default),
    so that an image of the sampled size lands on the latent grid (the shapes world's VAE halves: 2 stages)."""
    stages = vae_scale_factor.bit_length()
    if 2 ** (stages - 1) != vae_scale_factor or stages > len(CONDITIONING_CHANNELS):
        raise ValueError(f"no ControlNet conditioning encoder for a VAE factor of {vae_scale_factor}")
    return CONDITIONING_CHANNELS[:stages]


def control_image(omega: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The authors' control input: ω in every pixel of a 3-channel image [B, 3, height, width]."""
    return omega.float().view(-1, 1, 1, 1).expand(len(omega), 3, height, width)


class PnPMethod(Method):
    name = "pnp"
    title = "PnP"

    @classmethod
    def unsupported_reason(cls, adapter_class):
        if adapter_class.family not in CONTROLNET_PIPELINES:
            return ("the PnP guide is a ControlNet made from a UNet (ControlNetModel.from_unet), and this family's denoiser "
                    "is a transformer with no ControlNet of that kind in diffusers (none for PixArt; SD3's SD3ControlNetModel "
                    "feeds a VAE-encoded image into transformer blocks, another guide than the paper's), and none is built "
                    "here. Use --method gd or dice")
        return None

    def build(self, adapter):
        from diffusers import ControlNetModel

        with torch.device(adapter.device):
            guide = ControlNetModel.from_unet(
                adapter.denoiser, conditioning_embedding_out_channels=conditioning_channels(adapter.vae_scale_factor))
        return guide.float().train().requires_grad_(True)

    def student_noise(self, module, adapter, x_t, t, cond, uncond, guidance, sizes):
        factor = adapter.vae_scale_factor
        control = control_image(scale_tensor(guidance, len(x_t), x_t.device), x_t.shape[-2] * factor, x_t.shape[-1] * factor)
        with adapter.autocast():
            down, mid = module(x_t, timestep=t, controlnet_cond=control, **adapter.denoiser_inputs(x_t, cond, sizes),
                               return_dict=False)
        return adapter.predict_noise(
            x_t, t, cond, sizes, down_block_additional_residuals=[r.to(adapter.dtype) for r in down],
            mid_block_additional_residual=mid.to(adapter.dtype),
        )

    def enable_gradient_checkpointing(self, adapter, module):
        module.enable_gradient_checkpointing()
        adapter.denoiser.enable_gradient_checkpointing()  # the residuals' gradient flows back through it

    def method_options(self, adapter, module):
        return {**super().method_options(adapter, module),
                "conditioning_embedding_out_channels": list(module.config.conditioning_embedding_out_channels)}

    def save(self, folder, module, config):
        module.save_pretrained(Path(folder) / GUIDE_FOLDER, safe_serialization=True)
        write_config(folder, config)

    def load(self, folder, config, device="cpu", dtype=None):
        guide = load_model_folder(Path(folder) / GUIDE_FOLDER, dtype)
        return guide.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @contextlib.contextmanager
    def pipeline(self, adapter, module, strength, resolution):
        pipe = pipeline_with(adapter.pipe, CONTROLNET_PIPELINES[adapter.family], controlnet=module)
        yield pipe, {"image": control_image(torch.tensor([float(strength)]), resolution, resolution)}

    def evaluations_per_step(self, adapter, module):
        # One UNet and one guide evaluation per step; the paper's NFE counts the guide by its size
        # (20 x (1 + 361M / 860M) = 28.4 for SD1.5, its "≈28").
        return 1.0 + count_parameters(module) / count_parameters(adapter.denoiser)
