"""The shapes world from the command line.

    python -m dice.shapes_world pretrain --out dice/assets/shapes_world   # the shipped model (~30 min on 2 CPU cores)
    python -m dice.shapes_world pretrain --family flow --out dice/assets/shapes_world   # its flow-matching twin
    python -m dice.shapes_world data --out data/shapes_world --num_images 4000   # imagefolder for train_*.py
    python -m dice.shapes_world prompts --out prompts.jsonl --num_prompts 256   # held-out prompts for sample.py
    python -m dice.shapes_world quality                                       # unguided vs CFG accuracy of a model
    python -m dice.shapes_world sharpener --out dice/assets/shapes_world      # the shipped converged DICE sharpener
    python -m dice.shapes_world sharpener --family flow --out dice/assets/shapes_world   # the flow-matching world's
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging

import torch

from ..errors import (ArgumentParser, UserError, check_output_dir, check_output_file, exit_on_user_error, guidance_scale,
                      positive_float, positive_int)
from .model import FLOW_SAMPLERS
from .pretrain import RECIPES, pretrain
from .scoring import ASSETS, DEFAULT_EVALUATOR, DEFAULT_PIPELINE, measure_quality
from .shipped_sharpener import SHIPPED, build
from .world import write_imagefolder, write_prompt_file


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m dice.shapes_world", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pre = commands.add_parser("pretrain", help="train the evaluator, VAE and UNet, or the flow-matching transformer (resumes an interrupted run)")
    pre.add_argument("--out", required=True, help="output folder: shapes-world/ (the pipeline), evaluator/, recipe.json, SHA256SUMS; "
                     "with --family flow: shapes-world-flow/, recipe-flow.json, SHA256SUMS")
    pre.add_argument("--family", choices=tuple(RECIPES), default="eps",
                     help="eps: the SD1.5-architecture world (default); flow: an SD3 transformer trained with rectified flow on it")
    pre.add_argument("--world", default=None, help=f"--family flow: the epsilon world whose VAE, text encoder and evaluator it reuses (default {ASSETS})")
    pre.add_argument("--time_budget_minutes", type=float, default=None, help="stop the denoiser stage early after this long (the result is then not the recipe's)")
    pre.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    fields = {}  # a recipe value of either family -> its field (names shared by both families are one option)
    for family, recipe_class in RECIPES.items():
        for field in dataclasses.fields(recipe_class):
            fields.setdefault(field.name, (field, []))[1].append(family)
    for name, (field, families) in fields.items():
        defaults = ", ".join(f"{f} {next(x.default for x in dataclasses.fields(RECIPES[f]) if x.name == name)}" for f in families)
        pre.add_argument(f"--{name}", type=_recipe_type(field.default), default=None, help=f"recipe value (default: {defaults})")
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
    quality.add_argument("--prompt_seed", type=int, default=0, help="seed of the prompt draw (0: the demo's prompts; choose settings on another)")
    quality.add_argument("--image_seed", type=int, default=0, help="image i starts from seed image_seed + i")
    quality.add_argument("--guidance_scale", type=guidance_scale, nargs="+", default=[5.0], help="CFG's scale(s), each compared with unguided sampling")
    quality.add_argument("--steps", type=positive_int, default=20, help="sampling steps")
    quality.add_argument("--scheduler", default=None, help=f"sampler (default: DPM-Solver++ for the epsilon world, the stock "
                         f"flow-matching Euler for the flow world; flow world: one of {', '.join(FLOW_SAMPLERS)})")
    quality.add_argument("--sampling_shift", type=positive_float, default=None, help="flow world: sample with this scheduler shift instead of the model's")
    sharpener = commands.add_parser("sharpener", help="train and export the shipped DICE sharpener (resumes an interrupted run)")
    sharpener.add_argument("--out", required=True, help="the assets folder: writes sharpener/ (--family flow: sharpener-flow/) "
                           "and refreshes SHA256SUMS")
    sharpener.add_argument("--family", choices=tuple(SHIPPED), default="eps",
                           help="eps: the epsilon world's sharpener (default); flow: the flow-matching world's")
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
        recipe_class = RECIPES[args.family]
        names = [f.name for f in dataclasses.fields(recipe_class)]
        foreign = [name for name in fields if name not in names and getattr(args, name) is not None]
        if foreign:
            raise UserError(f"--{foreign[0]} is not a value of the {args.family} recipe. Leave it out, or pass the --family it belongs to")
        if args.world is not None and args.family != "flow":
            raise UserError("--world is the epsilon world a flow model reuses. Leave it out, or pass --family flow")
        recipe = recipe_class(**{name: getattr(args, name) for name in names if getattr(args, name) is not None})
        bad = [f.name for f in dataclasses.fields(recipe) if isinstance(getattr(recipe, f.name), (int, float))
               and not isinstance(getattr(recipe, f.name), bool) and not f.metadata.get("signed") and getattr(recipe, f.name) < 0]
        if bad:
            raise UserError(f"--{bad[0]} is negative. Recipe values are counts, rates and weights >= 0")
        report = pretrain(args.out, recipe, args.time_budget_minutes, world=args.world or ASSETS)
        print(json.dumps(report["quality"], indent=2))
    elif args.command == "data":
        print(write_imagefolder(args.out, args.num_images, args.split, args.seed))
    elif args.command == "sharpener":
        check_output_dir(args.work, "--work")
        build(args.out, args.work, args.threads, args.family)
    elif args.command == "prompts":
        print(write_prompt_file(args.out, args.num_prompts, args.seed))
    else:
        scales = args.guidance_scale[0] if len(args.guidance_scale) == 1 else args.guidance_scale
        print(json.dumps(measure_quality(args.pipeline or DEFAULT_PIPELINE, args.evaluator or DEFAULT_EVALUATOR, args.num_prompts,
                                         scales, args.steps, prompt_seed=args.prompt_seed, image_seed=args.image_seed,
                                         scheduler=args.scheduler, sampling_shift=args.sampling_shift), indent=2))


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
