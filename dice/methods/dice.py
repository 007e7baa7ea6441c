"""DICE (the paper): a ~2M-parameter sharpener rewrites the prompt embedding; the denoiser stays frozen.

The student is the frozen denoiser on the sharpened embedding ``c + f(c, u)``; the teacher is CFG at
``--guidance_scale`` (5). Saved as ``sharpener.safetensors`` + ``sharpener.json``; sampled by handing the
stock pipeline the sharpened embedding (strength ``alpha``), with or without CFG on top.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import CONFIG_NAME, SharpenerConfig, load_sharpener, save_sharpener
from ..sharpener import Sharpener
from .base import Method


class DiceMethod(Method):
    name = "dice"
    title = "DICE"
    config_name = CONFIG_NAME
    combines_with_cfg = True
    conditioned_on_scale = False

    def build(self, adapter, args):
        return Sharpener(adapter.text_dim, args.sharpener_inner_dim, args.sharpener_heads).to(adapter.device)

    def training_guidance(self, args, batch_size, generator):
        return args.guidance_scale  # one w for every sample: the sharpener is distilled at one scale

    def student_noise(self, module, adapter, x_t, t, cond, uncond, guidance, sizes):
        sharpened = adapter.sharpen(module, cond.to(dtype=torch.float32), uncond.to(dtype=torch.float32))
        return adapter.predict_noise(x_t, t, sharpened.to(dtype=adapter.dtype), sizes)

    def enable_gradient_checkpointing(self, adapter, module):
        adapter.denoiser.enable_gradient_checkpointing()  # the gradient flows back through the frozen denoiser

    def method_options(self, adapter, module):
        return {}  # the sharpener's widths are fields of SharpenerConfig

    def make_config(self, module, adapter, **common):
        return SharpenerConfig(inner_dim=module.inner_dim, num_heads=module.num_heads, **common)

    def save(self, folder, module, config):
        save_sharpener(folder, module, config)

    def load(self, folder: Path, config, device="cpu", dtype=None):
        return load_sharpener(folder, device=device)[0]  # fp32 as trained, whatever the pipeline's dtype

    def condition(self, adapter, module, cond, uncond, strength):
        from ..sampling import sharpen_for_pipeline

        return sharpen_for_pipeline(adapter, cond, uncond, module, strength)
