"""Stable Diffusion XL: two CLIP encoders, 77 x (768 + 1280) = 77 x 2048, plus pooled text and size ids.

Only the concatenated penultimate hidden states are sharpened. The pooled embedding of the second
encoder and the size/crop ``add_time_ids`` go to the UNet unchanged (the teacher gets
``[u_pooled, c_pooled]`` through the base class's batched call).

Three choices the authors' SDXL runs made and the stock pipeline makes, each recorded in the checkpoint:
the trained methods' u of the empty prompt is the encoded ``""`` (``empty_prompt``), while the CFG and Scaling
baselines use what the stock pipeline feeds (all zeros: ``force_zeros_for_empty_prompt``); training passes the
size micro-conditioning sampling uses, original = target size and crop (0, 0) (``size_conditioning``); and in
fp16 the VAE encodes in fp32 when its config says ``force_upcast`` (the stock SDXL VAE overflows in fp16).
"""
from __future__ import annotations

import os

import torch

from .base import Adapter, Conditioning, ModelLoadError

EMPTY_PROMPT_CHOICES = ("encoded", "zeros")
SIZE_CONDITIONING_CHOICES = ("target", "image")


class SDXLAdapter(Adapter):
    family = "sdxl"
    pipeline_class_name = "StableDiffusionXLPipeline"
    released_text_dim = 2048  # CLIP ViT-L + OpenCLIP ViT-bigG
    option_defaults = {
        # The null embedding u of the empty prompt: "encoded" = the encoders' output for "" (the authors'
        # training code), "zeros" = all-zero sequence and pooled vector (stock SDXL's
        # force_zeros_for_empty_prompt). A non-empty negative prompt is always encoded.
        "empty_prompt": "encoded",
        # Training's size micro-conditioning: "target" = original size = the generated size, crop (0, 0), what
        # sampling passes and the authors trained with; "image" = each training image's own size and crop offset.
        "size_conditioning": "target",
        # A replacement VAE (the authors' runs used the fp16-fixed one). Recorded in the checkpoint, so
        # sample.py and the validation grid decode with the VAE the sharpener was trained with.
        "pretrained_vae_model_name_or_path": None,
    }
    # The stock pipeline adds an invisible watermark to every image when the invisible-watermark package is installed;
    # the authors' environment had none (not in their requirements), so their images carried none.
    output_filters = {"watermark": {"add_watermarker": False}}
    upcasts_fp16_vae = True
    # Negatives are always passed explicitly, so the pipeline never re-derives them (it would zero an
    # empty negative prompt when force_zeros_for_empty_prompt is set, whatever our option says).
    embedding_kwargs = {
        "embeds": ("prompt_embeds", "negative_prompt_embeds"),
        "pooled": ("pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
    }

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument(
            "--empty_prompt", choices=EMPTY_PROMPT_CHOICES, default=cls.option_defaults["empty_prompt"],
            help="null embedding u for the empty prompt of the trained methods: 'encoded' = encode \"\" (authors' code), "
            "'zeros' = stock SDXL's force_zeros_for_empty_prompt. Recorded in the checkpoint and used by the teacher, "
            "the student and DICE sampling; the CFG / Scaling baselines always use the stock pipeline's u",
        )
        parser.add_argument(
            "--size_conditioning", choices=SIZE_CONDITIONING_CHOICES, default=cls.option_defaults["size_conditioning"],
            help="size micro-conditioning (time ids) in training: 'target' = original size = generated size, crop (0, 0), "
            "as sampling passes and the authors trained; 'image' = each training image's own size and crop offset",
        )
        parser.add_argument(
            "--pretrained_vae_model_name_or_path", default=None,
            help="replacement VAE (hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix as in the authors' "
            "runs; unset: the base model's own VAE. Recorded in the checkpoint; sample.py uses it by default",
        )

    @classmethod
    def from_pretrained(cls, model, *, torch_dtype=None, components=None, **kwargs) -> "SDXLAdapter":
        vae = kwargs.get("pretrained_vae_model_name_or_path")
        if vae:
            components = {**(components or {}), "vae": load_vae(vae, torch_dtype)}
        return super().from_pretrained(model, torch_dtype=torch_dtype, components=components, **kwargs)

    @classmethod
    def output_filters_of(cls, index):
        from diffusers.utils import is_invisible_watermark_available

        return ["watermark"] if is_invisible_watermark_available() else []

    def __init__(self, pipe, model, options=None):
        super().__init__(pipe, model, options)
        for name, choices in (("empty_prompt", EMPTY_PROMPT_CHOICES), ("size_conditioning", SIZE_CONDITIONING_CHOICES)):
            if self.options[name] not in choices:
                raise ValueError(f"{name} must be one of {choices}, not {self.options[name]!r}")

    # ---- text side -------------------------------------------------------------------------
    @property
    def text_dim(self) -> int:
        # Both encoders' widths side by side; the UNet's cross-attention width says it without the encoders.
        return self.pipe.unet.config.cross_attention_dim

    @property
    def num_tokens(self) -> int:
        return self.pipe.tokenizer_2.model_max_length

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        # The stock encoder: both tokenizers, penultimate hidden states, pooled output of encoder 2.
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            list(prompts), device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False,
        )
        return Conditioning(embeds=embeds, pooled=pooled)

    def encode_negative(self, prompts: list[str]) -> Conditioning:
        """u: encoded, except that with empty_prompt="zeros" an empty prompt is all zeros (pooled too)."""
        return self._negative(prompts, zeros=self.options["empty_prompt"] == "zeros")

    def encode_stock_negative(self, prompts: list[str]) -> Conditioning:
        """The baselines' u, as the stock pipeline makes it with no negative prompt: all zeros when the model's
        ``force_zeros_for_empty_prompt`` is set (SDXL base), whatever the trained methods' ``empty_prompt``."""
        return self._negative(prompts, zeros=self._stock_zeros())

    def null_embedding(self, stock: bool = False) -> str:
        zeros = self._stock_zeros() if stock else self.options["empty_prompt"] == "zeros"
        return "zeros" if zeros else "encoded"

    def _stock_zeros(self) -> bool:
        return bool(self.pipe.config.get("force_zeros_for_empty_prompt", False))

    def _negative(self, prompts: list[str], zeros: bool) -> Conditioning:
        uncond = self.encode_prompts(prompts)
        if zeros:
            empty = torch.tensor([not p.strip() for p in prompts], device=uncond.embeds.device)
            uncond = uncond.replace(
                embeds=uncond.embeds.masked_fill(empty[:, None, None], 0.0),
                pooled=uncond.pooled.masked_fill(empty[:, None], 0.0),
            )
        return uncond

    # ---- denoiser --------------------------------------------------------------------------
    def time_ids(self, x_t: torch.Tensor, sizes: torch.Tensor | None) -> torch.Tensor:
        """SDXL micro-conditioning [B, 6]: original (h, w), crop (top, left), target (h, w).

        What the stock pipeline passes at sampling time (original = target, no crop), also in training unless
        ``size_conditioning`` is "image": then each training image's original size and crop (``sizes``).
        """
        # Filled on the device: a tensor built from Python numbers would be a host-to-GPU copy that waits.
        target = torch.full((x_t.shape[0], 2), x_t.shape[-2] * self.vae_scale_factor, device=x_t.device)
        target[:, 1] = x_t.shape[-1] * self.vae_scale_factor
        if sizes is None or self.options["size_conditioning"] == "target":
            original_and_crop = torch.cat([target, torch.zeros_like(target)], dim=1)
        else:
            original_and_crop = sizes.to(x_t.device)[:, :4]
        return torch.cat([original_and_crop, target], dim=1)

    def denoiser_inputs(self, x_t, cond, sizes=None):
        added = {"text_embeds": cond.pooled.to(self.dtype), "time_ids": self.time_ids(x_t, sizes).to(self.dtype)}
        return {"encoder_hidden_states": cond.embeds.to(self.dtype), "added_cond_kwargs": added}


def load_vae(name_or_path: str, torch_dtype: torch.dtype | None = None):
    """An AutoencoderKL from a hub id or folder holding it at its root or in ``vae/``."""
    from diffusers import AutoencoderKL

    subfolder = "vae" if os.path.isdir(os.path.join(name_or_path, "vae")) else None
    try:
        return AutoencoderKL.from_pretrained(name_or_path, subfolder=subfolder, dtype=torch_dtype)
    except Exception as err:  # noqa: BLE001 - one clear line; the cause is chained
        raise ModelLoadError(
            f"could not load the VAE '{name_or_path}' (--pretrained_vae_model_name_or_path): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Pass a folder holding an "
            "AutoencoderKL (config.json + weights), or a hub id available offline."
        ) from err
