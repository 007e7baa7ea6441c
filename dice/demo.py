"""``python -m dice.demo`` (= ``bash launch.sh demo``): the embedded demos, on CPU with no downloads.

``toy`` (the default) is the shapes world (dice/shapes_world/demo.py): a trained toy text-to-image model
shipped in dice/assets/shapes_world, on which DICE, CFG and unguided sampling are trained, sampled and
scored end to end; ``shapes-flow`` the same on its flow-matching twin (an SD3-architecture model). ``sd15``, ``sdxl``, ``pixart``, ``pixart-sigma`` and ``sd3`` are the random-weight plumbing demos
(dice/testkit/plumbing_demo.py): tiny random models whose images are noise; they report only
cfg_gap_closed, which measures the distillation machinery, not image quality. ``--free_residual_steps N``
also fits one free residual per held-out prompt (no sharpener; the same DICE loss, data and guidance scale)
and reports its gap: how far any rewrite of the prompt embedding, the sharpener's only lever, moves such a
random model towards CFG.
"""
from __future__ import annotations

import argparse

from .errors import (
    ArgumentParser,
    UserError,
    check_output_dir,
    check_output_file,
    exit_on_user_error,
    non_negative_int,
    positive_int,
)
from .shapes_world.demo import DEMO_WORLDS, run_toy
from .testkit.plumbing_demo import run
from .testkit.tiny import FAMILIES


def cli(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m dice.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("world", nargs="?", default="toy", choices=[*DEMO_WORLDS, *FAMILIES],
                        help="toy: the trained shapes world (default); shapes-flow: its flow-matching twin (SD3 "
                        "architecture); a family (sd15, sdxl, pixart, pixart-sigma, sd3): its random-weight plumbing demo")
    parser.add_argument("--exps_root", default="exps", help="where the experiment folder goes")
    parser.add_argument("--max_train_steps", type=positive_int, default=None, help="override the preset's updates (toy: 200, plumbing: 600)")
    parser.add_argument("--train_batch_size", type=positive_int, default=None, help="toy, shapes-flow: override the preset's batch (64)")
    parser.add_argument("--grid_out", default=None, help="toy, shapes-flow: also copy the grid PNG here (the README's is docs/shapes_world_demo.png)")
    parser.add_argument("--results_out", default=None,
                        help="toy, shapes-flow: also copy demo_result.json here (the README's table is rendered from docs/shapes_world/demo_result.json)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="toy, shapes-flow: seed of the sharpener trained now (init, data order, noise)")
    parser.add_argument("--num_prompts", type=positive_int, default=None, help="held-out prompts (toy: 256, half unseen; plumbing: 32)")
    parser.add_argument("--model_seed", type=non_negative_int, default=0, help="plumbing demos: seed of the tiny random model's weights")
    parser.add_argument("--free_residual_steps", type=non_negative_int, default=0,
                        help="plumbing demos: also fit free per-prompt residuals for this many steps and report their gap (0: off; the README figures use 300)")
    args = parser.parse_args(argv)
    shapes_world = args.world in DEMO_WORLDS
    if shapes_world and (args.model_seed or args.free_residual_steps):
        raise UserError("--model_seed and --free_residual_steps apply to the random-weight plumbing demos. "
                        "Name one (python -m dice.demo sd15 ...), or drop them")
    if not shapes_world and (args.train_batch_size or args.grid_out or args.results_out or args.seed):
        raise UserError("--train_batch_size, --grid_out, --results_out and --seed apply to the shapes-world demo. "
                        "Drop them, or run `python -m dice.demo toy`")
    for option in ("grid_out", "results_out"):
        if getattr(args, option):
            check_output_file(getattr(args, option), f"--{option}")
    check_output_dir(args.exps_root, "--exps_root")
    if shapes_world:
        run_toy(args.exps_root, args.max_train_steps, args.num_prompts or 256, args.train_batch_size, args.grid_out,
                args.seed, args.results_out, args.world)
    else:
        run(args.world, args.exps_root, args.max_train_steps, args.num_prompts or 32, args.model_seed, args.free_residual_steps)


if __name__ == "__main__":
    with exit_on_user_error():
        cli()
