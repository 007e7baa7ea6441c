#!/usr/bin/env python
"""FID (SPEC §5): Inception-v3 2015-12-05 features, float64 statistics, EDM-format reference .npz.

  python evaluation/fid.py calc --images DIR [DIR ...] --ref ref.npz     # appends a line per folder to results/results.jsonl
  python evaluation/fid.py ref --data DIR_OR_ZIP --dest ref.npz [--center_crop_resize 512]
  python evaluation/fid.py dist A.npz B.npz
  --smoke_test (calc, ref): a tiny random conv net instead of Inception; meaningless numbers, plumbing check only.
Multi-GPU: accelerate launch --num_processes N evaluation/fid.py calc ...
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import ArgumentParser, check_output_file, non_negative_int, positive_int  # noqa: E402
from evaluation.metrics import (  # noqa: E402
    Processes,
    add_calc_arguments,
    build_reference,
    calc_fid,
    check_folders,
    exit_on_user_error,
    fid_from_files,
    report_result,
)
from evaluation.metrics.fid import INCEPTION_WEIGHTS_ENV, load_inception, load_stats  # noqa: E402
from evaluation.metrics.smoke import SMOKE_TEST_HELP, smoke_feature_extractor  # noqa: E402


def main(argv=None, feature_extractor=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    calc = commands.add_parser("calc", help="FID of an image folder against reference statistics")
    add_calc_arguments(calc, batch_size=64, smoke_test=False)
    calc.add_argument("--ref", required=True, help="reference statistics .npz (mu, sigma)")
    ref = commands.add_parser("ref", help="reference statistics of an image folder or zip")
    ref.add_argument("--data", required=True, help="image folder or zip (e.g. COCO val2017)")
    ref.add_argument("--dest", required=True, help="output .npz")
    ref.add_argument("--center_crop_resize", type=positive_int, default=None, help="centre-crop and resize to N first (authors: 512)")
    ref.add_argument("--batch_size", type=positive_int, default=64, help="images per batch and process")
    ref.add_argument("--num_workers", type=non_negative_int, default=2, help="image-loading workers per process")
    for command in (calc, ref):
        command.add_argument("--inception_weights", default=None, help=f"local Inception .pth (or ${INCEPTION_WEIGHTS_ENV})")
        command.add_argument("--smoke_test", action="store_true", help=SMOKE_TEST_HELP + (
            " The smoke features are 64-d, so smoke and real statistics never mix (dimension error)."))
    dist = commands.add_parser("dist", help="FID between two statistics files")
    dist.add_argument("stats", nargs=2, metavar="NPZ")
    args = parser.parse_args(argv)

    if args.command == "dist":
        print(f"{fid_from_files(*args.stats):.6f}")
        return
    if args.command == "ref":
        check_output_file(args.dest, "--dest")
    else:
        check_output_file(args.results, "--results")
    processes = Processes.from_accelerate()
    if args.smoke_test:
        feature_extractor = smoke_feature_extractor(processes.device)
    common = dict(
        feature_extractor=feature_extractor,
        inception_weights=args.inception_weights,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        processes=processes,
    )
    if args.command == "ref":
        count = build_reference(args.data, args.dest, center_crop_resize=args.center_crop_resize, **common)
        if processes.is_main:
            smoke = " (SMOKE TEST: random-weight features, for --smoke_test calc only)" if args.smoke_test else ""
            print(f"Wrote reference statistics of {count} images to {args.dest}{smoke}")
        return
    load_stats(args.ref)  # a missing reference, like an unfinished folder, is refused before any scoring
    check_folders(args.images, args.allow_incomplete)
    if common["feature_extractor"] is None:
        common["feature_extractor"] = load_inception(args.inception_weights, processes.device)
    for folder in args.images:
        result = calc_fid(folder, args.ref, allow_incomplete=args.allow_incomplete, **common)
        report_result(result, args.results, processes, "FID", args.smoke_test, args.desc)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
