"""``dice.apply(pipe, sharpener)`` / ``dice.remove(pipe)``: DICE on a stock diffusers pipeline you already hold.

While a sharpener is applied, calling the pipeline encodes the prompt and the negative prompt with the
family's adapter (the encodings the sharpener was trained on, the ones ``dice.sampling.generate``
uses), sharpens the prompt embedding and hands both to the stock ``__call__`` as embeddings. A call
without ``guidance_scale`` is unguided, one network evaluation per step (the point of DICE; the stock
default would be CFG at twice the cost); an explicit ``guidance_scale > 1`` is DICE + CFG (paper A.5).

Nothing global is patched: ``apply`` gives this one pipeline object a class of its own, a subclass of
its stock class that overrides only ``__call__`` (Python looks special methods up on the class, so an
instance attribute could not do it). ``remove`` puts the stock class back. No module, scheduler or
config of the pipeline is touched, so it then behaves exactly as before, and other pipelines of the
same class never change.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
from typing import Any

import torch

from .adapters import Adapter, Conditioning, adapter_class, families
from .adapters.registry import family_of_pipeline_class
from .checkpoint import SharpenerConfig, check_sharpener_fits, load_sharpener
from .experiments import DEFAULT_ROOT
from .methods.dice import sharpen_for_pipeline
from .presets import model_location, same_base_model
from .sharpener import Sharpener

logger = logging.getLogger("dice")

_STATE = "_dice_applied_sharpener"
# Arguments that change how the stock pipeline encodes prompts. The sharpener was trained on the
# adapter's encoding, and with embeddings passed in the pipeline would silently ignore them: refused.
_ENCODING_ARGUMENTS = ("prompt_2", "negative_prompt_2", "prompt_3", "negative_prompt_3", "clip_skip")


@dataclasses.dataclass
class _Applied:
    stock_class: type
    adapter: Adapter
    sharpener: Sharpener
    alpha: float


def apply(pipe, sharpener: Sharpener | str | int | os.PathLike, alpha: float = 1.0, *,
          revision: str | None = None, exps_root: str | os.PathLike = DEFAULT_ROOT):
    """Make ``pipe`` sample with a DICE sharpener until :func:`remove`; returns ``pipe``.

    ``pipe``: a stock diffusers SD1.5, SDXL, PixArt-alpha, PixArt-Sigma or SD3 / SD3.5 pipeline, in any dtype, on any
    device. (SD3: a ``max_sequence_length`` given to the call sets the T5 length of the encoding the sharpener reads.)
    ``sharpener``: a loaded :class:`Sharpener` (with its config) or what :func:`dice.load_sharpener`
    accepts: an experiment id under ``exps_root``, a checkpoint or Hub-layout folder, a Hub repo id
    (at ``revision``). ``alpha``: the strength, 1 as trained. Applying again replaces the sharpener.
    A sharpener of another family or text width is refused; one trained on another base model is
    used (cross-model transfer, paper Fig. 6) with one log line saying so. The pipeline's own safety checker is left
    as it is (with one log line: it blacks out the images it flags; sample.py and the paper's evaluation run without).
    """
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, not {alpha}")
    previous = pipe.__dict__.get(_STATE)
    stock_class = previous.stock_class if previous else type(pipe)
    family = _family_of(stock_class)
    if isinstance(sharpener, Sharpener):
        config = getattr(sharpener, "config", None)
        source = f"<Sharpener for {getattr(config, 'base_model', '?')}>"
        if not isinstance(config, SharpenerConfig):
            raise ValueError("this Sharpener has no config (family, base model); load it with dice.load_sharpener "
                             "or Sharpener.from_pretrained, or set sharpener.config")
        check_sharpener_fits(config, source, family)
    else:
        source = str(sharpener)
        sharpener, config = load_sharpener(sharpener, exps_root, family=family, revision=revision)
    adapter = adapter_class(family)(pipe, pipe.name_or_path or "", config.family_options)
    check_sharpener_fits(config, source, dim=adapter.text_dim)
    _note_other_base_model(config, pipe.name_or_path)
    if getattr(pipe, "safety_checker", None) is not None:  # the user's pipeline, the user's choice: said, not changed
        logger.warning("this pipeline keeps its safety checker: images it flags come back black. The paper's evaluation "
                       "(and sample.py) run without it; load with safety_checker=None for the same images")
    setattr(pipe, _STATE, _Applied(stock_class, adapter, sharpener.eval(), float(alpha)))
    if previous is None:
        pipe.__class__ = type(stock_class.__name__, (stock_class,), {
            # The stock name, so that e.g. save_pretrained still writes the stock class into model_index.json.
            "__call__": _sharpened_call, "__module__": stock_class.__module__,
            "__qualname__": stock_class.__qualname__, "__doc__": stock_class.__doc__,
        })
    return pipe


def remove(pipe):
    """Take the sharpener off ``pipe`` (applied by :func:`apply`): the stock pipeline again; returns ``pipe``.

    A pipeline without a sharpener is returned unchanged.
    """
    state = pipe.__dict__.pop(_STATE, None)
    if state is not None:
        pipe.__class__ = state.stock_class
    return pipe


def is_applied(pipe) -> bool:
    """Whether ``pipe`` has a sharpener applied by :func:`apply`."""
    return _STATE in getattr(pipe, "__dict__", {})


def _family_of(stock_class: type) -> str:
    found = next((f for c in stock_class.__mro__ if (f := family_of_pipeline_class(c.__name__))), None)
    if found not in families():
        raise ValueError(f"dice.apply works on SD1.5, SDXL, PixArt-alpha, PixArt-Sigma and SD3 pipelines; a {stock_class.__name__} is "
                         f"{found or 'none of them'}.")
    return found


def _note_other_base_model(config: SharpenerConfig, model: str | None) -> None:
    # A pipeline built in code has no name to compare.
    if model and not same_base_model(config.base_model, model):
        logger.warning("sharpener trained on %s, applied to %s (cross-model transfer, paper Fig. 6)",
                       model_location(str(config.base_model)), model)


@torch.no_grad()
def _sharpened_call(self, *args, **kwargs):
    """The stock ``__call__``, given the sharpened prompt embedding (see :func:`dice.apply`)."""
    state: _Applied = self.__dict__[_STATE]
    stock_call = state.stock_class.__call__
    call: dict[str, Any] = inspect.signature(stock_call).bind(self, *args, **kwargs).arguments
    call.pop("self")
    call.update(call.pop("kwargs", {}))
    refused = [name for name in _ENCODING_ARGUMENTS if call.get(name) is not None]
    if refused:
        raise ValueError(f"{', '.join(refused)} would change the text encoding the sharpener was trained on. "
                         "Pass prompt_embeds of your own (they are sharpened), or dice.remove(pipe) first.")
    call.setdefault("guidance_scale", 1.0)  # unguided unless CFG is asked for
    adapter = state.adapter
    if call.get("max_sequence_length") is not None and "max_sequence_length" in adapter.options:
        # The caller's T5 length (SD3): encode at it; the sharpener takes any number of tokens.
        adapter = type(adapter)(self, adapter.model, {**adapter.options, "max_sequence_length": call["max_sequence_length"]})
    cond, uncond = _conditioning(adapter, call)
    cond, uncond = sharpen_for_pipeline(adapter, cond, uncond, state.sharpener, state.alpha)
    call.update(adapter.embedding_pipeline_kwargs(cond, uncond), prompt=None, negative_prompt=None)
    return stock_call(self, **call)


def _conditioning(adapter: Adapter, call: dict[str, Any]) -> tuple[Conditioning, Conditioning]:
    """(c, u) from the call's prompts or embeddings; ``call`` loses them. u is the negative prompt ("" if none)."""
    cond = adapter.conditioning_from_pipeline_kwargs(call)
    uncond = adapter.conditioning_from_pipeline_kwargs(call, negative=True)
    prompt, negative = call.pop("prompt", None), call.pop("negative_prompt", None)
    if (prompt is None) == (cond is None):
        raise ValueError("pass either prompt or prompt_embeds, not both or neither")
    if uncond is not None and negative is not None:
        raise ValueError("pass either negative_prompt or negative_prompt_embeds, not both")
    if cond is None:
        cond = adapter.encode_prompts([prompt] if isinstance(prompt, str) else list(prompt))
    if uncond is None:
        negatives = list(negative) if isinstance(negative, (list, tuple)) else [negative or ""] * len(cond)
        uncond = adapter.encode_negative(negatives)
    return cond, uncond
