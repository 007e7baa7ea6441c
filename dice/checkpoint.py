"""One checkpoint format: safetensors + JSON. What sampling, export and ``dice.apply`` read is never a pickle.

A DICE sharpener is ``sharpener.safetensors`` + ``sharpener.json``. The JSON records everything needed
to rebuild and use it: family, base model (an absolute path for a local model; hub id + revision
otherwise), widths, step, family options (e.g. SDXL's empty-prompt rule and VAE), the negative prompts
u was drawn from in training, and the training options. The same two files under the Hub's names
(``model.safetensors`` + ``config.json``, see :mod:`dice.hub`) make a folder or Hub repository that
loads the same way. A GD or PnP model is ``method.json`` (the same record, with the method) beside the
diffusers model folder(s) it trained (``unet/``, ``controlnet/``, ...; see :mod:`dice.methods`).

A training checkpoint (``exps/NNNNN-*/checkpoint-<step>/``) holds each weight once: those files, plus, for
resuming one's own run only, accelerate's optimizer moments, lr schedule and RNG states (``optimizer.bin``,
``scheduler.bin``, ``random_states_<rank>.pkl``: pickles, written and read by torch.save / torch.load) and,
with ``--ema_decay``, the raw trained weights beside the averaged ones (``model.safetensors``).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import load_file, save_file

from .adapters.registry import is_offline
from .errors import UserError, give_default_permissions, one_line
from .experiments import DEFAULT_ROOT, ExperimentNotFound, latest_checkpoint, resolve_run, validation_grid_path
from .hub import GRID_NAME, HUB_CONFIG_NAME, HUB_WEIGHTS_NAME, download_sharpener, is_repo_id, model_card
from .paper import SHARPENER_HEADS, SHARPENER_INNER_DIM
from .sharpener import Sharpener

WEIGHTS_NAME = "sharpener.safetensors"
CONFIG_NAME = "sharpener.json"
METHOD_CONFIG_NAME = "method.json"
FORMAT_VERSION = 1


@dataclass
class TrainedConfig:
    """What a trained method (DICE, GD, PnP) was trained for and how: saved beside its weights, read back on loading.

    ``family`` / ``dim`` / ``num_tokens`` say which text embeddings it fits; ``base_model`` (+ revision,
    variant) the model it was distilled from; ``family_options`` the per-family choices sampling must
    repeat (SDXL's empty-prompt rule, PixArt's masks); ``training_options`` the whole training command;
    ``method`` (DICE when absent: checkpoints written before GD and PnP existed) and ``method_options``
    what the method itself recorded (e.g. GD's guidance range, parameter counts).
    """

    family: str
    base_model: str
    dim: int
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
    method: str = "dice"
    method_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainedConfig":
        """Read a saved config (a :class:`SharpenerConfig` for DICE); keys this version does not know are ignored."""
        missing = [name for name in ("family", "base_model", "dim") if name not in data]
        if missing:
            raise ValueError(f"not a dice sharpener config: it has no {', '.join(missing)}")
        kind = SharpenerConfig if data.get("method", "dice") == "dice" else TrainedConfig
        known = set(kind.__dataclass_fields__)
        return kind(**{k: v for k, v in data.items() if k in known})


@dataclass
class SharpenerConfig(TrainedConfig):
    """A DICE sharpener's config: the common record plus the sharpener's widths."""

    inner_dim: int = SHARPENER_INNER_DIM
    num_heads: int = SHARPENER_HEADS


class TrainedSharpener(Sharpener, PyTorchModelHubMixin, library_name="dice"):
    """A sharpener with the config it was trained with (``dice.Sharpener``): what :func:`load_sharpener` returns.

    ``config`` is a :class:`SharpenerConfig` (family, base model, training options); ``validation_grid`` the
    training run's unguided / CFG / DICE image, if any. As a huggingface_hub ``PyTorchModelHubMixin`` it has
    ``save_pretrained(folder)``, ``push_to_hub(repo_id)`` and ``TrainedSharpener.from_pretrained(repo_id_or_folder,
    revision=...)`` in the Hub layout of :mod:`dice.hub`.
    """

    def __init__(self, dim: int, inner_dim: int = SHARPENER_INNER_DIM, num_heads: int = SHARPENER_HEADS):
        super().__init__(dim, inner_dim, num_heads)
        self.config: SharpenerConfig | None = None  # set when loaded (or by the caller before save_pretrained)
        self.validation_grid: Path | None = None

    # ---- huggingface_hub's PyTorchModelHubMixin hooks -------------------------------------------
    def _save_pretrained(self, save_directory) -> None:
        save_pretrained_files(save_directory, self)

    @classmethod
    def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", **_config_values) -> "TrainedSharpener":
        folder = model_id if os.path.isdir(model_id) else download_sharpener(
            model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, token=token)
        return load_sharpener(folder, device=map_location)[0]

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload as a Hub repository (see ``PyTorchModelHubMixin.push_to_hub``); the card names ``repo_id``."""
        kwargs["model_card_kwargs"] = {"repo_id": repo_id, **(kwargs.get("model_card_kwargs") or {})}
        return super().push_to_hub(repo_id, **kwargs)

    def generate_model_card(self, *args, repo_id: str | None = None, **kwargs):
        return model_card(self.config, repo_id=repo_id, has_grid=self.validation_grid is not None,
                          num_parameters=sum(p.numel() for p in self.parameters()))


def save_sharpener(folder: str | os.PathLike, sharpener: Sharpener, config: SharpenerConfig, *, hub_layout: bool = False) -> None:
    """Write weights (safetensors) and config (JSON) into ``folder``; ``hub_layout``: under the Hub's names."""
    weights_name, config_name = (HUB_WEIGHTS_NAME, HUB_CONFIG_NAME) if hub_layout else (WEIGHTS_NAME, CONFIG_NAME)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in sharpener.state_dict().items()}
    save_file(state, str(folder / weights_name), metadata={"format": "pt", "family": config.family})
    give_default_permissions(folder / weights_name)
    (folder / config_name).write_text(json.dumps(config.__dict__, indent=2, default=str) + "\n")


