"""Trainable parameters and NFE of DICE, GD and PnP on the paper's real architectures, and what GD needs on a GPU.

    python benchmarks/method_sizes.py          # SD1.5, SDXL, PixArt-α: counts, NFE for 20 steps, GD memory (~1 min CPU)

The denoisers are built from their configs (common.py) on PyTorch's ``meta`` device: shapes without
storage, so nothing is allocated or downloaded. The trainable modules come from the methods' own
``build`` (dice.methods), the NFE from their ``evaluations_per_step``: the figures are what the code
trains and reports, not hand arithmetic.

GD memory at the paper's per-GPU batch (SD1.5 16 at 512 px; SDXL 8 at 1024 px, the authors' script) is
**computed, not measured** (no GPU here): the student's fp32 weights, gradients and AdamW moments (16
bytes per parameter), the frozen teacher copy and text encoder(s) and VAE in bf16 (2 bytes), and the
activations the student's backward pass keeps: the tensors autograd saves in one forward pass of the
student, counted by a saved-tensor hook on the meta device, with attention saving what PyTorch's
flash / memory-efficient kernels save (q, k, v, output, log-sum-exp: no attention matrix). Activations
are counted at bf16; autocast runs group/layer norms in fp32, so the real figure is somewhat higher, and
allocator fragmentation and workspaces come on top: read the totals as estimates (±20%).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PIXART_T5_CONFIG,
    PIXART_TRANSFORMER_CONFIG,
    RESULTS_DIR,
    SD15_TEXT_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    SDXL_TEXT_2_CONFIG,
    SDXL_UNET_CONFIG,
    SDXL_VAE_CONFIG,
)

from dice.methods import method_class  # noqa: E402
from dice.methods.base import count_parameters  # noqa: E402
from dice.sharpener import Sharpener  # noqa: E402

GiB = 2**30
STEPS = 20
# Per family: the paper's text width (sharpener), per-GPU batch and resolution of the GD runs (authors' scripts).
SETTINGS = {
    "sd15": dict(text_dim=768, batch=16, resolution=512),
    "sdxl": dict(text_dim=2048, batch=8, resolution=1024),
    "pixart": dict(text_dim=4096, batch=16, resolution=512),
}
PAPER = {  # Table 1: GD params, PnP params, PnP NFE, DICE params
    "sd15": ("859M", "361M", "≈28", "2M"), "sdxl": ("2.6B", "1.3B", "≈30", "3M"), "pixart": ("611M", "295M", "≈30", "5M"),
}


def meta_denoiser(family: str):
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

    with torch.device("meta"):
        if family == "pixart":
            return PixArtTransformer2DModel(**PIXART_TRANSFORMER_CONFIG, use_additional_conditions=False)
        return UNet2DConditionModel(**(SD15_UNET_CONFIG if family == "sd15" else SDXL_UNET_CONFIG))


def frozen_rest_parameters(family: str) -> int:
    """Text encoder(s) and VAE, frozen beside the denoiser during training."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    with torch.device("meta"):
        modules = [AutoencoderKL(**(SDXL_VAE_CONFIG if family == "sdxl" else SD15_VAE_CONFIG))]
        if family == "pixart":
            modules.append(T5EncoderModel(T5Config(**PIXART_T5_CONFIG)))
        else:
            modules.append(CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG)))
        if family == "sdxl":
            modules.append(CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2_CONFIG)))
    return sum(map(count_parameters, modules))


