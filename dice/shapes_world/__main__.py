"""The shapes world from the command line.

    python -m dice.shapes_world pretrain --out dice/assets/shapes_world   # the shipped model (~30 min on 2 CPU cores)
    python -m dice.shapes_world data --out data/shapes_world --num_images 4000   # imagefolder for train_*.py
    python -m dice.shapes_world prompts --out prompts.jsonl --num_prompts 256   # held-out prompts for sample.py
    python -m dice.shapes_world quality                                       # unguided vs CFG accuracy of a model
    python -m dice.shapes_world sharpener --out dice/assets/shapes_world      # the shipped converged DICE sharpener
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging

import torch

from ..errors import ArgumentParser, UserError, check_output_dir, check_output_file, exit_on_user_error, positive_int
from .pretrain import Recipe, pretrain
from .scoring import DEFAULT_EVALUATOR, DEFAULT_PIPELINE, measure_quality
from .shipped_sharpener import build
from .world import write_imagefolder, write_prompt_file


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m dice.shapes_world", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pre = commands.add_parser("pretrain", help="train the evaluator, VAE and UNet (resumes an interrupted run)")
    pre.add_argument("--out", required=True, help="output folder: shapes-world/ (the pipeline), evaluator/, recipe.json, SHA256SUMS")
    pre.add_argument("--time_budget_minutes", type=float, default=None, help="stop the UNet stage early after this long (the result is then not the recipe's)")
    pre.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    for field in dataclasses.fields(Recipe):
        pre.add_argument(f"--{field.name}", type=_recipe_type(field.default), default=field.default, help=f"recipe value (default {field.default})")
    data = commands.add_parser("data", help="render a split into the imagefolder layout (metadata.jsonl)")
    data.add_argument("--out", required=True)
    data.add_argument("--num_images", type=positive_int, default=4000)
    data.add_argument("--split", default="train", choices=("train", "validation", "test"))
    data.add_argument("--seed", type=int, default=0)
    prompts = commands.add_parser("prompts", help="write held-out evaluation prompts (half unseen) as .jsonl")
    prompts.add_argument("--out", required=True)
    prompts.add_argument("--num_prompts", type=positive_int, default=256)
    prompts.add_argument("--seed", type=int, default=0)
    quality = commands.add_parser("quality", help="prompt accuracy and FD of unguided and CFG sampling")
    quality.add_argument("--pipeline", default=None, help="model folder (default: the shipped one)")
    quality.add_argument("--evaluator", default=None, help="evaluator folder (default: the shipped one)")
    quality.add_argument("--num_prompts", type=positive_int, default=256)
    sharpener = commands.add_parser("sharpener", help="train and export the shipped DICE sharpener (resumes an interrupted run)")
    sharpener.add_argument("--out", required=True, help="the assets folder: writes sharpener/ and refreshes SHA256SUMS")
    sharpener.add_argument("--work", default="data/shapes_world-sharpener", help="training images and the run folder")
    sharpener.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command in ("pretrain", "data", "sharpener"):
        check_output_dir(args.out, "--out")
    elif args.command == "prompts":
        check_output_file(args.out, "--out")

    if args.command == "pretrain":
        if args.threads:
            torch.set_num_threads(args.threads)
        recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
        bad = [f.name for f in dataclasses.fields(Recipe) if isinstance(getattr(recipe, f.name), (int, float))
               and not isinstance(getattr(recipe, f.name), bool) and getattr(recipe, f.name) < 0]
        if bad:
            raise UserError(f"--{bad[0]} is negative. Recipe values are counts, rates and weights >= 0")
        report = pretrain(args.out, recipe, args.time_budget_minutes)
        print(json.dumps(report["quality"], indent=2))
    elif args.command == "data":
        print(write_imagefolder(args.out, args.num_images, args.split, args.seed))
    elif args.command == "sharpener":
        check_output_dir(args.work, "--work")
        build(args.out, args.work, args.threads)
    elif args.command == "prompts":
        print(write_prompt_file(args.out, args.num_prompts, args.seed))
    else:
        print(json.dumps(measure_quality(args.pipeline or DEFAULT_PIPELINE, args.evaluator or DEFAULT_EVALUATOR, args.num_prompts), indent=2))


def _recipe_type(default):
    """argparse type of a recipe field: its default's type (booleans as true/false)."""
    if isinstance(default, bool):
        def boolean(text: str) -> bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
            return text.lower() in ("true", "1", "yes")
        return boolean
    return type(default)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
