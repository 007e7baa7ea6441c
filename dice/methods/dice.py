"""DICE (the paper): a ~2M-parameter sharpener rewrites the prompt embedding; the denoiser stays frozen.

The rule (paper section 3): ``c_dice = c + alpha * f(c, u)``, with the first token restored where it is the
text encoder's begin-of-text token (CLIP; the same vector for every prompt), and, for a zero-padded encoding (SD3's
CLIP columns padded to T5's width, an absent T5's zero tokens), the padding kept zero; SD3's pooled vector is sharpened
as one more token (:func:`sharpening_rule`, :func:`sharpen_embeddings`). For a text encoder with an
attention mask (PixArt-α's T5) the family records three choices that this file applies: whether the first
token is restored, which tokens of u the sharpener attends to, and which mask the sharpened prompt gets.

The student is the frozen denoiser on ``c_dice`` (alpha 1); the teacher is CFG at w (5). Saved as
``sharpener.safetensors`` + ``sharpener.json``; sampled by handing the stock pipeline the sharpened
embedding (strength alpha), with or without CFG on top (paper A.5).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.base import Adapter, Conditioning
from ..checkpoint import CONFIG_NAME, SharpenerConfig, load_sharpener, save_sharpener
from ..paper import GUIDANCE_SCALE, SHARPENER_HEADS, SHARPENER_INNER_DIM
from ..sharpener import Sharpener
from .base import Method


def apply_sharpener(
    sharpener: nn.Module, c: torch.Tensor, u: torch.Tensor, alpha: float = 1.0,
    u_mask: torch.Tensor | None = None, keep_first_token: bool = True, keep_zeros: bool = False,
) -> torch.Tensor:
    """``c_dice = c + alpha * f(c, u)``; the first token (BOS) is restored unless told otherwise, and with
    ``keep_zeros`` every entry that is exactly zero in ``c`` stays zero (the padding of a zero-padded encoding,
    SD3). ``c`` and ``u`` may hold any number of tokens (the sharpener acts per token, attending over u)."""
    residual = sharpener(c, u, u_mask) if u_mask is not None else sharpener(c, u)
    if keep_zeros:
        residual = residual.to(c.dtype).masked_fill(c == 0, 0)
    sharpened = c + alpha * residual.to(c.dtype)
    if keep_first_token:
        sharpened = torch.cat([c[:, :1], sharpened[:, 1:]], dim=1)
    return sharpened


def keeps_first_token(adapter: Adapter | type[Adapter], options: dict | None = None) -> bool:
    """Whether the first token is restored after sharpening (and left unscaled by Scaling): CLIP's BOS
    always; a family without one (PixArt's T5) only when its recorded ``keep_first_token`` says so.
    An adapter class with the ``family_options`` of a checkpoint answers the same without a pipeline."""
    options = adapter.options if options is None else options
    return adapter.first_token_is_bos or bool(options.get("keep_first_token"))


def sharpening_rule(adapter: Adapter | type[Adapter], options: dict | None = None) -> dict:
    """The family's rule as :func:`sharpen_embeddings`'s keyword arguments (first token, zero padding, pooled vector),
    for a front end that holds embeddings but no pipeline (a ComfyUI node):
    ``sharpening_rule(adapter_class(config.family), config.family_options)``."""
    options = adapter.options if options is None else options
    return {"keep_first_token": keeps_first_token(adapter, options), "keep_zeros": adapter.zero_padded,
            "sharpen_pooled": options.get("pooled_embedding") == "sharpen"}


def sharpen_embeddings(
    sharpener: nn.Module, c: torch.Tensor, u: torch.Tensor, alpha: float = 1.0, *, c_pooled: torch.Tensor | None = None,
    u_pooled: torch.Tensor | None = None, sharpen_pooled: bool = False, u_mask: torch.Tensor | None = None, **rule,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(sharpened ``c``, pooled vector) by the family's rule (:func:`sharpening_rule`). With ``sharpen_pooled`` (SD3's
    default) the pooled vector joins the sequence as one more token, zero-padded to the token width, for c and u
    alike: the same sharpener rewrites it, and its padding stays zero. Otherwise the pooled vector is returned as is."""
    if not sharpen_pooled or c_pooled is None:
        return apply_sharpener(sharpener, c, u, alpha, u_mask=u_mask, **rule), c_pooled
    width = c_pooled.shape[-1]
    if width > c.shape[-1]:
        raise ValueError(f"a {width}-wide pooled vector cannot join {c.shape[-1]}-wide tokens")
    as_token = lambda pooled, like: F.pad(pooled.to(like.dtype), (0, like.shape[-1] - width))[:, None]  # noqa: E731
    out = apply_sharpener(sharpener, torch.cat([c, as_token(c_pooled, c)], dim=1),
                          torch.cat([u, as_token(u_pooled, u)], dim=1), alpha, u_mask=u_mask, **rule)
    return out[:, :-1], out[:, -1, :width].to(c_pooled.dtype)


def context_mask(adapter: Adapter, uncond: Conditioning) -> torch.Tensor | None:
    """The tokens of u the sharpener attends to (None: all), as the family recorded (PixArt's context mask)."""
    return uncond.mask if adapter.options.get("pixart_context_mask") == "prompt" else None


def sharpen(adapter: Adapter, sharpener: nn.Module, cond: Conditioning, uncond: Conditioning, alpha: float = 1.0) -> Conditioning:
    """The prompt's conditioning with its embedding sharpened by ``f(c, u)`` at strength ``alpha``."""
    embeds, pooled = sharpen_embeddings(sharpener, cond.embeds, uncond.embeds, alpha, c_pooled=cond.pooled,
                                        u_pooled=uncond.pooled, u_mask=context_mask(adapter, uncond), **sharpening_rule(adapter))
    if adapter.options.get("pixart_mask") == "full":  # every token of the sharpened prompt visible
        return cond.replace(embeds=embeds, pooled=pooled, mask=torch.ones_like(cond.mask))
    return cond.replace(embeds=embeds, pooled=pooled)


def one_row_if_all_equal(uncond: Conditioning) -> Conditioning:
    """``uncond``'s first row alone where every row is the same (u the empty prompt for every sample), else ``uncond``."""
    fields = [x for x in (uncond.embeds, uncond.pooled, uncond.mask) if x is not None]
    return uncond.select(slice(0, 1)) if all(torch.equal(x, x[:1].expand_as(x)) for x in fields) else uncond


def sharpen_for_pipeline(
    adapter: Adapter, cond: Conditioning, uncond: Conditioning, sharpener: nn.Module | None = None, alpha: float = 1.0,
) -> tuple[Conditioning, Conditioning]:
    """``cond`` sharpened (when a sharpener is given), then both sides in the pipeline's device and dtype.

    The sharpener follows the embeddings' device but keeps its own dtype (fp32 as trained), whatever
    dtype the pipeline runs in.
    """
    if sharpener is not None:
        dtype = getattr(next(sharpener.parameters(), None), "dtype", torch.float32)
        sharpener.to(cond.embeds.device)
        cond = sharpen(adapter, sharpener, cond.to(dtype=dtype), uncond.to(dtype=dtype), alpha)
    return cond.to(adapter.device, adapter.dtype), uncond.to(adapter.device, adapter.dtype)


class DiceMethod(Method):
    name = "dice"
    title = "DICE"
    config_name = CONFIG_NAME
    combines_with_cfg = True
    conditioned_on_scale = False

    def __init__(self, guidance_scale: float = GUIDANCE_SCALE, inner_dim: int = SHARPENER_INNER_DIM,
                 num_heads: int = SHARPENER_HEADS, project_u_once: bool = False):
        """``project_u_once`` (training's --project_u_once): where every sample of a batch has the same u, the
        sharpener projects it once for the batch; the same function, but other float rounding in the gradients."""
        super().__init__(guidance_scale)  # one w for every sample: the sharpener is distilled at one scale
        self.inner_dim, self.num_heads, self.project_u_once = inner_dim, num_heads, project_u_once

    def build(self, adapter):
        return Sharpener(adapter.text_dim, self.inner_dim, self.num_heads).to(adapter.device)

    def student_noise(self, module, adapter, x_t, t, cond, uncond, guidance, sizes):
        if self.project_u_once:
            uncond = one_row_if_all_equal(uncond)
        sharpened = sharpen(adapter, module, cond.to(dtype=torch.float32), uncond.to(dtype=torch.float32))
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
        return sharpen_for_pipeline(adapter, cond, uncond, module, strength)
