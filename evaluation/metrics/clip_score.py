"""CLIP score (SPEC §5): open_clip ViT-g-14 (laion2b_s34b_b88k), CS = mean_i 100·cos(img_i, txt_i).

No clamp at 0 (a negative cosine counts as negative). Image i is paired with prompt i through the
sample folder's manifest. The model is injectable: anything with ``encode_image`` and
``encode_text``, plus a ``preprocess`` (PIL → tensor) and a ``tokenizer`` (list[str] → tokens).
"""
from __future__ import annotations

import os
import time
from typing import Callable

import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache

from dice.errors import one_line
from evaluation.metrics.images import Processes, SampleFolderError, iterate_batches, open_image_collection
from evaluation.metrics.weights import MissingWeightsError, is_offline
from evaluation.record import MetricResult

CLIP_MODEL = "ViT-g-14"
CLIP_PRETRAINED = "laion2b_s34b_b88k"
CLIP_WEIGHTS_ENV = "DICE_CLIP_WEIGHTS"
CLIP_HUB_REPO = "laion/CLIP-ViT-g-14-laion2B-s34B-b88K"
CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # what open_clip fetches


def load_open_clip(weights: str | None = None, device: str | torch.device = "cpu"):
    """(model, preprocess, tokenizer) for ViT-g-14; ``weights``: local file, else $DICE_CLIP_WEIGHTS, else the hub."""
    weights = weights or os.environ.get(CLIP_WEIGHTS_ENV) or None
    missing = (
        f"CLIP score needs the open_clip {CLIP_MODEL} weights ({CLIP_PRETRAINED}): download "
        f"{' or '.join(CLIP_HUB_FILES)} from https://huggingface.co/{CLIP_HUB_REPO} "
        f"and pass --clip_weights PATH (or set {CLIP_WEIGHTS_ENV}=PATH)."
    )
    if weights and not os.path.isfile(weights):
        raise MissingWeightsError(f"CLIP weights file not found: {weights}. {missing}")
    if not weights and is_offline() and not _in_hub_cache():
        raise MissingWeightsError(f"{missing} (Offline: HF_HUB_OFFLINE=1, and not in the Hugging Face cache.)")
    import open_clip  # slow to import (~10 s): only once the weights are known to exist

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            CLIP_MODEL, pretrained=weights or CLIP_PRETRAINED, device=device
        )
    except RuntimeError as error:  # open_clip's wording for "could not download / find the weights"
        if weights or "download" not in str(error).lower():
            raise
        raise MissingWeightsError(f"{missing} ({one_line(error)})") from error
    return model.eval().requires_grad_(False), preprocess, open_clip.get_tokenizer(CLIP_MODEL)


def _in_hub_cache() -> bool:
    return any(isinstance(try_to_load_from_cache(CLIP_HUB_REPO, name), str) for name in CLIP_HUB_FILES)


def clip_scores(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """100·cos per pair, float64, unclamped."""
    image_embeddings = F.normalize(image_embeddings.to(torch.float64), dim=-1)
    text_embeddings = F.normalize(text_embeddings.to(torch.float64), dim=-1)
    return 100 * (image_embeddings * text_embeddings).sum(dim=-1)


def open_clip_options(weights: str | None = None) -> dict:
    """What a result scored with load_open_clip(weights) records about the network."""
    return {"model": CLIP_MODEL, "pretrained": weights or os.environ.get(CLIP_WEIGHTS_ENV) or CLIP_PRETRAINED}


def calc_clip_score(
    images: str | os.PathLike,
    *,
    model=None,
    preprocess: Callable | None = None,
    tokenizer: Callable | None = None,
    clip_weights: str | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    allow_incomplete: bool = False,
    processes: Processes | None = None,
    metric: str = "clip_score",
    options: dict | None = None,
) -> MetricResult:
    """Mean CLIP score of a sample folder (prompts from its manifest), over all processes.

    ``metric`` / ``options``: for another score of the same form, 100·cos(image, prompt) under an
    injected model (HPS v2.1 is one); ``options`` describe that model in the result."""
    started = time.time()
    processes = processes or Processes()
    # Image i is paired with prompt i through the manifest.
    collection = open_image_collection(images, allow_incomplete=allow_incomplete, need_prompts=True)
    if any(record.prompt is None for record in collection.records):
        raise SampleFolderError(f"{collection.path}/manifest.jsonl has entries without a 'prompt'. Run sample.py again into this folder")
    if model is None:
        model, preprocess, tokenizer = load_open_clip(clip_weights, processes.device)
        options = open_clip_options(clip_weights)
    else:
        options = dict(options or {"model": type(model).__name__})
    totals = torch.zeros(2, dtype=torch.float64)  # [sum of scores, count]
    for records, pixels in iterate_batches(
        collection,
        processes.shard(collection.records),
        preprocess,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=processes.is_main,
        description=metric,
    ):
        with torch.no_grad():
            image_embeddings = model.encode_image(torch.stack(pixels).to(processes.device))
            text_embeddings = model.encode_text(tokenizer([r.prompt for r in records]).to(processes.device))
        scores = clip_scores(image_embeddings, text_embeddings).cpu()
        totals += torch.tensor([scores.sum().item(), len(scores)], dtype=torch.float64)
    return MetricResult.mean_over_processes(metric, totals, processes, collection, options, allow_incomplete, started)
