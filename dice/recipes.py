"""What launch.sh asks Python, so that each paper fact stays in dice/paper.py only.

    python -m dice.recipes model sd15|sdxl|pixart|dreamshaper|...|sdxl-vae   # hub id of a named model
    python -m dice.recipes embedding-scale sd15|dreamshaper|sdxl|pixart|shapes-world   # Scaling's s (Table 1)
    python -m dice.recipes guidance-scale                                    # the CFG rows' w (Table 1)
"""
from __future__ import annotations

from .errors import ArgumentParser, UserError, exit_on_user_error
from .paper import GUIDANCE_SCALE, VAES
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


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m dice.recipes", description=__doc__)
    parser.add_argument("fact", choices=["model", "embedding-scale", "guidance-scale"])
    parser.add_argument("name", nargs="?", help="the model's short name (model, embedding-scale)")
    args = parser.parse_args(argv)
    if args.fact == "guidance-scale":
        print(f"{GUIDANCE_SCALE:g}")
    elif args.name is None:
        raise UserError(f"{args.fact} needs a model name, e.g. python -m dice.recipes {args.fact} sd15")
    else:
        print(model_id(args.name) if args.fact == "model" else f"{embedding_scale(args.name):g}")


if __name__ == "__main__":
    with exit_on_user_error():
        main()
