"""Scoring generated shapes-world images: prompt accuracy and the evaluator-feature Fréchet distance.

* Prompt accuracy: an image is right when the evaluator's four predicted attributes all equal the
  prompt's; reported pooled, on seen and on unseen combinations, with a percentile-bootstrap 95%
  interval over prompts.
* Fréchet distance (FD) of evaluator features: generated images vs ``REFERENCE_RENDERS_PER_PROMPT``
  real renders of each prompt (the same prompt list, new layouts), float64 statistics and the same
  Fréchet function as FID. With a few hundred images in 128 dimensions the estimate carries a large
  small-sample bias, so ``fd_real_vs_real`` (two independent real sets, the generated set's size
  against the reference) is reported beside it as the floor a perfect model would reach.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from evaluation.metrics.fid import FeatureStats, frechet_distance

from ..adapters import adapter_class
from ..errors import UserError
from ..sampling import generate, use_scheduler
from . import evaluator as ev
from .model import FLOW_T5_TOKENS, flow_sampler
from .world import ATTRIBUTES, Combination, evaluation_prompts, parse_caption, random_scene, render, unseen_combinations

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "shapes_world"
DEFAULT_PIPELINE = ASSETS / "shapes-world"
DEFAULT_EVALUATOR = ASSETS / "evaluator"
DEFAULT_SHARPENER = ASSETS / "sharpener"  # the converged DICE sharpener of the shipped model
DEFAULT_FLOW_PIPELINE = ASSETS / "shapes-world-flow"  # the flow-matching twin (StableDiffusion3Pipeline)
DEFAULT_FLOW_SHARPENER = ASSETS / "sharpener-flow"  # the converged DICE sharpener of the flow-matching twin
REFERENCE_RENDERS_PER_PROMPT = 4


class NotAWorldPrompt(UserError, ValueError):
    """A prompt the shapes world cannot score (not one of its caption templates)."""


def prompt_combinations(prompts: list[str]) -> list[Combination]:
    combos = [parse_caption(p) for p in prompts]
    bad = [p for p, c in zip(prompts, combos) if c is None]
    if bad:
        raise NotAWorldPrompt(
            f"{len(bad)} of {len(prompts)} prompts are not shapes-world captions (e.g. {bad[0]!r}). The world's "
            "evaluator scores only its own captions: sample with the world's prompts (python -m dice.shapes_world prompts)"
        )
    return combos


def to_uint8(images) -> torch.Tensor:
    """PIL images or a uint8 array/tensor [N, H, W, 3] -> uint8 tensor [N, 3, H, W]."""
    if isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] == 3:
        return images
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])).permute(0, 3, 1, 2).contiguous()


def reference_statistics(model, combos: list[Combination], per_prompt: int = REFERENCE_RENDERS_PER_PROMPT, seed: int = 0) -> FeatureStats:
    """Evaluator-feature statistics of real renders of ``combos`` (new random layouts, seeded)."""
    rng = random.Random(f"shapes-world/reference/{seed}")
    renders = [render(random_scene(c, rng)) for c in combos for _ in range(per_prompt)]
    features, _ = ev.predict(model, to_uint8(renders))
    stats = FeatureStats(features.shape[1])
    stats.update(features)
    return stats


def per_image_scores(model, images: torch.Tensor, combos: list[Combination]) -> tuple[torch.Tensor, torch.Tensor]:
    """(attribute-correct [N, 4] bool, features [N, 128] float64)."""
    features, predicted = ev.predict(model, images)
    return predicted == ev.labels_of(combos), features


def summarise(attribute_correct: torch.Tensor, unseen: torch.Tensor, generated: FeatureStats, reference: FeatureStats,
              real_floor: float | None = None) -> dict:
    """The reported numbers from per-image results and feature statistics."""
    correct = attribute_correct.all(dim=1).double().numpy()
    unseen = unseen.bool().numpy()
    lo, hi = ev.bootstrap_interval(correct)
    summary = {
        "accuracy": float(correct.mean()), "accuracy_ci95": [lo, hi],
        "accuracy_seen": float(correct[~unseen].mean()) if (~unseen).any() else None,
        "accuracy_unseen": float(correct[unseen].mean()) if unseen.any() else None,
        "num_images": len(correct), "num_seen": int((~unseen).sum()), "num_unseen": int(unseen.sum()),
        "attribute_accuracy": {a: float(attribute_correct[:, i].double().mean()) for i, a in enumerate(ATTRIBUTES)},
        "fd": frechet_distance(*generated.mean_cov(), *reference.mean_cov()),
    }
    if real_floor is not None:
        summary["fd_real_vs_real"] = real_floor
    return summary


def real_vs_real_fd(model, combos: list[Combination], reference: FeatureStats) -> float:
    """FD of one more real render per prompt against the reference: what a perfect generator scores."""
    real = reference_statistics(model, combos, per_prompt=1, seed=1)
    return frechet_distance(*real.mean_cov(), *reference.mean_cov())


def score_images(model, images, prompts: list[str]) -> dict:
    """Everything for one method's images (in one process)."""
    combos = prompt_combinations(prompts)
    images = to_uint8(images)
    attribute_correct, features = per_image_scores(model, images, combos)
    generated = FeatureStats(features.shape[1])
    generated.update(features)
    reference = reference_statistics(model, combos)
    unseen_set = unseen_combinations()
    unseen = torch.tensor([c in unseen_set for c in combos])
    return summarise(attribute_correct, unseen, generated, reference, real_vs_real_fd(model, combos, reference))