def save_pretrained_files(folder: str | os.PathLike, sharpener: TrainedSharpener) -> None:
    """The files of ``Sharpener.save_pretrained`` but the model card: weights, config, validation grid."""
    if sharpener.config is None:
        raise ValueError(
            "this Sharpener has no config (family, base model), so it cannot be saved as a Hub folder. Load it "
            "with dice.load_sharpener / Sharpener.from_pretrained, or set sharpener.config = SharpenerConfig(...)."
        )
    save_sharpener(folder, sharpener, sharpener.config, hub_layout=True)
    if sharpener.validation_grid is not None:
        grid, target = Path(sharpener.validation_grid), Path(folder) / GRID_NAME
        if not target.exists() or not grid.samefile(target):
            shutil.copyfile(grid, target)


def _weights_in(folder: Path) -> Path | None:
    """The sharpener weights a folder holds in either layout (checkpoint names first)."""
    if (folder / WEIGHTS_NAME).is_file():
        return folder / WEIGHTS_NAME
    # A checkpoint also holds accelerate's model.safetensors; only config.json beside it makes a Hub folder.
    if (folder / HUB_WEIGHTS_NAME).is_file() and (folder / HUB_CONFIG_NAME).is_file():
        return folder / HUB_WEIGHTS_NAME
    return None


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        return download_sharpener(repo_id, revision=revision)
    except Exception as err:  # noqa: BLE001 - any hub failure: one line with the cause

        hint = (f"HF_HUB_OFFLINE=1 and it is not in the Hugging Face cache: download it first (hf download {repo_id})"
                if is_offline() else "check the repo id, the revision, your token (hf auth login) and your network")
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExperimentNotFound(
            f"'{repo_id}' is no local folder or file, and loading it as a Hub sharpener repository failed: {hint}. "
            f"Cause: {type(err).__name__}: {cause}"
        ) from err


def _locate(spec: str | int | os.PathLike, root: str | os.PathLike, revision: str | None, what: str) -> Path:
    """The file given, or the folder holding a trained model's files: a folder, a Hub snapshot, or a run's
    latest checkpoint (an experiment id or run folder)."""
    text = str(spec)
    if os.path.isfile(text):
        return Path(text)
    if os.path.isdir(text):
        folder = Path(text)
    elif is_repo_id(text):
        folder = _download(text, revision)
    else:
        folder = resolve_run(text, root)
    if _weights_in(folder) is None and not (folder / METHOD_CONFIG_NAME).is_file():
        ckpt = latest_checkpoint(folder)
        if ckpt is None:
            raise ExperimentNotFound(
                f"'{folder}' holds no {what}: no {WEIGHTS_NAME}, no {HUB_WEIGHTS_NAME} + {HUB_CONFIG_NAME}, no "
                f"{METHOD_CONFIG_NAME} and no checkpoint-<step>/ folder. Has the run saved a checkpoint yet?"
            )
        folder = ckpt
    return folder


class NotASharpener(UserError, ValueError):
    """A GD or PnP model where a DICE sharpener was asked for."""


def resolve_sharpener_files(
    spec: str | int | os.PathLike, root: str | os.PathLike = DEFAULT_ROOT, revision: str | None = None,
) -> tuple[Path, Path]:
    """(weights, config) from an experiment id, a run folder, a checkpoint folder, a weights file, a
    Hub-layout folder or a Hub repo id (``owner/name``, fetched through the cache at ``revision``)."""
    found = _locate(spec, root, revision, "sharpener")
    if found.is_dir() and _weights_in(found) is None and (found / METHOD_CONFIG_NAME).is_file():
        method = read_config(found / METHOD_CONFIG_NAME).method
        raise NotASharpener(f"'{found}' holds a {method} model, not a DICE sharpener. Sample it with "
                            f"sample.py --model_path {spec} (dice.methods.load_trained in Python)")
    weights = found if found.is_file() else _weights_in(found) or found / WEIGHTS_NAME
    config_name = HUB_CONFIG_NAME if weights.name == HUB_WEIGHTS_NAME else CONFIG_NAME
    config = weights.with_name(config_name)
    if not config.is_file():
        raise ExperimentNotFound(f"'{weights}' has no {config_name} beside it; it is not a dice sharpener checkpoint.")
    return weights, config


