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

from dice.errors import ArgumentParser, check_output_file  # noqa: E402
from dice.shapes_world.folder_scores import calc_shapes_world  # noqa: E402
from evaluation.metrics import Processes, add_calc_arguments, exit_on_user_error, report_result  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    calc = commands.add_parser("calc", help="prompt accuracy and FD of a sample folder")
    add_calc_arguments(calc, "sample folder with manifest.jsonl (shapes-world prompts)", batch_size=256, num_workers=0, smoke_test=False,
                       several=False)  # the world's evaluator loads in a moment: one folder per call
    calc.add_argument("--evaluator", default=None, help="evaluator folder (default: the one shipped in dice/assets/shapes_world)")
    args = parser.parse_args(argv)
    check_output_file(args.results, "--results")  # before the scoring, not after it

    processes = Processes.from_accelerate()
    accuracy, fd = calc_shapes_world(args.images, evaluator_path=args.evaluator, batch_size=args.batch_size,
                                     num_workers=args.num_workers, allow_incomplete=args.allow_incomplete, processes=processes)
    report_result(accuracy, args.results, processes, "world prompt accuracy", desc=args.desc)
    report_result(fd, args.results, processes, "world FD", desc=args.desc)
    return accuracy, fd


if __name__ == "__main__":
    with exit_on_user_error():
        main()
