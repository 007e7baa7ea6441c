"""DICE on ComfyUI's CONDITIONING: each family's conditioning there, and sharpening it by the library's rule.

The ComfyUI node (``comfyui_dice/``) is a thin face over this module, as :mod:`dice.addon` is over a diffusers
pipeline. The sharpener and its checkpoint are :func:`dice.checkpoint.load_sharpener`'s; the rule
``c_dice = c + alpha * f(c, u)`` with its per-family choices (first token, zero padding, pooled vector) is
:func:`dice.methods.dice.sharpen_embeddings` under :func:`dice.methods.dice.sharpening_rule`, read from the family's
adapter class and the options the sharpener recorded in training: the library's pipeline-free form of the rule that
training and ``dice.apply`` use. What is ComfyUI's own is here, one entry per family in :data:`COMFYUI_FAMILIES`:

- A CONDITIONING is a list of ``[tensor, dict]`` entries: the text embedding sequence [B, T, D] and its companions
  (``pooled_output``, SDXL's width/height/crop, area, strength, ...). The tensor is sharpened, and the pooled vector
  where the family's rule rewrites it (SD3); every other dict entry is carried over.
- The sharpener has no attention between prompt tokens (each token's query attends over u), so a conditioning whose
  tokens are laid out differently from diffusers' is cut into **token groups**, each laid out as one diffusers
  embedding and sharpened by the rule, whose first token is the rule's first token.
- CLIP families (SD1.5, SDXL): ComfyUI encodes a prompt longer than 77 tokens as chunks of 77 (each begins with the
  begin-of-text token and is encoded on its own) joined along the sequence, where diffusers truncates to the first.
  Each chunk is one group, so every chunk's first token is restored, and a one-chunk prompt gives exactly
  ``dice.apply``'s embedding. Every query token attends to all of u (all of u's chunks).
- SD3 / SD3.5 (``comfy/text_encoders/sd3_clip.py``): the CLIP-L/G chunks (77 tokens each, 2048 columns zero-padded
  to 4096) and then T5's tokens, padded only to the prompt's length and at least 77 (``T5TokenizerOptions``'
  ``min_length``), where diffusers pads T5 to ``max_sequence_length`` (256); without T5 ComfyUI leaves T5's tokens
  out, where diffusers feeds ``max_sequence_length`` zero tokens. The first chunk and the T5 tokens are one group
  (diffusers' layout), every further chunk its own. u without T5 gets diffusers' zero tokens back, so there the node
  equals the library exactly; u's T5 tokens cannot be made again without T5, so a u whose T5 length differs from the
  sharpener's ``max_sequence_length`` is used as it is, with a warning naming the ``min_length`` that makes it equal.
- PixArt-α and PixArt-Σ: ComfyUI's T5 conditioning holds the prompt's real tokens only, without padding or mask
  (``comfy/text_encoders/pixart_t5.py``); diffusers pads to 120 (Σ: 300) tokens and hands the mask to the
  transformer. That equals DICE's sharpened prompt under ``pixart_mask="prompt"`` (padding invisible) with
  ``pixart_context_mask="prompt"`` (the sharpener attends to u's real tokens: all of ComfyUI's). The other choices
  need T5's padding tokens, which a ComfyUI conditioning does not carry: such a sharpener is refused with the options
  to retrain with.

A family is recognised in a conditioning by its text width and pooled width, so that a sharpener of one family
never silently rewrites another's (PixArt and SD3 are both 4096 wide; PixArt-α and PixArt-Σ cannot be told apart).
Only torch and the light parts of dice are imported: ComfyUI's environment has neither diffusers nor accelerate.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .adapters.registry import adapter_class
from .checkpoint import SharpenerConfig, SharpenerMismatch, check_sharpener_fits, load_sharpener
from .errors import UserError
from .methods.dice import sharpen_embeddings, sharpening_rule
from .sharpener import Sharpener

logger = logging.getLogger("dice")

TokenGroups = Callable[[torch.Tensor], list]  # the tensor [B, T, D] -> its token groups (slices or index tensors)
Context = Callable[[torch.Tensor, dict], torch.Tensor]  # u's tensor, the sharpener's family options -> the rule's u


CLIP_CHUNK = 77  # tokens of one CLIP encoding: ComfyUI encodes a longer prompt in several, joined along the sequence


def clip_chunks(tokens: torch.Tensor) -> list[slice]:
    """ComfyUI's CLIP layout: 77-token chunks, each encoded on its own and led by the begin-of-text token."""
    return [slice(start, start + CLIP_CHUNK) for start in range(0, _clip_tokens(tokens, tokens.shape[1]), CLIP_CHUNK)]


def _clip_tokens(tokens: torch.Tensor, count: int) -> int:
    """``count``, checked to be whole CLIP chunks (one line naming the fix otherwise)."""
    if count % CLIP_CHUNK:
        raise SharpenerMismatch(
            f"the conditioning has {count} CLIP tokens, not a multiple of ComfyUI's {CLIP_CHUNK}-token CLIP chunks: "
            "it does not come from a text encoder node. Wire CLIPTextEncode's output (or a combination of them)")
    return count