def resolve_trained_config(
    spec: str | int | os.PathLike, root: str | os.PathLike = DEFAULT_ROOT, revision: str | None = None,
) -> Path:
    """The config file of any trained method (DICE, GD, PnP), from what :func:`resolve_sharpener_files`
    accepts (a GD/PnP checkpoint's ``method.json`` too)."""
    found = _locate(spec, root, revision, "trained model")
    if found.name == METHOD_CONFIG_NAME:
        return found
    if found.is_dir() and _weights_in(found) is None and (found / METHOD_CONFIG_NAME).is_file():
        return found / METHOD_CONFIG_NAME
    return resolve_sharpener_files(found, root, revision)[1]


def checkpoint_config(folder: str | os.PathLike) -> Path | None:
    """The config a complete checkpoint-<step> folder holds (DICE's or another method's), if any."""
    for name in (CONFIG_NAME, METHOD_CONFIG_NAME):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


class SharpenerMismatch(UserError, ValueError):
    """A sharpener used with a model of another family or text width."""


def check_sharpener_fits(config: SharpenerConfig, source: str, family: str | None = None, dim: int | None = None) -> None:
    """Refuse a sharpener trained for another family or text width (``source`` names it in the message)."""
    if family is not None and config.family != family:
        raise SharpenerMismatch(
            f"sharpener '{source}' was trained for {config.family} ({config.base_model}); it cannot be "
            f"applied to a {family} model. Use a {family} sharpener, or a {config.family} base model"
        )
    if dim is not None and config.dim != dim:
        raise SharpenerMismatch(
            f"sharpener '{source}' expects {config.dim}-wide text embeddings but this model's are {dim}-wide "
            f"(trained on {config.base_model}). Use a sharpener trained for this text encoder"
        )


class InvalidSharpenerConfig(UserError, ValueError):
    """A sharpener's JSON that cannot be read as a SharpenerConfig."""


def read_config(config_path: str | os.PathLike) -> TrainedConfig:
    """A saved config: a :class:`SharpenerConfig` for DICE, a :class:`TrainedConfig` for GD / PnP."""
    try:
        return TrainedConfig.from_dict(json.loads(Path(config_path).read_text()))
    except (ValueError, TypeError, AttributeError) as err:
        raise InvalidSharpenerConfig(
            f"'{config_path}' is not a sharpener config ({type(err).__name__}: {err}). Restore it from the run, "
            "or pick another checkpoint"
        ) from err


def read_weights(weights: str | os.PathLike, config: SharpenerConfig, config_name: str = CONFIG_NAME) -> dict[str, torch.Tensor]:
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
            f"'{weights}' does not match its {config_name} (dim {config.dim}, inner_dim {config.inner_dim}): "
            f"{wrong[0]} is {found.get(wrong[0], 'missing')} in the file but {expected.get(wrong[0], 'unknown')} "
            f"by the config. Restore the {config_name} written with these weights"
        )
    return state


def load_sharpener(
    spec: str | int | os.PathLike, root: str | os.PathLike = DEFAULT_ROOT, *, family: str | None = None,
    dim: int | None = None, device: torch.device | str = "cpu", revision: str | None = None,
) -> tuple[TrainedSharpener, SharpenerConfig]:
    """Load a trained sharpener; refuse one trained for another family or text width.

    ``spec``: an experiment id ("3", under ``root``), a run or checkpoint folder, a weights file, a
    Hub-layout folder or a Hub repo id (``revision``: its branch, tag or commit). The sharpener comes
    back in eval mode without gradients, with ``config`` and ``validation_grid`` set.
    """
    weights, config_path = resolve_sharpener_files(spec, root, revision)
    config = read_config(config_path)
    check_sharpener_fits(config, str(weights), family, dim)
    sharpener = TrainedSharpener(config.dim, config.inner_dim, config.num_heads)
    sharpener.load_state_dict(read_weights(weights, config, config_path.name))
    sharpener.config = config
    grids = [weights.with_name(GRID_NAME)]  # a Hub-layout folder
    if config.step is not None:  # a training run's checkpoint-<step>/
        grids.append(validation_grid_path(weights.parent.parent, config.step))
    sharpener.validation_grid = next((grid for grid in grids if grid.is_file()), None)
    return sharpener.to(device).eval().requires_grad_(False), config
