#!/usr/bin/env python
"""HPS v2.1 (Table 1's HPS and DrawBench columns): mean 100·cos(image i, prompt i) under the HPS v2.1 model.

  python sample.py --sharpener_path 3 --prompts hps-anime        # also hps-concept-art, hps-paintings, hps-photo, drawbench
  python evaluation/hps.py calc --images DIR [DIR ...]            # the column is each DIR's prompt set
Multi-GPU: accelerate launch --num_processes N evaluation/hps.py calc ...
--smoke_test: a tiny random CLIP instead of HPS v2.1; meaningless numbers, plumbing check only.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import ArgumentParser, check_output_file  # noqa: E402
from evaluation.metrics import Processes, add_calc_arguments, check_folders, exit_on_user_error, report_result  # noqa: E402
from evaluation.metrics.hps import HPS_WEIGHTS_ENV, calc_hps, hps_options, load_hps  # noqa: E402
from evaluation.metrics.smoke import smoke_clip_score_model  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    calc = commands.add_parser("calc", help="HPS v2.1 of a sample folder")
    add_calc_arguments(calc, "sample folder with manifest.jsonl (sampled with --prompts hps-<style> or drawbench)")
    calc.add_argument("--hps_weights", default=None, help=f"local HPS_v2.1_compressed.pt (or ${HPS_WEIGHTS_ENV})")
    args = parser.parse_args(argv)
    check_output_file(args.results, "--results")  # before the scoring, not after it

    check_folders(args.images, args.allow_incomplete, need_prompts=True)
    processes = Processes.from_accelerate()
    if args.smoke_test:
        networks, described = smoke_clip_score_model(processes.device), None
    else:
        networks, described = load_hps(args.hps_weights, processes.device), hps_options(args.hps_weights)
    for folder in args.images:
        result = calc_hps(folder, **dict(zip(("model", "preprocess", "tokenizer"), networks)), options=described,
                          batch_size=args.batch_size, num_workers=args.num_workers, allow_incomplete=args.allow_incomplete,
                          processes=processes)
        report_result(result, args.results, processes, f"HPS v2.1 ({result.options['prompt_set']})", args.smoke_test, args.desc)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
