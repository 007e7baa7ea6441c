"""One checkpoint format: the sharpener as ``sharpener.safetensors`` + ``sharpener.json``.

The JSON records everything needed to rebuild and use it: family, base model (an absolute path for a
local model; hub id + revision otherwise), widths, step, family options (e.g. SDXL's empty-prompt rule
and VAE), the negative prompts u was drawn from in training, and the training options. No pickles.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import UserError, give_default_permissions, one_line
from .experiments import DEFAULT_ROOT, ExperimentNotFound, latest_checkpoint, resolve_run
from .sharpener import Sharpener

WEIGHTS_NAME = "sharpener.safetensors"
CONFIG_NAME = "sharpener.json"
FORMAT_VERSION = 1


@dataclass
class SharpenerConfig:
    family: str
    base_model: str
    dim: int
    inner_dim: int = 512
    num_heads: int = 8
    num_tokens: int | None = None
    step: int | None = None
    family_options: dict[str, Any] = field(default_factory=dict)
    base_model_revision: str | None = None
    base_model_variant: str | None = None
    # u in training: with probability negative_prompt_prob one of negative_prompts, else the empty prompt
    # (paper 3.2). Sampling defaults to the same distribution (dice.negatives).
    negative_prompts: list[str] = field(default_factory=list)
    negative_prompt_prob: float = 0.0
    training_options: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SharpenerConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def save_sharpener(folder: str | os.PathLike, sharpener: Sharpener, config: SharpenerConfig) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in sharpener.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "family": config.family})
    give_default_permissions(folder / WEIGHTS_NAME)
    (folder / CONFIG_NAME).write_text(json.dumps(config.__dict__, indent=2, default=str) + "\n")


def resolve_sharpener_files(spec: str | int | os.PathLike, root: str | os.PathLike = DEFAULT_ROOT) -> tuple[Path, Path]:
    """(weights, config) from an experiment id, a run folder, a checkpoint folder or a weights file."""
    text = str(spec)
    if os.path.isfile(text):
        weights = Path(text)
        config = weights.with_name(CONFIG_NAME)
    else:
        folder = Path(text) if os.path.isdir(text) else resolve_run(text, root)
        if not (folder / WEIGHTS_NAME).is_file():
            ckpt = latest_checkpoint(folder)
            if ckpt is None:
                raise ExperimentNotFound(
                    f"'{folder}' holds no sharpener: no {WEIGHTS_NAME} and no checkpoint-<step>/ folder. "
                    "Has the run saved a checkpoint yet?"
                )
            folder = ckpt
        weights, config = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    if not config.is_file():
        raise ExperimentNotFound(f"'{weights}' has no {CONFIG_NAME} beside it; it is not a dice sharpener checkpoint.")
    return weights, config


class SharpenerMismatch(UserError, ValueError):
    """A sharpener used with a model of another family or text width."""


def check_compatible(weights: Path, config: SharpenerConfig, *, family: str | None = None, dim: int | None = None) -> None:
    """Refuse a sharpener for a model of another family or text width."""
    if family is not None and config.family != family:
        raise SharpenerMismatch(
            f"sharpener '{weights}' was trained for {config.family} ({config.base_model}); it cannot be "
            f"applied to a {family} model. Use a {family} sharpener, or a {config.family} base model"
        )
    if dim is not None and config.dim != dim:
        raise SharpenerMismatch(
            f"sharpener '{weights}' expects {config.dim}-wide text embeddings but this model's are {dim}-wide "
            f"(trained on {config.base_model}). Use a sharpener trained for this text encoder"
        )


def read_config(config_path: str | os.PathLike) -> SharpenerConfig:
    try:
        return SharpenerConfig.from_dict(json.loads(Path(config_path).read_text()))
    except (ValueError, TypeError, AttributeError) as err:
        raise UserError(
            f"'{config_path}' is not a sharpener config ({type(err).__name__}: {err}). Restore it from the run, "
            "or pick another checkpoint"
        ) from err


def read_weights(weights: str | os.PathLike, config: SharpenerConfig) -> dict[str, torch.Tensor]:
    """The sharpener's tensors, checked against the layout its JSON describes (one line on mismatch)."""
    try:
        state = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - safetensors' errors for truncated / foreign files
        raise UserError(
            f"'{weights}' is not a readable safetensors file (truncated or corrupt: {one_line(err)}). "
            "Copy it again, or pick another checkpoint of the run"
        ) from err
    expected = {k: tuple(v.shape) for k, v in Sharpener(config.dim, config.inner_dim, config.num_heads).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise UserError(
            f"'{weights}' does not match its {CONFIG_NAME} (dim {config.dim}, inner_dim {config.inner_dim}): "
            f"{wrong[0]} is {found.get(wrong[0], 'missing')} in the file but {expected.get(wrong[0], 'unknown')} "
            f"by the config. Restore the {CONFIG_NAME} written with these weights"
        )
    return state


def load_sharpener(
    spec: str | int | os.PathLike, root: str | os.PathLike = DEFAULT_ROOT, *, family: str | None = None,
    dim: int | None = None, device: torch.device | str = "cpu",
) -> tuple[Sharpener, SharpenerConfig]:
    """Load a trained sharpener; refuse one trained for another family or text width."""
    weights, config_path = resolve_sharpener_files(spec, root)
    config = read_config(config_path)
    check_compatible(weights, config, family=family, dim=dim)
    sharpener = Sharpener(config.dim, config.inner_dim, config.num_heads)
    sharpener.load_state_dict(read_weights(weights, config))
    return sharpener.to(device).eval().requires_grad_(False), config
