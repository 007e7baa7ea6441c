#!/usr/bin/env python
"""The shapes world's metrics (its CLIP score and FID): prompt accuracy and evaluator-feature FD.

  python evaluation/shapes_world.py calc --images DIR     # DIR written by sample.py from world prompts
Appends two lines to results/results.jsonl: world_accuracy (share of images whose four attributes
all match the prompt; seen / unseen split and bootstrap 95% interval in its options) and world_fd
(Fréchet distance of the evaluator's 128-d features to real renders of the same prompts).
Multi-process: accelerate launch --num_processes N evaluation/shapes_world.py calc ...
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import ArgumentParser, check_output_file, non_negative_int, positive_int  # noqa: E402
from dice.metrics import Processes, exit_on_user_error, report_result  # noqa: E402
from dice.metrics.shapes_world import calc_shapes_world  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    calc = commands.add_parser("calc", help="prompt accuracy and FD of a sample folder")
    calc.add_argument("--images", required=True, help="sample folder with manifest.jsonl (shapes-world prompts)")
    calc.add_argument("--evaluator", default=None, help="evaluator folder (default: the one shipped in dice/assets/shapes_world)")
    calc.add_argument("--results", default="results/results.jsonl", help="results file to append to")
    calc.add_argument("--batch_size", type=positive_int, default=256, help="images per batch and process")
    calc.add_argument("--num_workers", type=non_negative_int, default=0, help="image-loading workers per process")
    calc.add_argument("--allow_incomplete", action="store_true", help="score a sample folder that is not finished")
    args = parser.parse_args(argv)
    check_output_file(args.results, "--results")  # before the scoring, not after it

    processes = Processes.from_accelerate()
    accuracy, fd = calc_shapes_world(args.images, evaluator_path=args.evaluator, batch_size=args.batch_size,
                                     num_workers=args.num_workers, allow_incomplete=args.allow_incomplete, processes=processes)
    report_result(accuracy, args.results, processes, "world prompt accuracy")
    report_result(fd, args.results, processes, "world FD")
    return accuracy, fd


if __name__ == "__main__":
    with exit_on_user_error():
        main()
