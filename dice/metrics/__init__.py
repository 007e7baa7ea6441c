"""Evaluation metrics (SPEC §5): FID, CLIP score, aesthetic score, and the results table.

Each ``calc_*`` reads an image folder (through sample.py's manifest when present), splits it over
the processes `accelerate launch` started, reduces float64 sums across them, and returns a
MetricResult that ``append_result`` writes to results.jsonl.
"""
from dice.errors import exit_on_user_error  # re-exported: the evaluators' entry points use it
from dice.metrics.aesthetic import AestheticMLP, aesthetic_scores, calc_aesthetic, load_aesthetic_head, load_clip_l
from dice.metrics.clip_score import calc_clip_score, clip_scores, load_open_clip
from dice.metrics.fid import (
    FeatureStats,
    build_reference,
    calc_fid,
    compute_feature_stats,
    fid_from_files,
    frechet_distance,
    load_inception,
    load_stats,
    save_stats,
)
from dice.metrics.images import ImageCollection, ImageRecord, IncompleteSamplesError, Processes, open_image_collection
from dice.metrics.results import MetricResult, append_result, build_table, read_results, write_table
from dice.metrics.weights import MissingWeightsError


def report_result(result: MetricResult, results_path: str, processes: Processes, label: str, smoke_test: bool = False) -> None:
    """For the CLIs: flag a smoke-test result, append it to results.jsonl (main process) and print it."""
    from dice.metrics.smoke import mark_smoke_test

    if smoke_test:
        mark_smoke_test(result)
    if processes.is_main:
        append_result(results_path, result)
        smoke = "SMOKE TEST (random weights, meaningless): " if smoke_test else ""
        print(f"{smoke}{label} {result.value:.4f} over {result.count} images of {result.images} (appended to {results_path})")


__all__ = [
    "AestheticMLP",
    "FeatureStats",
    "ImageCollection",
    "ImageRecord",
    "IncompleteSamplesError",
    "MetricResult",
    "MissingWeightsError",
    "Processes",
    "aesthetic_scores",
    "append_result",
    "build_reference",
    "build_table",
    "calc_aesthetic",
    "calc_clip_score",
    "calc_fid",
    "clip_scores",
    "compute_feature_stats",
    "exit_on_user_error",
    "report_result",
    "fid_from_files",
    "frechet_distance",
    "load_aesthetic_head",
    "load_clip_l",
    "load_inception",
    "load_open_clip",
    "load_stats",
    "open_image_collection",
    "read_results",
    "save_stats",
    "write_table",
]
