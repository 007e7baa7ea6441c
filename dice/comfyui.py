"""DICE on ComfyUI's CONDITIONING: each family's conditioning there, and sharpening it by the library's rule.

The ComfyUI node (``comfyui_dice/``) is a thin face over this module, as :mod:`dice.addon` is over a diffusers
pipeline. The sharpener and its checkpoint are :func:`dice.checkpoint.load_sharpener`'s; the rule
``c_dice = c + alpha * f(c, u)`` with its per-family choices is :func:`dice.methods.dice.sharpen`, fed with the
family's facts from its adapter class and the options the sharpener recorded in training. What is ComfyUI's own is
here, one entry per family in :data:`COMFYUI_FAMILIES`:

- A CONDITIONING is a list of ``[tensor, dict]`` entries: the text embedding sequence [B, T, D] and its companions
  (``pooled_output``, SDXL's width/height/crop, area, strength, ...). Only the tensor is sharpened (and the pooled
  vector, where the family's rule changes it: no family's does today); every dict entry is carried over.
- CLIP families (SD1.5, SDXL): ComfyUI encodes a prompt longer than 77 tokens as chunks of 77 (each begins with the
  begin-of-text token and is encoded on its own) joined along the sequence, where diffusers truncates to the first.
  Each chunk is sharpened as the library sharpens a diffusers embedding, so the first token of every chunk is
  restored. Every query token of the sharpener attends to all of u (all of u's chunks), and the sharpener has no
  attention between prompt tokens, so a one-chunk prompt gives exactly ``dice.apply``'s embedding.
- PixArt-α: ComfyUI's T5 conditioning holds the prompt's real tokens only, without padding or mask
  (``comfy/text_encoders/pixart_t5.py``); diffusers pads to 120 tokens and hands the mask to the transformer. That
  equals DICE's sharpened prompt under ``pixart_mask="prompt"`` (padding invisible) with ``pixart_context_mask=
  "prompt"`` (the sharpener attends to u's real tokens). The other choices need T5's padding tokens, which a
  ComfyUI conditioning does not carry: such a sharpener is refused with the option to retrain with.

A family is recognised in a conditioning by its text width and pooled width, so that a sharpener of one family
never silently rewrites another's (PixArt-α and SD3 are both 4096 wide). Only torch and the light parts of dice are
imported: ComfyUI's environment has neither diffusers nor accelerate.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .adapters.base import Conditioning
from .adapters.registry import adapter_class
from .checkpoint import SharpenerConfig, SharpenerMismatch, check_sharpener_fits, load_sharpener
from .errors import UserError
from .methods.dice import sharpen
from .sharpener import Sharpener

logger = logging.getLogger("dice")


CLIP_CHUNK = 77  # tokens of one CLIP encoding: ComfyUI encodes a longer prompt in several, joined along the sequence


def clip_chunks(tokens: torch.Tensor) -> list[slice]:
    """ComfyUI's CLIP layout: 77-token chunks, each encoded on its own and led by the begin-of-text token."""
    if tokens.shape[1] % CLIP_CHUNK:
        raise SharpenerMismatch(
            f"the conditioning has {tokens.shape[1]} tokens, not a multiple of ComfyUI's {CLIP_CHUNK}-token CLIP chunks: "
            "it does not come from a text encoder node. Wire CLIPTextEncode's output (or a combination of them)")
    return [slice(start, start + CLIP_CHUNK) for start in range(0, tokens.shape[1], CLIP_CHUNK)]


def one_sequence(tokens: torch.Tensor) -> list[slice]:
    return [slice(0, tokens.shape[1])]


@dataclass(frozen=True)
class ComfyFamily:
    """How a family's CONDITIONING looks in ComfyUI, as far as DICE needs to know."""

    family: str  # dice's family name (dice.adapters)
    title: str
    text_width: int  # the conditioning tensor's last dimension
    pooled_width: int | None  # the width of ``pooled_output``; None: the family has none
    # Consecutive slices covering the tokens, each sharpened as one embedding by the library's rule (its first token is
    # the rule's first token). The sharpener has no attention between prompt tokens: only where a group starts matters.
    token_groups: Callable[[torch.Tensor], list[slice]] = one_sequence
    # Family options a sharpener must have been trained with to fit this conditioning, and why.
    required_options: dict[str, Any] = field(default_factory=dict)
    why_required: str = ""