def one_sequence(tokens: torch.Tensor) -> list[slice]:
    return [slice(0, tokens.shape[1])]


def as_given(u: torch.Tensor, options: dict) -> torch.Tensor:
    return u


# SD3's CLIP tokens: CLIP-L (768) and CLIP-G (1280) side by side, zero-padded to T5's 4096 columns; T5's tokens follow.
SD3_CLIP_WIDTH = 768 + 1280


def sd3_clip_tokens(tokens: torch.Tensor) -> int:
    """How many leading tokens are CLIP-L/G's: those exactly zero beyond the CLIP columns (a T5 token never is)."""
    is_clip = (tokens[..., SD3_CLIP_WIDTH:] == 0).flatten(2).all(-1).all(0)
    return _clip_tokens(tokens, int(is_clip.int().cumprod(0).sum()))


def sd3_groups(tokens: torch.Tensor) -> list[torch.Tensor]:
    """Diffusers' SD3 layout, the first CLIP chunk then T5's tokens, as one group; each further CLIP chunk its own."""
    clip = sd3_clip_tokens(tokens)
    if clip == 0:
        raise SharpenerMismatch(
            "the SD3 conditioning holds T5 tokens only, without CLIP-L/G's (DICE's SD3 rule, as diffusers encodes, starts "
            "with CLIP's tokens). Encode the prompt with a CLIP holding CLIP-L and CLIP-G (TripleCLIPLoader, or "
            "DualCLIPLoader with type sd3) and CLIPTextEncode")
    first = torch.cat([torch.arange(CLIP_CHUNK), torch.arange(clip, tokens.shape[1])])
    return [first] + [torch.arange(start, start + CLIP_CHUNK) for start in range(CLIP_CHUNK, clip, CLIP_CHUNK)]


def sd3_context(u: torch.Tensor, options: dict) -> torch.Tensor:
    """u as diffusers gives it to the sharpener: without T5, ComfyUI leaves T5's tokens out where diffusers feeds
    ``max_sequence_length`` zero tokens (put back here: exact). With T5, ComfyUI pads T5 to the prompt's length (at least
    77, ``T5TokenizerOptions``' min_length) where diffusers pads to ``max_sequence_length``: T5's padding tokens cannot
    be made again here, so u is used as it is, with a warning naming the min_length that makes it diffusers'."""
    length = options["max_sequence_length"]
    t5_tokens = u.shape[1] - sd3_clip_tokens(u)
    if t5_tokens == 0:
        return F.pad(u, (0, 0, 0, length))
    if t5_tokens != length:
        logger.warning(
            "DICE: u has %d T5 tokens where the sharpener was trained with %d (--max_sequence_length): its output differs "
            "from the library's (diffusers' layout). For the trained layout, put a T5TokenizerOptions node with min_length %d between "
            "the CLIP loader and the text encoders", t5_tokens, length, length)
    return u


@dataclass(frozen=True)
class ComfyFamily:
    """How a family's CONDITIONING looks in ComfyUI, as far as DICE needs to know."""

    family: str  # dice's family name (dice.adapters)
    title: str
    text_width: int  # the conditioning tensor's last dimension
    pooled_width: int | None  # the width of ``pooled_output``; None: the family has none
    # The token groups, each laid out as one diffusers embedding and sharpened by the rule (its first token is the
    # rule's first token); the first group carries the pooled vector. Together they cover every token once.
    token_groups: TokenGroups = one_sequence
    # u as the library's rule sees it in diffusers (SD3: an absent T5's zero tokens put back).
    context: Context = as_given
    # Family options a sharpener must have been trained with to fit this conditioning, and why.
    required_options: dict[str, Any] = field(default_factory=dict)
    why_required: str = ""


# ComfyUI's T5 conditioning holds the prompt's real tokens only: the PixArt options that fit it.
PIXART_OPTIONS = {"pixart_mask": "prompt", "pixart_context_mask": "prompt"}
PIXART_WHY = "ComfyUI's T5 conditioning holds only the prompt's real tokens, without T5's padding tokens"

COMFYUI_FAMILIES: dict[str, ComfyFamily] = {
    # CLIP ViT-L last layer after the final norm; pooled: its projection.
    "sd15": ComfyFamily("sd15", "SD1.5", 768, 768, clip_chunks),
    # CLIP-L and CLIP-G penultimate layers side by side; pooled: CLIP-G's projection.
    "sdxl": ComfyFamily("sdxl", "SDXL", 2048, 1280, clip_chunks),
    # Flan-T5-XXL, the prompt's tokens only (the same for both).
    "pixart": ComfyFamily("pixart", "PixArt-α", 4096, None, required_options=PIXART_OPTIONS, why_required=PIXART_WHY),
    "pixart-sigma": ComfyFamily("pixart-sigma", "PixArt-Σ", 4096, None, required_options=PIXART_OPTIONS,
                                why_required=PIXART_WHY),
    # CLIP-L/G penultimate layers (zero-padded to 4096) then T5-XXL; pooled: CLIP-L's and CLIP-G's side by side.
    "sd3": ComfyFamily("sd3", "SD3/3.5", 4096, SD3_CLIP_WIDTH, sd3_groups, sd3_context),
}


