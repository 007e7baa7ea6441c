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

import random
from pathlib import Path

import numpy as np
import torch

from evaluation.metrics.fid import FeatureStats, frechet_distance

from ..adapters import adapter_class
from ..errors import UserError
from ..sampling import generate, use_scheduler
from . import evaluator as ev
from .world import ATTRIBUTES, Combination, evaluation_prompts, parse_caption, random_scene, render, unseen_combinations

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "shapes_world"
DEFAULT_PIPELINE = ASSETS / "shapes-world"
DEFAULT_EVALUATOR = ASSETS / "evaluator"
DEFAULT_SHARPENER = ASSETS / "sharpener"  # the converged DICE sharpener of the shipped model
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


def measure_quality(pipeline: str | Path = DEFAULT_PIPELINE, evaluator: str | Path = DEFAULT_EVALUATOR,
                    num_prompts: int = 256, guidance_scale: float = 5.0, steps: int = 20, batch_size: int = 64) -> dict:
    """Base-model quality, the criterion the world and model are fixed by (it never looks at DICE):
    prompt accuracy and FD of unguided and CFG sampling on the evaluation prompts."""
    adapter = adapter_class("sd15").from_pretrained(str(pipeline), torch_dtype=torch.float32)
    adapter.freeze("cpu", torch.float32)
    use_scheduler(adapter, "dpmsolver++")
    model = ev.load_evaluator(evaluator)
    entries = evaluation_prompts(num_prompts)
    prompts, seeds = [e["prompt"] for e in entries], [e["index"] for e in entries]
    report = {}
    for name, scale in (("unguided", 1.0), (f"cfg_w{guidance_scale:g}", guidance_scale)):
        images = []
        for start in range(0, len(prompts), batch_size):
            images += generate(adapter, prompts[start:start + batch_size], seeds[start:start + batch_size],
                               cfg_scale=scale, steps=steps, resolution=32)
        report[name] = score_images(model, images, prompts)
    report["cfg_gain"] = report[f"cfg_w{guidance_scale:g}"]["accuracy"] - report["unguided"]["accuracy"]
    return report
