"""Training presets per family, as data built from the paper's facts (:mod:`dice.paper`). A command-line value
overrides a preset only when given.

"paper": what the paper states (Adam, lr 2e-4, batch 128, ~8,000 updates, w = 5, squared error).
"authors": what the authors' launch scripts do (AdamW wd 1e-2, L1 for SD1.5, the error summed and divided by the
global batch, one timestep per global batch, fp16 autocast of the bf16 networks, 16/GPU x 8 for SD1.5, 8/GPU x 8 and
4,000 updates for SDXL; GD / PnP: one ω per global batch, GD's student told int(ω)). Which of the two produced each
Table-1 block: dice.paper.TABLE1_PRESETS.
"toy": the shapes world's quick runs (table1 / figures toy); "toy-demo": its demo (`bash launch.sh demo`);
"shapes-world": its shipped converged sharpener;
SD3 and PixArt-Sigma (not in the paper) take the paper's recipe at their own size;
"demo": the random-weight plumbing demos.
Per-GPU batch sizes assume 8 processes; the global batch is batch x processes x accumulation.
GD and PnP take the family's preset with the authors' baseline settings on top (METHOD_PRESETS, and with "authors"
AUTHORS_METHOD_PRESETS).
"""
from __future__ import annotations

import os
from pathlib import Path

from . import paper
from .adapters import pixart_sigma, sd3

_PAPER = paper.RECIPE
_AUTHORS = {**paper.RECIPE, **paper.AUTHORS_RECIPE}
_TINY = dict(_PAPER, resolution=32, max_train_steps=600, checkpointing_steps=300)  # the plumbing demos

# The flow-matching shapes world (python -m dice.shapes_world pretrain --family flow; docs/shapes_world.md): an
# SD3-architecture model without T5, pretrained with 8 all-zero T5 rows, so it is encoded and sampled with
# max_sequence_length 8; CFG's w = 3 was chosen for it on validation prompts. Every preset on it starts from these.
SHAPES_WORLD_FLOW = str(Path(__file__).parent / "assets" / "shapes_world" / "shapes-world-flow")
SHAPES_WORLD_FLOW_OPTIONS = {"max_sequence_length": 8}
SHAPES_WORLD_FLOW_GUIDANCE_SCALE = 3.0
_FLOW_WORLD = dict(_PAPER, resolution=32, guidance_scale=SHAPES_WORLD_FLOW_GUIDANCE_SCALE, **SHAPES_WORLD_FLOW_OPTIONS)
# The DICE recipe on it, chosen on validation prompts of their own seed (docs/shapes_world.md, DICE under flow matching).
_FLOW_DICE = dict(learning_rate=1e-3, flow_sigmas="logit_normal", pooled_embedding="sharpen")

PRESETS: dict[str, dict[str, dict]] = {
    "sd15": {
        "paper": dict(_PAPER, resolution=paper.MODELS["sd15"].resolution),
        "authors": dict(_AUTHORS, resolution=paper.MODELS["sd15"].resolution, **paper.AUTHORS_FAMILY["sd15"]),
        "demo": _TINY,
        # The shapes world's quick runs (`bash launch.sh table1 toy`, `figures toy`; the demo's until issue 30): 600
        # updates of 16 at 32 px; at that budget lr 1e-3 with a moving average of the weights beat the paper's constant
        # 2e-4 on validation prompts (docs/shapes_world.md: 34-39% of CFG's gain against 25%).
        "toy": dict(_PAPER, resolution=32, max_train_steps=600, checkpointing_steps=600, learning_rate=1e-3, ema_decay=0.99),
        # The shapes world's demo (`bash launch.sh demo`): the toy's training time on 2 CPU cores spent at batch 64,
        # which buys more samples per second; recipe chosen on validation prompts (docs/shapes_world.md, the demo).
        # u is the empty prompt for every sample, projected once per batch (--project_u_once): the same function,
        # ~20% less time per update, which keeps the demo within its 3.5 minutes on 2 idle cores.
        "toy-demo": dict(_PAPER, resolution=32, train_batch_size=64, max_train_steps=200, checkpointing_steps=200,
                         learning_rate=1e-3, ema_decay=0.99, project_u_once=True),
        # The converged sharpener shipped with the shapes world (python -m dice.shapes_world sharpener): the recipe
        # chosen on validation prompts of their own seed (docs/shapes_world.md), trained for the 60-minute budget on
        # 2 CPU cores, 2,250 updates, where validation accuracy still rose by ~0.01 per 250 updates.
        "shapes-world": dict(_PAPER, train_batch_size=64, resolution=32, learning_rate=1e-3, ema_decay=0.999,
                             max_train_steps=2250, checkpointing_steps=250),
    },
    "sdxl": {
        "paper": dict(_PAPER, resolution=paper.MODELS["sdxl"].resolution),
        "authors": dict(_AUTHORS, resolution=paper.MODELS["sdxl"].resolution, **paper.AUTHORS_FAMILY["sdxl"]),
        "demo": _TINY,
    },
    # 512 = PixArt-XL-2-512x512 (default); 1024 = PixArt-XL-2-1024-MS.
    "pixart": {
        "paper": dict(_PAPER, resolution=paper.MODELS["pixart"].resolution),
        "paper-1024": dict(_PAPER, resolution=paper.MODELS["pixart-1024"].resolution),
        "authors": dict(_AUTHORS, resolution=paper.MODELS["pixart"].resolution, **paper.AUTHORS_FAMILY["pixart"]),
        "demo": _TINY,
    },
    # Families the paper does not have: its recipe (and w = 5 unless the model's card gives a scale, dice.options)
    # at the model's own size. PixArt-Sigma: 1024 (PixArt-Sigma-XL-2-1024-MS, default), 512 (the 512 transformer).
    "pixart-sigma": {
        "paper": dict(_PAPER, resolution=pixart_sigma.MODELS["pixart-sigma"][2]),
        "paper-512": dict(_PAPER, resolution=pixart_sigma.MODELS["pixart-sigma-512"][2]),
        "demo": _TINY,
    },
    # SD3 / SD3.5 at their 1024 px; the teacher's w is the model card's (SD3.5 Medium 4.5, Large 3.5, SD3 Medium 7).
    "sd3": {
        "paper": dict(_PAPER, resolution=sd3.MODEL_CARDS["sd3.5-medium"].resolution),
        "demo": _TINY,
        # The flow shapes world's, as the epsilon world's sd15 presets of the same names: "toy" its quick runs
        # (`bash launch.sh table1 toy-flow`), "toy-demo" its demo
        # (`bash launch.sh demo shapes-flow`), "shapes-world" its shipped sharpener (python -m dice.shapes_world
        # sharpener --family flow).
        "toy": dict(_FLOW_WORLD, **_FLOW_DICE, max_train_steps=600, checkpointing_steps=600, ema_decay=0.99),
        "toy-demo": dict(_FLOW_WORLD, **_FLOW_DICE, train_batch_size=64, max_train_steps=200, checkpointing_steps=200,
                         ema_decay=0.99),
        # The shipped flow sharpener: the epsilon world's shipped recipe (batch 64, EMA 0.999) and budget, 2,250 updates
        # (docs/shapes_world.md, DICE under flow matching; first shipped at 250, then continued: the lr is constant).
        "shapes-world": dict(_FLOW_WORLD, **_FLOW_DICE, train_batch_size=64, ema_decay=0.999, max_train_steps=2250,
                             checkpointing_steps=250),
    },
}
# GD and PnP on top of the family's preset (batch, resolution, updates, timesteps); a fixed --guidance_scale
# replaces their drawn ω. With the authors' preset, also the way their GD / PnP scripts ran.
METHOD_PRESETS: dict[str, dict] = {"dice": {}, "gd": paper.DISTILLED_GUIDANCE_RECIPE, "pnp": paper.DISTILLED_GUIDANCE_RECIPE}
AUTHORS_METHOD_PRESETS: dict[str, dict] = {
    "dice": {}, "gd": {**paper.AUTHORS_DISTILLED_GUIDANCE, **paper.AUTHORS_GD}, "pnp": paper.AUTHORS_DISTILLED_GUIDANCE,
}


