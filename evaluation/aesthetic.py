#!/usr/bin/env python
"""Aesthetic score (SPEC §5): LAION improved aesthetic predictor on CLIP ViT-L/14 image features.

  python evaluation/aesthetic.py calc --images DIR
Multi-GPU: accelerate launch --num_processes N evaluation/aesthetic.py calc ...
--smoke_test: a tiny random CLIP and a random head instead; meaningless numbers, plumbing check only.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import ArgumentParser, check_output_file  # noqa: E402
from evaluation.metrics import Processes, add_calc_arguments, calc_aesthetic, check_folders, exit_on_user_error, report_result  # noqa: E402
from evaluation.metrics.aesthetic import (  # noqa: E402
    AESTHETIC_WEIGHTS_ENV,
    CLIP_L_ENV,
    CLIP_L_MODEL,
    aesthetic_options,
    load_aesthetic_head,
    load_clip_l,
)
from evaluation.metrics.smoke import smoke_aesthetic_models  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    calc = commands.add_parser("calc", help="mean aesthetic score of an image folder")
    add_calc_arguments(calc)
    calc.add_argument("--aesthetic_weights", default=None, help=f"sac+logos+ava1-l14-linearMSE.pth path or URL (or ${AESTHETIC_WEIGHTS_ENV})")
    calc.add_argument("--clip_l_model", default=None, help=f"CLIP ViT-L/14 hub id or local folder (default {CLIP_L_MODEL}, or ${CLIP_L_ENV})")
    args = parser.parse_args(argv)
    check_output_file(args.results, "--results")  # before the scoring, not after it

    check_folders(args.images, args.allow_incomplete)
    processes = Processes.from_accelerate()
    if args.smoke_test:
        networks, described = smoke_aesthetic_models(processes.device), None
    else:
        networks = (load_aesthetic_head(args.aesthetic_weights), *load_clip_l(args.clip_l_model, processes.device))
        described = aesthetic_options(args.clip_l_model, head=True, clip=True)
    for folder in args.images:
        result = calc_aesthetic(
            folder,
            **dict(zip(("head", "clip_model", "image_processor"), networks)),
            options=described,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            allow_incomplete=args.allow_incomplete,
            processes=processes,
        )
        report_result(result, args.results, processes, "Aesthetic score", args.smoke_test, args.desc)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