def family_options(config: SharpenerConfig) -> dict[str, Any]:
    """The options the sharpener was trained with, the family's defaults where it recorded none (as an adapter does)."""
    recorded = {k: v for k, v in config.family_options.items() if v is not None}
    return {**adapter_class(config.family).option_defaults, **recorded}


@dataclass
class ComfySharpener:
    """A loaded sharpener as the ComfyUI node passes it from the loader to the apply node."""

    module: Sharpener
    config: SharpenerConfig
    source: str  # what the user named: a file, folder, run or Hub id (in messages)

    @property
    def layout(self) -> ComfyFamily:
        return COMFYUI_FAMILIES[self.config.family]

    @property
    def options(self) -> dict[str, Any]:
        return family_options(self.config)

    @property
    def rule(self) -> dict[str, Any]:
        """The library's rule for this sharpener: :func:`dice.methods.dice.sharpen_embeddings`' keyword arguments."""
        return sharpening_rule(adapter_class(self.config.family), self.options)

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
    options = family_options(config)
    for option, needed in layout.required_options.items():
        if options.get(option) != needed:
            raise SharpenerMismatch(
                f"sharpener '{spec}' was trained with {option}={options.get(option)}, but {layout.why_required}: "
                f"it fits only a sharpener trained with --{option} {needed}. Train one with "
                + " ".join(f"--{name} {value}" for name, value in layout.required_options.items()))
    return ComfySharpener(module, config, str(spec))


def recognise(tensor: torch.Tensor, extras: dict[str, Any]) -> list[ComfyFamily]:
    """The families whose ComfyUI conditioning has this text width and pooled width (several where the text encoders
    are the same: PixArt-α and PixArt-Σ)."""
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
        check_sharpener_fits(loaded.config, loaded.source, family=" or ".join(f.family for f in found))
    check_sharpener_fits(loaded.config, loaded.source, dim=tensor.shape[-1])


def _batch_of(tensor: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(like.device, like.dtype).expand(batch, *tensor.shape[1:])


@torch.no_grad()
def sharpen_conditioning(loaded: ComfySharpener, positive: list, u: list, strength: float = 1.0) -> list:
    """``positive`` with every entry's text embedding sharpened against ``u``'s (strength ``strength``, 1 as trained).

    A new CONDITIONING: each ``[tensor, dict]`` entry of ``positive`` with a new tensor and a copy of its dict (the
    pooled vector new where the family's rule rewrites it). ``u`` is one entry (the first, as ComfyUI's
    ConditioningAverage reads its ``conditioning_from``).
    """
    if not math.isfinite(strength):
        raise UserError(f"strength must be a finite number, not {strength}")
    if not positive or not u:
        raise UserError("an empty CONDITIONING was given. Wire CLIPTextEncode outputs to positive and u")
    if len(u) > 1:
        logger.warning("DICE: u holds %d conditionings; the first is the sharpener's context", len(u))
    u_tensor, u_extras = u[0][0], u[0][1]
    _check_fits(loaded, u_tensor, u_extras, "u")
    layout, rule, sharpener = loaded.layout, loaded.rule, loaded.module
    u_tensor = layout.context(u_tensor, loaded.options)
    dtype = next(sharpener.parameters()).dtype  # fp32 as trained, whatever ComfyUI's dtype
    out = []
    for tensor, extras in positive:
        _check_fits(loaded, tensor, extras, "positive")
        sharpener.to(tensor.device)
        batch = tensor.shape[0]
        if u_tensor.shape[0] not in (1, batch):
            raise UserError(f"u has a batch of {u_tensor.shape[0]} but positive one of {batch}. Wire a u of batch 1")
        c = tensor.to(dtype)
        pooled = extras.get("pooled_output") if rule["sharpen_pooled"] else None
        pooled_pair = {"c_pooled": _batch_of(pooled, batch, c),
                       "u_pooled": _batch_of(u_extras.get("pooled_output"), batch, c)}
        context = _batch_of(u_tensor, batch, c)
        sharpened, sharpened_pooled = torch.empty_like(c), []
        for group in layout.token_groups(tensor):
            # Every group's context holds u's pooled token as the library's does; the first group's pooled is kept.
            sharpened[:, group], group_pooled = sharpen_embeddings(sharpener, c[:, group], context, strength,
                                                                   **pooled_pair, **rule)
            sharpened_pooled.append(group_pooled)
        extras = dict(extras)
        if pooled is not None:
            extras["pooled_output"] = sharpened_pooled[0].to(pooled.dtype)
        out.append([sharpened.to(tensor.dtype), extras])
    return out