def preset(family: str, name: str, method: str = "dice") -> dict:
    if family not in PRESETS or name not in PRESETS[family]:
        choices = ", ".join(PRESETS.get(family, {})) or "none"
        raise ValueError(f"no preset {name!r} for {family}; choose one of: {choices}")
    authors = AUTHORS_METHOD_PRESETS[method] if name.startswith("authors") else {}
    return {**PRESETS[family][name], **METHOD_PRESETS[method], **authors}


# The trained toy model shipped in dice/assets/shapes_world (python -m dice.shapes_world pretrain): an
# SD1.5-architecture model, so Scaling takes SD1.5's s.
SHAPES_WORLD = str(Path(__file__).parent / "assets" / "shapes_world" / "shapes-world")

# Short model names for sample.py --model_name and launch.sh: the paper's base models, and the shapes world.
# DreamShaper PixelArt and 3D Animation Diffusion are civitai single files: pass the downloaded path.
MODELS: dict[str, tuple[str, str]] = {
    **{name: (model.family, model.hub_ids[0]) for name, model in paper.MODELS.items()},
    **{name: ("sd3", card.hub_id) for name, card in sd3.MODEL_CARDS.items()},
    **{name: ("pixart-sigma", pipeline) for name, (pipeline, _, _) in pixart_sigma.MODELS.items()},
    "shapes-world": ("sd15", SHAPES_WORLD),
    "shapes-world-flow": ("sd3", SHAPES_WORLD_FLOW),
}
# Family options a short name brings with it: the 512 PixArt-Sigma checkpoint is a transformer in the 1024 pipeline;
# the flow shapes world is encoded with its 8 zero T5 rows.
MODEL_FAMILY_OPTIONS: dict[str, dict] = {
    name: {pixart_sigma.TRANSFORMER_OPTION: transformer}
    for name, (_, transformer, _) in pixart_sigma.MODELS.items() if transformer
} | {"shapes-world-flow": SHAPES_WORLD_FLOW_OPTIONS}
# Scaling's s per short name: Table 1's, the shapes world SD1.5's; the flow world's (SD3 architecture, which the paper
# has not) chosen on validation prompts of their own seed (benchmarks/flow_scaling.py, docs/shapes_world.md).
EMBEDDING_SCALES = {**{name: m.embedding_scale for name, m in paper.MODELS.items() if m.embedding_scale},
                    "shapes-world": paper.MODELS["sd15"].embedding_scale, "shapes-world-flow": 1.6}


def model_location(name: str) -> str:
    """The hub id or path a short model name (MODELS) stands for; any other name or path unchanged.
    Configs may record a short name (the shipped shapes-world sharpener records "shapes-world")."""
    return MODELS[name][1] if name in MODELS else name


def same_base_model(a: str | None, b: str | None) -> bool:
    """Whether two names of a base model stand for the same model: short names (MODELS) resolved, local paths
    compared as files (any spelling of the same folder), hub ids without regard to case."""
    if not a or not b:
        return False
    a, b = model_location(str(a)), model_location(str(b))
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return a.rstrip("/").lower() == b.rstrip("/").lower()