COMFYUI_FAMILIES: dict[str, ComfyFamily] = {
    # CLIP ViT-L last layer after the final norm; pooled: its projection.
    "sd15": ComfyFamily("sd15", "SD1.5", 768, 768, clip_chunks),
    # CLIP-L and CLIP-G penultimate layers side by side; pooled: CLIP-G's projection.
    "sdxl": ComfyFamily("sdxl", "SDXL", 2048, 1280, clip_chunks),
    # Flan-T5-XXL, the prompt's tokens only.
    "pixart": ComfyFamily(
        "pixart", "PixArt-α", 4096, None,
        required_options={"pixart_mask": "prompt", "pixart_context_mask": "prompt"},
        why_required="ComfyUI's T5 conditioning holds only the prompt's real tokens, without T5's padding tokens",
    ),
}


@dataclass(frozen=True)
class FamilyFacts:
    """What the DICE rule (:func:`dice.methods.dice.sharpen`) reads of an adapter, without its model: the family's
    class-level facts and the options the sharpener was trained with."""

    first_token_is_bos: bool
    zero_padded: bool
    options: dict[str, Any]
    has_pooled: bool  # the family's Conditioning carries a pooled vector (SDXL)
    has_mask: bool  # ... and a token mask (PixArt-α's T5)

    @classmethod
    def of(cls, config: SharpenerConfig) -> "FamilyFacts":
        adapter = adapter_class(config.family)
        recorded = {k: v for k, v in config.family_options.items() if v is not None}
        return cls(adapter.first_token_is_bos, adapter.zero_padded, {**adapter.option_defaults, **recorded},
                   "pooled" in adapter.embedding_kwargs, "mask" in adapter.embedding_kwargs)


@dataclass
class ComfySharpener:
    """A loaded sharpener as the ComfyUI node passes it from the loader to the apply node."""

    module: Sharpener
    config: SharpenerConfig
    source: str  # what the user named: a file, folder, run or Hub id (in messages)

    @property
    def layout(self) -> ComfyFamily:
        return COMFYUI_FAMILIES[self.config.family]

    def describe(self) -> str:
        return f"{self.layout.title} sharpener ({self.config.dim} wide) for {self.config.base_model}"


def load_for_comfyui(spec: str | os.PathLike, root: str | os.PathLike, revision: str | None = None) -> ComfySharpener:
    """A sharpener from what :func:`dice.load_sharpener` accepts, refused at once if ComfyUI cannot use it."""
    module, config = load_sharpener(spec, root, revision=revision)
    layout = COMFYUI_FAMILIES.get(config.family)
    if layout is None:
        raise SharpenerMismatch(
            f"sharpener '{spec}' is for the {config.family} family, which the ComfyUI node does not support yet "
            f"(supported: {', '.join(f.title for f in COMFYUI_FAMILIES.values())}). Use it with dice.apply in diffusers")
    facts = FamilyFacts.of(config)
    for option, needed in layout.required_options.items():
        if facts.options.get(option) != needed:
            raise SharpenerMismatch(
                f"sharpener '{spec}' was trained with {option}={facts.options.get(option)}, but {layout.why_required}: "
                f"it fits only a sharpener trained with --{option} {needed}. Train one with "
                + " ".join(f"--{name} {value}" for name, value in layout.required_options.items()))
    return ComfySharpener(module, config, str(spec))


def recognise(tensor: torch.Tensor, extras: dict[str, Any]) -> list[ComfyFamily]:
    """The families whose ComfyUI conditioning has this text width and pooled width (several where the text encoders
    are the same, e.g. PixArt-α and PixArt-Σ)."""
    pooled = extras.get("pooled_output")
    pooled_width = None if pooled is None else pooled.shape[-1]
    return [f for f in COMFYUI_FAMILIES.values() if f.text_width == tensor.shape[-1] and f.pooled_width == pooled_width]


