"""Scaling: the training-free baseline of Table 1, the prompt embedding multiplied by s at sampling.

Which tokens: the ones DICE's sharpener may rewrite. For the CLIP families (SD1.5, SDXL) every token
but the first, which is CLIP's begin-of-text token: the same vector for every prompt, carrying no
prompt information, and far larger in norm than the others (scaling it moves every cross-attention
logit instead of sharpening the prompt). For PixArt-α (T5 has no such token) every token; its padding
is masked out either way. SDXL's pooled embedding is not a token sequence and is left as it is, as
DICE leaves it. The paper's s: SD1.5 1.2, DreamShaper 1.3, SDXL 1.5, PixArt-α 1.2
(:data:`dice.paper.MODELS`).
"""
from __future__ import annotations

from ..adapters.base import Adapter, Conditioning
from .dice import keeps_first_token


def scale_prompt_embedding(adapter: Adapter, cond: Conditioning, scale: float) -> Conditioning:
    embeds = cond.embeds * scale
    if keeps_first_token(adapter):
        embeds[:, 0] = cond.embeds[:, 0]
    return cond.replace(embeds=embeds)
