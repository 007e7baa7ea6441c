"""A sharpener as a Hugging Face Hub repository: ``model.safetensors`` + ``config.json`` + ``README.md``.

The layout is huggingface_hub's ``PyTorchModelHubMixin`` (which :class:`dice.Sharpener` inherits):
``config.json`` holds everything a checkpoint's ``sharpener.json`` holds, ``README.md`` is a model card
generated from it, and ``validation_grid.png`` (unguided / CFG / DICE) comes along when the training
run saved one. Downloads go through ``hf_hub_download``, so the cache, ``HF_HUB_OFFLINE``, tokens and
revisions behave as they do for any other Hub model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData, constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .adapters import adapter_class
from .presets import MODELS, model_location

HUB_WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE  # model.safetensors
HUB_CONFIG_NAME = constants.CONFIG_NAME  # config.json
GRID_NAME = "validation_grid.png"
PAPER_URL = "https://arxiv.org/abs/2502.03726"
TAGS = ["dice", "text-to-image", "diffusers", "cfg-distillation"]
# Training options worth a line in the model card (all of them are in config.json).
CARD_OPTIONS = (
    "preset", "max_train_steps", "guidance_scale", "global_batch_size", "learning_rate", "lr_scheduler", "lr_warmup_steps",
    "ema_decay", "adam_weight_decay",
    "loss_type", "loss_reduction", "shared_timestep", "resolution", "mixed_precision", "negative_prompts",
    "negative_prompt_prob", "train_data_dir", "seed",
)


def is_repo_id(text: str) -> bool:
    """True for ``owner/name`` that is no local path: what ``from_pretrained`` would fetch from the Hub."""
    if os.path.exists(text) or text.count("/") != 1:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def download_sharpener(repo_id: str, **download_kwargs) -> Path:
    """The local snapshot folder of a sharpener repository (downloaded or from the cache).

    ``download_kwargs`` go to ``hf_hub_download`` (revision, cache_dir, token, local_files_only, ...).
    """
    config = hf_hub_download(repo_id, HUB_CONFIG_NAME, **download_kwargs)
    hf_hub_download(repo_id, HUB_WEIGHTS_NAME, **download_kwargs)
    try:
        hf_hub_download(repo_id, GRID_NAME, **download_kwargs)
    except EntryNotFoundError:  # optional: a run without validation prompts has no grid
        pass
    return Path(config).parent


def model_card(config, *, repo_id: str | None = None, has_grid: bool = False, num_parameters: int | None = None) -> ModelCard:
    """The README.md of a sharpener repository: YAML metadata, how to use it, how it was trained."""
    on_hub = isinstance(config.base_model, str) and is_repo_id(config.base_model)
    short_name = config.base_model in MODELS  # a model this repository names (e.g. the shipped shapes world)
    data = ModelCardData(
        library_name="dice", pipeline_tag="text-to-image", tags=[*TAGS, config.family],
        # The Hub accepts only model ids here; a local path is named in the text instead.
        base_model=config.base_model if on_hub else None, base_model_relation="adapter" if on_hub else None,
    )
    family = adapter_class(config.family)
    pipeline = family.pipeline_class_name
    location = model_location(config.base_model) if short_name else config.base_model
    # e.g. an SD3 model saved without T5 (the flow shapes world): only a folder here can say so
    passed_as_none = list(family.components_to_pass(location, config.base_model_revision)) if Path(location).is_dir() else []
    target = repo_id or "<this repository id or folder>"
    size = f" ({num_parameters / 1e6:.2f}M parameters)" if num_parameters else ""
    lines = [
        f"# DICE sharpener for {config.base_model}",
        "",
        f"A [DICE]({PAPER_URL}) sharpener{size} for the {config.family} model `{config.base_model}`"
        + ("" if on_hub else " (a model named in `dice.presets.MODELS`)" if short_name else " (a local path when it was trained)")
        + ". It rewrites the prompt embedding so that "
        "unguided sampling, one network evaluation per step, matches classifier-free guidance (CFG), which takes two.",
        "",
        "## Use it",
        "",
        "```python",
        "import dice",
        f"from diffusers import {pipeline}",
        *(["from dice.presets import model_location"] if short_name else []),
        "",
        *(["# safety_checker=None: as the paper's evaluation (the stock checker returns flagged images black)"]
          if config.family == "sd15" else []),
        f'pipe = {pipeline}.from_pretrained(' + (f'model_location("{config.base_model}")' if short_name else f'"{config.base_model}"')
        + (f', revision="{config.base_model_revision}"' if config.base_model_revision else "")
        + "".join(f", {name}=None" for name in passed_as_none)
        + (", safety_checker=None)" if config.family == "sd15" else ")"),
        f'dice.apply(pipe, "{target}")',
        'image = pipe("a photo of a cat").images[0]',
        "```",
        "",
        "While applied, a call without `guidance_scale` is unguided: one network evaluation per step. "
        "`dice.apply(pipe, ..., alpha=1.5)` sets the strength (1 as trained), `pipe(..., guidance_scale=3)` "
        "combines DICE with CFG, `negative_prompt` is the sharpener's context, and `dice.remove(pipe)` "
        "gives the stock pipeline back.",
        "",
        f"From the command line: `python sample.py --sharpener_path {target} --prompt \"a photo of a cat\"`.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| family | {config.family} |",
        f"| base model | `{config.base_model}`"
        + (f" (revision `{config.base_model_revision}`)" if config.base_model_revision else "") + " |",
        f"| updates | {config.step} |",
        f"| text embedding | {config.num_tokens} tokens x {config.dim} |",
    ]
    lines += [f"| {name} | `{value}` |" for name, value in config.family_options.items()]
    lines += [f"| {name} | `{config.training_options[name]}` |" for name in CARD_OPTIONS if name in config.training_options]
    if has_grid:
        lines += ["", "## Validation grid", "",
                  f"Rows: unguided, CFG, DICE (fixed prompts and seeds) after {config.step} updates.", "",
                  f"![validation grid]({GRID_NAME})"]
    lines += ["", "<details><summary>All training options</summary>", "", "```json",
              json.dumps(config.training_options, indent=2, sort_keys=True, default=str), "```", "", "</details>"]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")

