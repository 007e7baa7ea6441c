"""The converged DICE sharpeners shipped with the shapes world, and the one command that rebuilds each.

    python -m dice.shapes_world sharpener --out dice/assets/shapes_world                 # the epsilon world's
    python -m dice.shapes_world sharpener --family flow --out dice/assets/shapes_world   # the flow-matching world's

renders the world's training images, trains ``train_sd15.py`` (``train_sd3.py`` for the flow world) ``--preset
shapes-world`` (the recipe chosen on a validation prompt set of its own seed; see dice/presets.py) on the shipped
model, exports the last checkpoint in the Hub layout into ``<out>/sharpener/`` (``<out>/sharpener-flow/``:
model.safetensors, config.json, a model card, the validation grid) with ``recipe.json`` beside it, and refreshes
``<out>/SHA256SUMS``. An interrupted build resumes its run. The result is bit-identical only with the same torch
build and thread count.
"""
from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..experiments import latest_checkpoint
from ..export import export_sharpener
from ..presets import preset
from ..training import main as train_main
from .pretrain import write_checksums
from .scoring import DEFAULT_FLOW_PIPELINE, DEFAULT_FLOW_SHARPENER, DEFAULT_PIPELINE, DEFAULT_SHARPENER
from .world import write_imagefolder

SHIPPED_PRESET = "shapes-world"  # of the world's family (dice.presets: sd15's, sd3's)
TRAIN_IMAGES = 4000
VALIDATION_PROMPTS = [
    "a red circle and a blue square", "a yellow triangle next to a green cross",
    "a white square on the left and a purple circle on the right", "a blue cross and a red triangle",
]


@dataclass(frozen=True)
class ShippedSharpener:
    """Where one world's shipped sharpener comes from and goes."""

    family: str  # the adapter family: train_<family>.py
    pipeline: Path  # the world's shipped model
    model_name: str  # the short name its config records (dice.presets.MODELS), not this machine's path
    folder: Path  # where it ships
    command: str  # the command that rebuilds it (recipe.json)
    desc: str  # its run's folder suffix under --work


SHIPPED = {
    "eps": ShippedSharpener("sd15", DEFAULT_PIPELINE, "shapes-world", DEFAULT_SHARPENER,
                            "python -m dice.shapes_world sharpener --out dice/assets/shapes_world", "shipped-sharpener"),
    "flow": ShippedSharpener("sd3", DEFAULT_FLOW_PIPELINE, "shapes-world-flow", DEFAULT_FLOW_SHARPENER,
                             "python -m dice.shapes_world sharpener --family flow --out dice/assets/shapes_world",
                             "shipped-sharpener-flow"),
}


def build(out: str | Path, work: str | Path, threads: int | None = None, family: str = "eps") -> dict:
    """Train the shipped preset's run of the ``family`` world in ``work`` (continuing an interrupted one), then ship
    its last checkpoint."""
    shipped = SHIPPED[family]
    out, work = Path(out), Path(work)
    if threads:
        torch.set_num_threads(threads)
    data = write_imagefolder(work / f"shapes-world-train-{TRAIN_IMAGES}", TRAIN_IMAGES, "train")
    argv = ["--pretrained_model_name_or_path", str(shipped.pipeline), "--train_data_dir", str(data), "--preset", SHIPPED_PRESET,
            "--output_dir", str(work / "exps"), "--desc", shipped.desc, "--dataloader_num_workers", "0",
            "--validation_prompts", *VALIDATION_PROMPTS]
    runs = sorted((work / "exps").glob(f"[0-9][0-9][0-9][0-9][0-9]-{shipped.desc}"))
    if runs and latest_checkpoint(runs[-1]):
        argv += ["--resume_from_checkpoint", "latest", "--experiment", str(runs[-1])]
    print(f"$ python train_{shipped.family}.py {shlex.join(argv)}", flush=True)
    run_dir = train_main(shipped.family, argv)
    return ship(latest_checkpoint(run_dir), out, family)


def ship(checkpoint: Path, out: str | Path, family: str = "eps") -> dict:
    """Export ``checkpoint`` (a run of the shipped preset's recipe on the ``family`` world) into its folder under
    ``out`` with its recipe.json, and refresh ``<out>/SHA256SUMS``."""
    shipped = SHIPPED[family]
    out = Path(out)
    target, staging = out / shipped.folder.name, out / f".{shipped.folder.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    # The short name, not this machine's path: sample.py and dice.apply resolve it (dice.presets.MODELS).
    export_sharpener(checkpoint, staging, base_model=shipped.model_name)
    config = json.loads((staging / "config.json").read_text())
    recipe = {
        "command": shipped.command,
        "preset": SHIPPED_PRESET, "recipe": preset(shipped.family, SHIPPED_PRESET), "train_images": TRAIN_IMAGES,
        "updates": config["step"], "training_samples": config["step"] * config["training_options"]["global_batch_size"],
        "torch": torch.__version__,
        "chosen_on": "validation prompts drawn with seed 1 (python -m dice.shapes_world prompts --seed 1), never the "
                     "demo's (seed 0) or the further held-out set (seed 2); see docs/shapes_world.md",
    }
    (staging / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    write_checksums(out)
    print(f"wrote {target}: {', '.join(sorted(p.name for p in target.iterdir()))}")
    return recipe
