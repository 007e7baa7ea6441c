#!/usr/bin/env python
"""CLIP score (SPEC §5): open_clip ViT-g-14 laion2b_s34b_b88k, mean 100·cos(image i, prompt i).

  python evaluation/clip_score.py calc --images DIR [DIR ...]     # DIR written by sample.py (manifest.jsonl)
Multi-GPU: accelerate launch --num_processes N evaluation/clip_score.py calc ...
--smoke_test: a tiny random CLIP instead of ViT-g-14; meaningless numbers, plumbing check only.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import ArgumentParser, check_output_file  # noqa: E402
from evaluation.metrics import Processes, add_calc_arguments, calc_clip_score, check_folders, exit_on_user_error, report_result  # noqa: E402
from evaluation.metrics.clip_score import CLIP_WEIGHTS_ENV, load_open_clip, open_clip_options  # noqa: E402
from evaluation.metrics.smoke import smoke_clip_score_model  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    calc = commands.add_parser("calc", help="CLIP score of a sample folder")
    add_calc_arguments(calc, "sample folder with manifest.jsonl")
    calc.add_argument("--clip_weights", default=None, help=f"local open_clip ViT-g-14 weights file (or ${CLIP_WEIGHTS_ENV})")
    args = parser.parse_args(argv)
    check_output_file(args.results, "--results")  # before the scoring, not after it

    check_folders(args.images, args.allow_incomplete, need_prompts=True)
    processes = Processes.from_accelerate()
    if args.smoke_test:
        networks, described = smoke_clip_score_model(processes.device), None
    else:
        networks, described = load_open_clip(args.clip_weights, processes.device), open_clip_options(args.clip_weights)
    for folder in args.images:
        result = calc_clip_score(
            folder,
            **dict(zip(("model", "preprocess", "tokenizer"), networks)),
            options=described,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            allow_incomplete=args.allow_incomplete,
            processes=processes,
        )
        report_result(result, args.results, processes, "CLIP score", args.smoke_test, args.desc)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