class _FlashAttentionSaves(torch.autograd.Function):
    """Stands in for scaled_dot_product_attention while counting: saves what the flash / memory-efficient
    kernels save for the backward pass (the math path on the meta device would save the attention matrix)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


def saved_activation_bytes(student, family: str, batch: int, resolution: int, checkpointing: bool) -> int:
    """Bytes autograd keeps for the backward pass of one training forward of ``student`` (bf16, meta device)."""
    import torch.nn.functional as F

    from dice.methods.gd import GuidanceEmbedded

    student = student.to(torch.bfloat16)
    denoiser = student.denoiser if isinstance(student, GuidanceEmbedded) else student
    if checkpointing:
        denoiser.enable_gradient_checkpointing()
    size = resolution // 8
    x = torch.zeros(batch, 4, size, size, device="meta", dtype=torch.bfloat16)
    t = torch.zeros(batch, dtype=torch.long, device="meta")
    text = torch.zeros(batch, 120 if family == "pixart" else 77, SETTINGS[family]["text_dim"], device="meta", dtype=torch.bfloat16)
    emb = torch.zeros(batch, 256, device="meta", dtype=torch.bfloat16)
    if family == "pixart":
        kwargs = dict(encoder_hidden_states=text, added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    else:
        kwargs = dict(encoder_hidden_states=text)
        if family == "sdxl":
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, 1280, device="meta", dtype=torch.bfloat16),
                                           "time_ids": torch.zeros(batch, 6, device="meta", dtype=torch.bfloat16)}
    saved: dict[int, int] = {}

    def pack(tensor):
        saved[id(tensor)] = tensor.numel() * tensor.element_size()
        return tensor

    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, *args, **kw: _FlashAttentionSaves.apply(q, k, v)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            student(x, timestep=t, timestep_cond=emb, **kwargs)
    finally:
        F.scaled_dot_product_attention = sdpa
    return sum(saved.values())


def measure(family: str) -> dict:
    from dice.adapters import adapter_class

    settings = SETTINGS[family]
    denoiser = meta_denoiser(family)
    adapter = SimpleNamespace(denoiser=denoiser, device=torch.device("meta"), vae_scale_factor=8, model=family,
                              family=family)
    base = count_parameters(denoiser)
    result = {"base_parameters": base, "dice_parameters": count_parameters(Sharpener(settings["text_dim"]))}
    gd_method = method_class("gd")()
    gd = gd_method.build(adapter)
    result["gd_parameters"] = count_parameters(gd)
    result["gd_guidance_embedding_parameters"] = result["gd_parameters"] - base
    result["gd_nfe"] = STEPS * gd_method.evaluations_per_step(adapter, gd)
    if method_class("pnp").unsupported_reason(adapter_class(family)) is None:
        pnp_method = method_class("pnp")()
        guide = pnp_method.build(adapter)
        result["pnp_parameters"] = count_parameters(guide)
        result["pnp_nfe"] = round(STEPS * pnp_method.evaluations_per_step(adapter, guide), 2)
    if family in ("sd15", "sdxl"):
        rest = frozen_rest_parameters(family)
        states = 16 * result["gd_parameters"]  # fp32 weights + gradients + AdamW's two moments
        frozen = 2 * (base + rest)  # teacher copy + text encoder(s) + VAE, bf16
        memory = {"per_gpu_batch": settings["batch"], "resolution": settings["resolution"],
                  "student_weights_grads_adam_gib": states / GiB, "frozen_teacher_text_vae_bf16_gib": frozen / GiB}
        for checkpointing in (False, True):
            activations = saved_activation_bytes(gd_method.build(adapter), family, settings["batch"],
                                                 settings["resolution"], checkpointing)
            key = "with_checkpointing" if checkpointing else "without_checkpointing"
            memory[f"activations_{key}_gib"] = activations / GiB
            memory[f"total_{key}_gib"] = (states + frozen + activations) / GiB
        result["gd_memory_estimate"] = memory
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS_DIR / "method_sizes.json"))
    args = parser.parse_args(argv)
    results = {family: measure(family) for family in SETTINGS}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("| model | base denoiser | GD params (paper) | PnP params (paper) | PnP NFE, 20 steps (paper) | DICE params (paper) |")
    print("|---|---|---|---|---|---|")
    for family, r in results.items():
        gd, pnp, pnp_nfe, dice = PAPER[family]
        guide = (f"{r['pnp_parameters']:,} ({pnp}) | {r['pnp_nfe']} ({pnp_nfe})" if "pnp_parameters" in r
                 else f"none ({pnp}) | - ({pnp_nfe})")
        print(f"| {family} | {r['base_parameters']:,} | {r['gd_parameters']:,} ({gd}) | {guide} | {r['dice_parameters']:,} ({dice}) |")
    print()
    for family, r in results.items():
        m = r.get("gd_memory_estimate")
        if m:
            print(f"GD {family}, {m['per_gpu_batch']}/GPU at {m['resolution']} px: student states {m['student_weights_grads_adam_gib']:.1f} GiB"
                  f" + frozen {m['frozen_teacher_text_vae_bf16_gib']:.1f} GiB + activations "
                  f"{m['activations_without_checkpointing_gib']:.1f} GiB = {m['total_without_checkpointing_gib']:.1f} GiB; "
                  f"with --gradient_checkpointing {m['total_with_checkpointing_gib']:.1f} GiB")
    print(f"\nWrote {args.out}")


if __name__ == "__main__":
    main()
