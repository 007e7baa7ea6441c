"""The method axis: DICE, GD, PnP (one file each; Scaling needs no training) behind :class:`Method`.

``method_class("gd")`` for training; :func:`load_trained` for sampling any trained method from an
experiment id, a run or checkpoint folder (or, for DICE, what :func:`dice.load_sharpener` accepts).
"""
from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

from ..checkpoint import read_config, resolve_trained_config
from ..errors import UserError
from .base import Method, TrainedModel

# name -> (module, class), imported when asked for.
_METHODS = {
    "dice": ("dice.methods.dice", "DiceMethod"),
    "gd": ("dice.methods.gd", "GDMethod"),
    "pnp": ("dice.methods.pnp", "PnPMethod"),
}
METHODS = tuple(_METHODS)


def method_class(name: str) -> type[Method]:
    if name not in _METHODS:
        raise UserError(f"unknown method {name!r}. Choose one of: {', '.join(METHODS)}")
    module, class_name = _METHODS[name]
    return getattr(importlib.import_module(module), class_name)


def build_method(name: str, **options) -> Method:
    """A method for training, from named values: those its constructor takes (e.g. DICE's ``inner_dim``, GD's
    ``guidance_scale_range``); the others name options of other methods and are left out."""
    cls = method_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{key: value for key, value in options.items() if key in accepted})


def load_trained(spec: str | int | os.PathLike, root: str | os.PathLike = "exps", *, revision: str | None = None,
                 device="cpu", dtype=None) -> TrainedModel:
    """A trained DICE, GD or PnP model: an experiment id (its latest checkpoint), a run or checkpoint folder,
    or for DICE also a weights file, a Hub-layout folder or a Hub repo id. GD and PnP modules come in
    ``dtype`` (the pipeline's), a sharpener in fp32 as trained."""
    config_path = resolve_trained_config(spec, root, revision)
    config = read_config(config_path)
    method = method_class(config.method)()
    module = method.load(Path(config_path).parent, config, device=device, dtype=dtype)
    return TrainedModel(method, module, config)


__all__ = ["METHODS", "build_method", "Method", "TrainedModel", "load_trained", "method_class"]