def is_flow_model(pipeline: str | Path) -> bool:
    """Whether a world model folder is the flow-matching one (a ``StableDiffusion3Pipeline``)."""
    index = Path(pipeline) / "model_index.json"
    return index.is_file() and json.loads(index.read_text()).get("_class_name") == "StableDiffusion3Pipeline"


def load_flow_pipeline(pipeline: str | Path = DEFAULT_FLOW_PIPELINE):
    """The flow world as a stock ``StableDiffusion3Pipeline``. A folder saved without T5 loads only with
    ``text_encoder_3=None, tokenizer_3=None`` passed (diffusers' way to run SD3 without T5)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(pipeline), text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_flow(pipe, prompts: list[str], seeds: list[int], guidance_scale: float, steps: int = 20):
    """The stock pipeline call, image i from ``torch.Generator().manual_seed(seeds[i])`` (the same starting
    noise as :func:`dice.sampling.initial_noise`), with the zero-T5 block the model was trained with."""
    return pipe(list(prompts), guidance_scale=guidance_scale, num_inference_steps=steps, max_sequence_length=FLOW_T5_TOKENS,
                generator=[torch.Generator().manual_seed(s) for s in seeds]).images


def _world_sampler(pipeline: str | Path, scheduler: str | None, sampling_shift: float | None):
    """(prompts, seeds, guidance scale, steps) -> images for a world model folder of either family."""
    if is_flow_model(pipeline):
        pipe = load_flow_pipeline(pipeline)
        if scheduler is not None or sampling_shift is not None:
            config = dict(pipe.scheduler.config)
            config["shift"] = config["shift"] if sampling_shift is None else sampling_shift
            pipe.scheduler = flow_sampler(scheduler or "euler", config)
        return lambda prompts, seeds, scale, steps: sample_flow(pipe, prompts, seeds, scale, steps)
    if sampling_shift is not None:
        raise UserError("--sampling_shift is a flow-matching scheduler's shift. Leave it out for the epsilon world")
    adapter = adapter_class("sd15").from_pretrained(str(pipeline), torch_dtype=torch.float32)
    adapter.freeze("cpu", torch.float32)
    use_scheduler(adapter, scheduler or "dpmsolver++")
    return lambda prompts, seeds, scale, steps: generate(adapter, prompts, seeds, cfg_scale=scale, steps=steps, resolution=32)


def measure_quality(pipeline: str | Path = DEFAULT_PIPELINE, evaluator: str | Path = DEFAULT_EVALUATOR,
                    num_prompts: int = 256, guidance_scale: float | list[float] = 5.0, steps: int = 20, batch_size: int = 64,
                    prompt_seed: int = 0, image_seed: int = 0, scheduler: str | None = None,
                    sampling_shift: float | None = None) -> dict:
    """Base-model quality, the criterion the world and model are fixed by (it never looks at DICE):
    prompt accuracy and FD of unguided and CFG sampling on the evaluation prompts (``prompt_seed``; image i
    from seed ``image_seed + i``). The epsilon world samples with DPM-Solver++, the flow world with its
    stock scheduler (flow-matching Euler), unless ``scheduler`` (or, flow world, ``sampling_shift``) says
    otherwise. Several guidance scales give one CFG entry and one ``cfg_gain_w<scale>`` each."""
    scales = [guidance_scale] if isinstance(guidance_scale, (int, float)) else list(guidance_scale)
    sample = _world_sampler(pipeline, scheduler, sampling_shift)
    model = ev.load_evaluator(evaluator)
    entries = evaluation_prompts(num_prompts, prompt_seed)
    prompts, seeds = [e["prompt"] for e in entries], [image_seed + e["index"] for e in entries]
    report = {}
    for name, scale in [("unguided", 1.0)] + [(f"cfg_w{w:g}", w) for w in scales]:
        images = []
        for start in range(0, len(prompts), batch_size):
            images += sample(prompts[start:start + batch_size], seeds[start:start + batch_size], scale, steps)
        report[name] = score_images(model, images, prompts)
    for w in scales:
        report["cfg_gain" if len(scales) == 1 else f"cfg_gain_w{w:g}"] = report[f"cfg_w{w:g}"]["accuracy"] - report["unguided"]["accuracy"]
    return report
