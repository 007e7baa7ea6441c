#!/usr/bin/env python
"""results.jsonl → the paper's Table 1 layout (Markdown + CSV + JSON) with the paper's numbers beside ours, and a bar plot.

  python evaluation/results.py --results results/results.jsonl --out results/table   # table.md, .csv, .json, .png
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import ArgumentParser, check_output_file  # noqa: E402
from evaluation.metrics import exit_on_user_error  # noqa: E402
from evaluation.table import write_table  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/results.jsonl", help="results file the calc commands append to")
    parser.add_argument("--out", default="results/table", help="output prefix: writes <out>.md, .csv, .json and .png")
    args = parser.parse_args(argv)
    check_output_file(f"{args.out}.md", "--out")
    markdown, csv_path = write_table(args.results, args.out)
    print(markdown.read_text(encoding="utf-8"))
    print(f"Wrote {markdown}, {csv_path} and the bar plot {markdown.with_suffix('.png')}")


if __name__ == "__main__":
    with exit_on_user_error():
        main()
