"""The shapes world's two metrics on a sample.py folder: prompt accuracy and evaluator-feature FD.

They play the roles of the CLIP score and FID on the toy world (dice/shapes_world/scoring.py says
how they differ). Images are paired with prompts through the folder's manifest and split over the
processes of `accelerate launch`; per-image results are summed back into one vector, so the bootstrap
interval sees every prompt.
"""
from __future__ import annotations

import os
import time

import torch

from dice.shapes_world import evaluator as ev
from dice.shapes_world.scoring import (
    DEFAULT_EVALUATOR,
    prompt_combinations,
    real_vs_real_fd,
    reference_statistics,
    summarise,
)
from dice.shapes_world.world import unseen_combinations
from evaluation.metrics.fid import FeatureStats
from evaluation.metrics.images import Processes, ToUint8Tensor, iterate_batches, open_image_collection
from evaluation.record import MetricResult


def calc_shapes_world(
    images: str | os.PathLike,
    *,
    evaluator=None,
    evaluator_path: str | os.PathLike | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    allow_incomplete: bool = False,
    processes: Processes | None = None,
) -> list[MetricResult]:
    """[prompt accuracy, FD] of a sample folder of shapes-world prompts."""
    started = time.time()
    processes = processes or Processes()
    collection = open_image_collection(images, allow_incomplete=allow_incomplete)
    if not collection.has_manifest or any(record.prompt is None for record in collection.records):
        raise ValueError(f"{collection.path}: the shapes-world scores pair image i with prompt i through manifest.jsonl, "
                         "which this folder lacks; score a folder written by sample.py.")
    combos = prompt_combinations([record.prompt for record in collection.records])  # refuse before any work
    evaluator_path = str(evaluator_path or DEFAULT_EVALUATOR)
    model = evaluator if evaluator is not None else ev.load_evaluator(evaluator_path, processes.device)
    position = {record.index: i for i, record in enumerate(collection.records)}
    attribute_correct = torch.zeros(len(combos), len(ev.ATTRIBUTES), dtype=torch.float64)
    generated = FeatureStats(ev.FEATURE_DIM)
    for records, batch in iterate_batches(collection, processes.shard(collection.records), ToUint8Tensor(),
                                          batch_size=batch_size, num_workers=num_workers, progress=processes.is_main,
                                          description="shapes-world evaluator"):
        rows = [position[r.index] for r in records]
        features, predicted = ev.predict(model, torch.stack(batch))
        attribute_correct[rows] = (predicted == ev.labels_of([combos[i] for i in rows])).double()
        generated.update(features)
    attribute_correct = processes.sum(attribute_correct)  # each image was scored on exactly one process
    generated.reduce(processes)
    model = model.cpu()
    reference = reference_statistics(model, combos)
    unseen_set = unseen_combinations()
    unseen = torch.tensor([c in unseen_set for c in combos])
    summary = summarise(attribute_correct.bool(), unseen, generated, reference, real_vs_real_fd(model, combos, reference))
    options = {"evaluator": evaluator_path if evaluator is None else type(evaluator).__name__,
               "num_processes": processes.world_size, "allow_incomplete": allow_incomplete}
    common = dict(count=summary["num_images"], images=collection.path, sampling_options=collection.sampling_options,
                  seconds=time.time() - started)
    accuracy = MetricResult(metric="world_accuracy", value=summary["accuracy"], options={
        **options, **{k: summary[k] for k in ("accuracy_ci95", "accuracy_seen", "accuracy_unseen", "num_seen",
                                              "num_unseen", "attribute_accuracy")}},
        per_image=attribute_correct.all(dim=1).int().tolist(), **common)
    fd = MetricResult(metric="world_fd", value=summary["fd"], options={
        **options, "fd_real_vs_real": summary["fd_real_vs_real"], "reference": "real renders of the same prompts"}, **common)
    return [accuracy, fd]
