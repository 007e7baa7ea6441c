"""Evaluation metrics (SPEC §5): FID, CLIP score, aesthetic score, HPS v2.1.

Each ``calc_*`` reads an image folder (through sample.py's manifest when present), splits it over
the processes `accelerate launch` started, reduces float64 sums across them, and returns a
MetricResult that ``append_result`` writes to results.jsonl.
"""
from dice.errors import (
    exit_on_user_error,  # re-exported: the evaluators' entry points use it
    non_negative_int,
    positive_int,
)
from evaluation.metrics.aesthetic import AestheticMLP, aesthetic_scores, calc_aesthetic, load_aesthetic_head, load_clip_l
from evaluation.metrics.clip_score import calc_clip_score, clip_scores, load_open_clip
from evaluation.metrics.fid import (
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
from evaluation.metrics.images import ImageCollection, ImageRecord, IncompleteSamplesError, Processes, open_image_collection
from evaluation.metrics.smoke import SMOKE_TEST_HELP, mark_smoke_test
from evaluation.metrics.weights import MissingWeightsError
from evaluation.record import MetricResult, append_result, read_results


def add_calc_arguments(calc, images_help: str = "sample folder (manifest.jsonl), image folder or zip", *,
                       batch_size: int = 32, num_workers: int = 2, smoke_test: bool = True, several: bool = True) -> None:
    """The options every evaluator's ``calc`` shares (folder, results file, batching, completeness, label).
    ``several``: --images takes one or more folders (a list), else exactly one."""
    if several:
        calc.add_argument("--images", nargs="+", required=True, help=images_help + "; several: one result line each, the "
                          "network loaded once")
    else:
        calc.add_argument("--images", required=True, help=images_help)
    calc.add_argument("--results", default="results/results.jsonl", help="results file to append to")
    calc.add_argument("--batch_size", type=positive_int, default=batch_size, help="images per batch and process")
    calc.add_argument("--num_workers", type=non_negative_int, default=num_workers, help="image-loading workers per process")
    calc.add_argument("--allow_incomplete", action="store_true", help="score a sample folder that is not finished")
    calc.add_argument("--desc", default=None, help="a label recorded with the result (the authors' evaluators' --desc)")
    if smoke_test:
        calc.add_argument("--smoke_test", action="store_true", help=SMOKE_TEST_HELP)


def check_folders(folders: list[str], allow_incomplete: bool, need_prompts: bool = False) -> None:
    """Every folder of one evaluator call is checked before its network loads and before a result is written."""
    for folder in folders:
        open_image_collection(folder, allow_incomplete=allow_incomplete, need_prompts=need_prompts)


def report_result(result: MetricResult, results_path: str, processes: Processes, label: str, smoke_test: bool = False,
                  desc: str | None = None) -> None:
    """For the CLIs: flag a smoke-test result, append it to results.jsonl (main process) and print it."""
    if smoke_test:
        mark_smoke_test(result)
    if desc is not None:
        result.options["desc"] = desc
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
    "calc_aesthetic",
    "calc_clip_score",
    "calc_fid",
    "check_folders",
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
]
