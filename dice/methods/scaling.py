"""Scaling: the training-free baseline of Table 1, the prompt embedding multiplied by s at sampling.

Which tokens: the ones DICE's sharpener may rewrite. For the CLIP families (SD1.5, SDXL) every token
but the first, which is CLIP's begin-of-text token: the same vector for every prompt, carrying no
prompt information, and far larger in norm than the others (scaling it moves every cross-attention
logit instead of sharpening the prompt). For PixArt-α (T5 has no such token) every token; its padding
is masked out either way. A pooled vector is scaled where DICE rewrites it: SD3's (``pooled_embedding`` "sharpen",
its default), not SDXL's, which DICE leaves as it is. On the flow shapes world (SD3 architecture) scaling the tokens
alone lowered validation accuracy at every s > 1, while tokens and pooled vector together raised it
(docs/shapes_world.md, Scaling on the flow world). The paper's s: SD1.5 1.2, DreamShaper 1.3, SDXL 1.5, PixArt-α 1.2
(:data:`dice.paper.MODELS`); the flow shapes world's was chosen on validation prompts (:data:`dice.presets.EMBEDDING_SCALES`).
"""
from __future__ import annotations

from ..adapters.base import Adapter, Conditioning
from .dice import keeps_first_token, sharpening_rule


def scale_prompt_embedding(adapter: Adapter, cond: Conditioning, scale: float) -> Conditioning:
    embeds = cond.embeds * scale
    if keeps_first_token(adapter):
        embeds[:, 0] = cond.embeds[:, 0]
    pooled = cond.pooled
    if pooled is not None and sharpening_rule(adapter)["sharpen_pooled"]:
        pooled = pooled * scale
    return cond.replace(embeds=embeds, pooled=pooled)
