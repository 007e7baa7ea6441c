"""PixArt-Sigma (``PixArtSigmaPipeline``): PixArt-alpha's transformer class and T5-XXL encoder, 300 tokens, the SDXL VAE.

Everything DICE does is PixArt-alpha's (dice/adapters/pixart.py: the T5 mask, first-token and context choices, the
text embedding cache), at 300 T5 tokens (the stock pipeline's ``max_sequence_length``). Resolution binning, on by
default in the stock pipeline, is turned off in training and sampling alike: both run square at the model's size,
where binning maps every standard size (512, 1024, 2048) to itself.

The 1024 and 2K checkpoints are whole diffusers pipelines. The 512 checkpoint ships only its transformer, which
``--pretrained_transformer_model_name_or_path`` puts into the 1024 pipeline (as diffusers' own PixArt-Sigma tests load
it); it is recorded in the checkpoint, so sampling uses the transformer the sharpener was trained with.
"""
from __future__ import annotations

import os

import torch

from .base import ModelLoadError
from .pixart import PixArtAdapter

PIXART_SIGMA = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
# By the short name sample.py --model_name and launch.sh use: (base pipeline, replacement transformer or None, size).
MODELS: dict[str, tuple[str, str | None, int]] = {
    "pixart-sigma": (PIXART_SIGMA, None, 1024),
    "pixart-sigma-512": (PIXART_SIGMA, "PixArt-alpha/PixArt-Sigma-XL-2-512-MS", 512),
}
TRANSFORMER_OPTION = "pretrained_transformer_model_name_or_path"


class PixArtSigmaAdapter(PixArtAdapter):
    family = "pixart-sigma"
    pipeline_class_name = "PixArtSigmaPipeline"
    max_sequence_length = 300
    option_defaults = {**PixArtAdapter.option_defaults, TRANSFORMER_OPTION: None}

    @classmethod
    def add_arguments(cls, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--pretrained_transformer_model_name_or_path", default=None,
            help="replacement transformer (hub id or folder, its transformer/ subfolder or root), e.g. "
            "PixArt-alpha/PixArt-Sigma-XL-2-512-MS in the 1024 pipeline; recorded in the checkpoint",
        )

    @classmethod
    def from_pretrained(cls, model, *, torch_dtype=None, components=None, **kwargs) -> "PixArtSigmaAdapter":
        transformer = kwargs.get(TRANSFORMER_OPTION)
        if transformer:
            components = {**(components or {}), "transformer": load_transformer(transformer, torch_dtype)}
        return super().from_pretrained(model, torch_dtype=torch_dtype, components=components, **kwargs)


def load_transformer(name_or_path: str, torch_dtype: torch.dtype | None = None):
    """A PixArtTransformer2DModel from a hub id or folder holding it in ``transformer/`` (a checkpoint repo) or at its root."""
    from diffusers import PixArtTransformer2DModel

    local = os.path.isdir(name_or_path)
    subfolder = None if local and os.path.isfile(os.path.join(name_or_path, "config.json")) else "transformer"
    try:
        return PixArtTransformer2DModel.from_pretrained(name_or_path, subfolder=subfolder, dtype=torch_dtype)
    except Exception as err:  # noqa: BLE001 - one clear line; the cause is chained
        raise ModelLoadError(
            f"could not load the transformer '{name_or_path}' (--pretrained_transformer_model_name_or_path): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Pass a folder holding a "
            "PixArtTransformer2DModel (config.json + weights, or a transformer/ subfolder), or a hub id available offline."
        ) from err