def _describe(tensor: torch.Tensor, extras: dict[str, Any]) -> str:
    pooled = extras.get("pooled_output")
    return f"{list(tensor.shape)} " + ("without a pooled vector" if pooled is None else f"with a {pooled.shape[-1]}-wide pooled vector")


def _check_fits(loaded: ComfySharpener, tensor: torch.Tensor, extras: dict[str, Any], which: str) -> None:
    """Refuse a conditioning entry that is not of the sharpener's family (one line naming both)."""
    if tensor.ndim != 3:
        raise SharpenerMismatch(f"the {which} conditioning's tensor is {list(tensor.shape)}, not [batch, tokens, width]: "
                                "wire the CONDITIONING of a text encoder (e.g. CLIPTextEncode)")
    found = recognise(tensor, extras)
    if not found:
        raise SharpenerMismatch(
            f"the {which} conditioning ({_describe(tensor, extras)}) is of no family the DICE node knows "
            f"({', '.join(f.title for f in COMFYUI_FAMILIES.values())}), and '{loaded.source}' is a {loaded.describe()}. "
            f"Wire the text encoder of a {loaded.layout.title} model")
    if loaded.layout not in found:
        check_sharpener_fits(loaded.config, loaded.source, family=found[0].family)
    check_sharpener_fits(loaded.config, loaded.source, dim=tensor.shape[-1])


@torch.no_grad()
def sharpen_conditioning(loaded: ComfySharpener, positive: list, u: list, strength: float = 1.0) -> list:
    """``positive`` with every entry's text embedding sharpened against ``u``'s (strength ``strength``, 1 as trained).

    A new CONDITIONING: each ``[tensor, dict]`` entry of ``positive`` with a new tensor and a copy of its dict. ``u``
    is one entry (the first, as ComfyUI's ConditioningAverage reads its ``conditioning_from``).
    """
    if not math.isfinite(strength):
        raise UserError(f"strength must be a finite number, not {strength}")
    if not positive or not u:
        raise UserError("an empty CONDITIONING was given. Wire CLIPTextEncode outputs to positive and u")
    if len(u) > 1:
        logger.warning("DICE: u holds %d conditionings; the first is the sharpener's context", len(u))
    u_tensor, u_extras = u[0][0], u[0][1]
    _check_fits(loaded, u_tensor, u_extras, "u")
    layout, facts = loaded.layout, FamilyFacts.of(loaded.config)
    sharpener = loaded.module
    dtype = next(sharpener.parameters()).dtype  # fp32 as trained, whatever ComfyUI's dtype
    out = []
    for tensor, extras in positive:
        _check_fits(loaded, tensor, extras, "positive")
        sharpener.to(tensor.device)
        batch = tensor.shape[0]
        if u_tensor.shape[0] not in (1, batch):
            raise UserError(f"u has a batch of {u_tensor.shape[0]} but positive one of {batch}. Wire a u of batch 1")
        context = u_tensor.to(tensor.device, dtype).expand(batch, -1, -1)
        uncond = Conditioning(embeds=context, mask=_all_tokens(context) if facts.has_mask else None)
        pooled = extras.get("pooled_output") if facts.has_pooled else None
        pieces = [sharpen(facts, sharpener, Conditioning(embeds=tensor[:, part].to(dtype), pooled=pooled,
                                                         mask=_all_tokens(tensor[:, part]) if facts.has_mask else None),
                          uncond, strength)
                  for part in layout.token_groups(tensor)]
        extras = dict(extras)
        if pieces[0].pooled is not pooled:  # the family's rule rewrote the pooled vector
            extras["pooled_output"] = pieces[0].pooled.to(pooled.dtype)
        out.append([torch.cat([p.embeds for p in pieces], dim=1).to(tensor.dtype), extras])
    return out


def _all_tokens(embeds: torch.Tensor) -> torch.Tensor:
    """ComfyUI's T5 conditioning holds real tokens only: every token is in the mask."""
    return torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
