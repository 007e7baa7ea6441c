"""What launch.sh asks Python, so that each paper fact stays in dice/paper.py only.

    python -m dice.recipes model sd15|sdxl|pixart|dreamshaper|...|sdxl-vae   # hub id of a named model
    python -m dice.recipes embedding-scale sd15|dreamshaper|sdxl|pixart|shapes-world   # Scaling's s (Table 1)
    python -m dice.recipes guidance-scale                                    # the CFG rows' w (Table 1)
    python -m dice.recipes table1-preset sd15|dreamshaper|sdxl|pixart        # the preset of the run behind a block
"""
from __future__ import annotations

from .errors import ArgumentParser, UserError, exit_on_user_error
from .paper import GUIDANCE_SCALE, TABLE1_PRESETS, VAES
from .presets import EMBEDDING_SCALES, MODELS


def model_id(name: str) -> str:
    if name in MODELS:
        return MODELS[name][1]
    if name in VAES:
        return VAES[name]
    raise UserError(f"no model named '{name}'. Use one of {', '.join([*MODELS, *VAES])}")


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
    parser.add_argument("fact", choices=["model", "embedding-scale", "guidance-scale", "table1-preset"])
    parser.add_argument("name", nargs="?", help="the model's short name (model, embedding-scale) or Table-1 block")
    args = parser.parse_args(argv)
    if args.fact == "guidance-scale":
        print(f"{GUIDANCE_SCALE:g}")
    elif args.name is None:
        raise UserError(f"{args.fact} needs a model name, e.g. python -m dice.recipes {args.fact} sd15")
    elif args.fact == "table1-preset":
        print(table1_preset(args.name))
    else:
        print(model_id(args.name) if args.fact == "model" else f"{embedding_scale(args.name):g}")


if __name__ == "__main__":
    with exit_on_user_error():
        main()
