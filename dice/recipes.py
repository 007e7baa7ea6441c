"""What launch.sh asks Python, so that each paper fact stays in dice/paper.py only.

    python -m dice.recipes model sd15|sdxl|pixart|dreamshaper|...|sdxl-vae|sd3.5-medium|pixart-sigma   # hub id of a named model
    python -m dice.recipes transformer pixart-sigma-512                      # hub id of a named model's own transformer
    python -m dice.recipes embedding-scale sd15|dreamshaper|sdxl|pixart|shapes-world|shapes-world-flow   # Scaling's s
    python -m dice.recipes guidance-scale [EXPERIMENT]                       # the CFG rows' w (Table 1), or the w an
                                                                             # experiment's teacher had (SD3: the model card's)
    python -m dice.recipes table1-preset sd15|dreamshaper|sdxl|pixart        # the preset of the run behind a block
"""
from __future__ import annotations

from .adapters.pixart_sigma import TRANSFORMER_OPTION
from .checkpoint import read_config, resolve_trained_config
from .errors import ArgumentParser, UserError, exit_on_user_error
from .experiments import DEFAULT_ROOT
from .paper import GUIDANCE_SCALE, TABLE1_PRESETS, VAES
from .presets import EMBEDDING_SCALES, MODEL_FAMILY_OPTIONS, MODELS


def model_id(name: str) -> str:
    if name in MODELS:
        return MODELS[name][1]
    if name in VAES:
        return VAES[name]
    raise UserError(f"no model named '{name}'. Use one of {', '.join([*MODELS, *VAES])}")


def transformer_id(name: str) -> str:
    transformers = {n: o[TRANSFORMER_OPTION] for n, o in MODEL_FAMILY_OPTIONS.items() if TRANSFORMER_OPTION in o}
    if name not in transformers:
        raise UserError(f"no replacement transformer for '{name}'. Use one of {', '.join(transformers)}")
    return transformers[name]


def guidance_scale(experiment: str | None = None) -> float:
    """The paper's w, or the one an experiment's teacher was trained with."""
    if experiment is None:
        return GUIDANCE_SCALE
    options = read_config(resolve_trained_config(experiment, DEFAULT_ROOT)).training_options
    return options.get("guidance_scale") or GUIDANCE_SCALE  # GD / PnP: ω drawn over a range, sampled at the paper's


def embedding_scale(name: str) -> float:
    if name not in EMBEDDING_SCALES:
        raise UserError(f"no Scaling s for '{name}'. Use one of {', '.join(EMBEDDING_SCALES)}")
    return EMBEDDING_SCALES[name]


def table1_preset(block: str) -> str:
    if block not in TABLE1_PRESETS:
        raise UserError(f"no Table-1 block '{block}'. Use one of {', '.join(TABLE1_PRESETS)}")
    return TABLE1_PRESETS[block]


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m dice.recipes", description=__doc__)
    parser.add_argument("fact", choices=["model", "transformer", "embedding-scale", "guidance-scale", "table1-preset"])
    parser.add_argument("name", nargs="?", help="the model's short name (model, transformer, embedding-scale), an "
                        "experiment id or folder (guidance-scale), or a Table-1 block (table1-preset)")
    args = parser.parse_args(argv)
    if args.fact == "guidance-scale":
        print(f"{guidance_scale(args.name):g}")
    elif args.name is None:
        raise UserError(f"{args.fact} needs a model name, e.g. python -m dice.recipes {args.fact} sd15")
    elif args.fact == "table1-preset":
        print(table1_preset(args.name))
    else:
        fact = {"model": model_id, "transformer": transformer_id, "embedding-scale": lambda n: f"{embedding_scale(n):g}"}
        print(fact[args.fact](args.name))


if __name__ == "__main__":
    with exit_on_user_error():
        main()
