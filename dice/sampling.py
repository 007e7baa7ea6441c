"""The one sampling routine: embeddings in, stock diffusers pipeline out.

Unguided (``cfg_scale=1``, one network evaluation per step), CFG, DICE (a sharpener rewrites the
prompt embedding, strength ``alpha``), DICE + CFG, Scaling (``embedding_scale``) and the trained
baselines GD and PnP (``trained``, at ``gd_scale``) are all the same call with different arguments;
each trained method says what it hands the stock pipeline (dice.methods).
Image i's starting noise depends only on its own seed, so results do not depend on batch size or
the number of processes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import nn
from tqdm.auto import tqdm

from .adapters.base import Adapter, Conditioning
from .addon import is_applied
from .errors import UserError
from .methods.base import TrainedModel
from .methods.dice import DiceMethod
from .methods.scaling import scale_prompt_embedding
from .paper import GUIDANCE_SCALE

SCHEDULERS = {
    # name -> (diffusers class, config overrides). DPM-Solver++ 2M is the paper's sampler (SPEC section 5); each
    # family says which it samples with by default (Adapter.default_scheduler) and what a scheduler needs beyond
    # the model's own config (Adapter.scheduler_overrides: flow sigmas for a flow-matching family).
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),  # flow matching's own sampler (SD3's stock scheduler)
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


class UnknownScheduler(UserError, ValueError):
    pass


class FolderOfAnotherConfiguration(UserError, ValueError):
    pass


def scheduler_choice(name: str) -> tuple[str, dict]:
    """(diffusers class name, config overrides) of a --scheduler value; refused before any model loads."""
    import diffusers

    if name in SCHEDULERS:
        return SCHEDULERS[name]
    if hasattr(diffusers, name) and name.endswith("Scheduler"):
        return name, {}
    raise UnknownScheduler(f"unknown scheduler {name!r}. Use one of {sorted(SCHEDULERS)} or a diffusers *Scheduler class name")


def make_scheduler(name: str, adapter: Adapter):
    """A sampling scheduler built from the base model's own scheduler config (its noise schedule), with what the
    family needs on top (flow sigmas and the model's shift for a flow-matching model)."""
    import diffusers

    class_name, overrides = scheduler_choice(name)
    family_overrides = adapter.scheduler_overrides(class_name)
    return getattr(diffusers, class_name).from_config(adapter.noise_scheduler.config, **overrides, **family_overrides)


def use_scheduler(adapter: Adapter, name: str | None = None) -> None:
    """Sample with the scheduler ``name`` (default: the family's, the paper's DPM-Solver++ for epsilon models)."""
    adapter.pipe.scheduler = make_scheduler(name or adapter.default_scheduler, adapter)


def image_seed(base_seed: int, index: int) -> int:
    """Seed of image ``index``: a function of the index alone, whatever the batching."""
    return base_seed + index


def initial_noise(adapter: Adapter, seeds: list[int], resolution: int) -> torch.Tensor:
    size = resolution // adapter.vae_scale_factor
    noise = [torch.randn(adapter.latent_channels, size, size, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(noise).to(adapter.device, adapter.dtype)


@torch.no_grad()
def generate(
    adapter: Adapter, prompts: list[str], seeds: list[int], *, sharpener: nn.Module | None = None,
    alpha: float = 1.0, trained=None, gd_scale: float = GUIDANCE_SCALE, embedding_scale: float = 1.0, cfg_scale: float = 1.0,
    steps: int = 20, negative_prompt: str | list[str] = "", resolution: int | None = None, output_type: str = "pil",
):
    """Generate one image per prompt; returns PIL images, or final latents if ``output_type="latent"``.

    The negative prompt (one for all, or one per prompt) is the CFG negative and, for DICE, the
    sharpener's context ``u``. ``sharpener`` (strength ``alpha``) is DICE; ``trained`` is any trained
    method (a :class:`dice.methods.TrainedModel`), GD and PnP at guidance scale ``gd_scale`` (one network
    evaluation per step, no CFG); ``embedding_scale`` multiplies the prompt embedding (Scaling).
    """
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if not len(prompts) == len(seeds) == len(negatives):
        raise ValueError("one seed and one negative prompt per prompt")
    if is_applied(adapter.pipe):  # its __call__ would sharpen these embeddings a second time
        raise ValueError("this pipeline has a sharpener applied (dice.apply): call the pipeline itself, or dice.remove(pipe) first")
    if sharpener is not None:
        if trained is not None:
            raise ValueError("give a sharpener or a trained model, not both")
        trained = TrainedModel(DiceMethod(), sharpener)
    strength = alpha if trained is not None and trained.method.combines_with_cfg else gd_scale
    if trained is not None and cfg_scale != 1 and not trained.method.combines_with_cfg:
        raise ValueError(f"a {trained.method.title} model replaces CFG: sample it with gd_scale, and cfg_scale 1")
    resolution = resolution or adapter.default_resolution
    cond = adapter.encode_prompts(list(prompts))
    if embedding_scale != 1:
        cond = scale_prompt_embedding(adapter, cond, embedding_scale)
    # The baselines' u is the stock pipeline's (SDXL: zeros for ""); a trained method's u is the one it was trained with.
    uncond = adapter.encode_negative(negatives) if trained is not None else adapter.encode_stock_negative(negatives)
    if trained is not None:
        cond, uncond = trained.method.condition(adapter, trained.module, cond, uncond, strength)
        context = trained.method.pipeline(adapter, trained.module, strength, resolution)
    else:
        context = contextlib.nullcontext((adapter.pipe, {}))
    with context as (pipe, method_kwargs):
        return generate_from_conditioning(adapter, cond, uncond, seeds, cfg_scale=cfg_scale, steps=steps,
                                          resolution=resolution, output_type=output_type, pipe=pipe,
                                          method_kwargs=method_kwargs)


@torch.no_grad()
def generate_from_conditioning(
    adapter: Adapter, cond: Conditioning, uncond: Conditioning, seeds: list[int], *, cfg_scale: float = 1.0,
    steps: int = 20, resolution: int | None = None, output_type: str = "pil", callback=None, pipe=None,
    method_kwargs: dict | None = None,
):
    """The stock pipeline on embeddings already made (e.g. halves of original and sharpened ones, paper
    Fig. 7); ``callback(pipe, step, timestep, kwargs)`` is the pipeline's per-step hook. ``pipe`` and
    ``method_kwargs`` are what a trained method samples with (default: the adapter's pipeline as is)."""
    resolution = resolution or adapter.default_resolution
    extra = {"callback_on_step_end": callback} if callback else {}
    out = (pipe or adapter.pipe)(
        **adapter.pipeline_kwargs(cond.to(adapter.device, adapter.dtype), uncond.to(adapter.device, adapter.dtype)),
        **{"guidance_scale": cfg_scale, **(method_kwargs or {})}, num_inference_steps=steps, height=resolution,
        width=resolution, latents=initial_noise(adapter, seeds, resolution), output_type=output_type, **extra,
    )
    return out.images


def image_grid(rows: list[list], labels: list[str] | None = None, captions: list[str] | None = None, scale: int = 1):
    """Paste equally sized PIL images into a grid: one row per method (``labels`` on the left), one
    column per prompt (``captions`` wrapped under each column). ``scale`` enlarges small images
    (nearest neighbour, so pixels stay pixels)."""
    w, h = (side * scale for side in rows[0][0].size)
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_w = max(1, draw_probe.textlength("M"))
    pad = int(max((draw_probe.textlength(label) for label in labels), default=0) + 12) if labels else 0
    wrapped = [textwrap.wrap(c, max(4, int((w - 4) // char_w))) for c in captions] if captions else []
    caption_h = 12 * max((len(lines) for lines in wrapped), default=0) + (6 if captions else 0)
    columns = max(len(r) for r in rows)
    gap = 4 if scale > 1 else 0  # enlarged cells get a white border so neighbouring images stay apart
    pitch_w, pitch_h = w + gap, h + gap
    grid = Image.new("RGB", (pad + pitch_w * columns, pitch_h * len(rows) + caption_h), "white")
    draw = ImageDraw.Draw(grid)
    for y, row in enumerate(rows):
        if labels:
            draw.text((4, y * pitch_h + h // 2 - 5), labels[y], fill="black")
        for x, img in enumerate(row):
            grid.paste(img.resize((w, h), Image.NEAREST) if scale != 1 else img, (pad + x * pitch_w, y * pitch_h))
    for x, lines in enumerate(wrapped):
        for k, line in enumerate(lines):
            draw.text((pad + x * pitch_w + 2, pitch_h * len(rows) + 3 + 12 * k), line, fill="black")
    return grid


# ---- sampling a prompt list into a folder (sample.py) ------------------------------------------

MANIFEST = "manifest.jsonl"
OPTIONS_FILE = "sampling_options.json"
# Options that change the images; the folder name and the resume check depend on exactly these.
IMAGE_DEFINING = ("family", "base_model", "family_options", "method", "cfg_scale", "alpha", "steps", "scheduler",
                  "resolution", "seed", "negative_prompt", "prompts", "sharpener", "sharpener_step")
# Image-defining too, but only where set: folders written before they existed keep their names.
IMAGE_DEFINING_IF_SET = ("gd_scale", "embedding_scale", "trained_model", "trained_step", "output_filters_off", "null_embedding")


def image_defining(options: dict) -> dict:
    return {**{k: options.get(k) for k in IMAGE_DEFINING},
            **{k: options[k] for k in IMAGE_DEFINING_IF_SET if options.get(k) is not None}}


def method_name(trained_method: str | None, cfg_scale: float, embedding_scale: float = 1.0) -> str:
    """The method of a sampling run: a trained one (dice, gd, pnp), or the base model unguided / with
    CFG, its prompt embedding scaled or not (Scaling)."""
    if trained_method in (None, "dice"):
        base = "dice" if trained_method else "scaling" if embedding_scale != 1 else None
        if base:
            return f"{base}+cfg" if cfg_scale > 1 else base
        return "cfg" if cfg_scale > 1 else "unguided"
    return trained_method


def sample_folder_name(options: dict) -> str:
    """One naming rule for sample folders, shared by sample.py and the evaluators.

    A readable part (model, method, knobs, prompts) plus a short hash of every image-defining option,
    so two configurations never share a folder.
    """
    model = Path(str(options["base_model"]).rstrip("/")).name.replace(".safetensors", "")
    parts = [model, options["method"].replace("+", "-")]
    experiment = options.get("sharpener_experiment") or options.get("trained_experiment")
    if experiment:  # a run's number, or a Hub repo id made folder-safe
        parts.append(experiment.replace("/", "--") if "/" in experiment else experiment.split("-")[0])
    if options["cfg_scale"] != 1:
        parts.append(f"w{options['cfg_scale']:g}")
    if options.get("alpha") is not None:
        parts.append(f"a{options['alpha']:g}")
    if options.get("gd_scale") is not None:
        parts.append(f"g{options['gd_scale']:g}")
    if options.get("embedding_scale") is not None:
        parts.append(f"s{options['embedding_scale']:g}")
    parts += [f"{options['steps']}steps", Path(str(options["prompts"])).stem]
    digest = hashlib.sha1(json.dumps(image_defining(options), sort_keys=True, default=str).encode())
    return "-".join(parts) + "-" + digest.hexdigest()[:6]


def write_atomic(path: Path, write) -> None:
    """``write(tmp)`` then rename onto ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)  # a killed run never leaves a truncated file under the final name


def finished_indices(folder: Path) -> set[int]:
    return {int(p.stem) for p in folder.glob("[0-9]*.png") if p.stem.isdigit()}


def write_manifest(folder: Path, prompts: list[tuple[int, str]], base_seed: int, negatives: dict[int, str] | None = None) -> int:
    """Manifest of the images that exist, in index order; returns their count.

    Rewritten as images are finished, so a killed run leaves a manifest of what it finished.
    """
    done = finished_indices(folder)
    negatives = negatives or {}
    lines = [json.dumps({"index": i, "prompt": p, "seed": image_seed(base_seed, i), "file": f"{i:05d}.png",
                         "negative_prompt": negatives.get(i, "")}, ensure_ascii=False)
             for i, p in prompts if i in done]
    write_atomic(folder / MANIFEST, lambda tmp: tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8"))
    return len(lines)


def prepare_folder(outdir: Path, options: dict) -> Path:
    """The configuration's folder; refuses to mix images of different configurations."""
    folder = Path(outdir) / sample_folder_name(options)
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / OPTIONS_FILE
    if saved.is_file():
        previous, current = image_defining(json.loads(saved.read_text())), image_defining(options)
        changed = {k: (previous.get(k), current.get(k)) for k in previous.keys() | current.keys() if previous.get(k) != current.get(k)}
        if changed:
            raise FolderOfAnotherConfiguration(f"{folder} holds images of another configuration ({changed}). Use another --outdir")
    write_atomic(saved, lambda tmp: tmp.write_text(json.dumps(options, indent=2, default=str) + "\n"))
    return folder


def sample_prompts(
    adapter: Adapter, prompts: list[tuple[int, str]], folder: Path, *, sharpener=None, alpha: float = 1.0,
    trained=None, gd_scale: float = GUIDANCE_SCALE, embedding_scale: float = 1.0,
    cfg_scale: float = 1.0, steps: int = 20, negative_prompt: str | dict[int, str] = "", resolution: int | None = None,
    seed: int = 0, batch_size: int = 8, rank: int = 0, world: int = 1, barrier=lambda: None, progress: bool = True,
) -> int:
    """Generate every missing image of ``prompts`` into ``folder``; returns how many this process made.

    ``negative_prompt``: one for all images, or one per prompt index. Each process takes every
    ``world``-th missing index; ``barrier`` synchronises processes so they all see the same list of
    missing images before anyone writes. Process 0 rewrites the manifest after each of its batches.
    """
    negatives = negative_prompt if isinstance(negative_prompt, dict) else {i: negative_prompt for i, _ in prompts}

    missing = [(i, p) for i, p in prompts if i not in finished_indices(folder)]
    barrier()
    mine = missing[rank::world]
    bar = tqdm(total=len(missing), desc=f"sampling {folder.name}", disable=not progress or rank != 0)
    for start in range(0, len(mine), batch_size):
        chunk = mine[start:start + batch_size]
        images = generate(
            adapter, [p for _, p in chunk], [image_seed(seed, i) for i, _ in chunk], sharpener=sharpener,
            alpha=alpha, trained=trained, gd_scale=gd_scale, embedding_scale=embedding_scale,
            cfg_scale=cfg_scale, steps=steps, negative_prompt=[negatives[i] for i, _ in chunk],
            resolution=resolution,
        )
        for (i, _), image in zip(chunk, images):
            write_atomic(folder / f"{i:05d}.png", lambda tmp, image=image: image.save(tmp, format="PNG"))
        if rank == 0:
            write_manifest(folder, prompts, seed, negatives)
        bar.update(len(chunk) * world)
    bar.close()
    barrier()
    return len(mine)
