"""Turn a trained sharpener into a folder in the Hub's layout, ready to share (and optionally upload it).

    python -m dice.export 3 dice-dreamshaper                             # exps/00003-*, latest checkpoint
    python -m dice.export exps/00003-x/checkpoint-4000 out --base_model Lykon/DreamShaper
    python -m dice.export 3 out --push_to_hub user/dice-dreamshaper      # also upload (hf auth login first)

The folder holds model.safetensors, config.json (everything sharpener.json holds), README.md (a model
card with the Hub's metadata, how to use it, the training options) and the run's validation grid of
that checkpoint, if it has one. Anyone can then ``dice.apply(pipe, "<folder or repo id>")``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from huggingface_hub import HfApi

from .checkpoint import load_sharpener
from .experiments import DEFAULT_ROOT


def export_sharpener(
    spec: str | int | os.PathLike, out: str | os.PathLike, *, exps_root: str | os.PathLike = DEFAULT_ROOT,
    base_model: str | None = None, push_to_hub: str | None = None, private: bool | None = None,
) -> Path:
    """Write the sharpener ``spec`` names (what :func:`dice.load_sharpener` accepts) as a Hub folder ``out``.

    ``base_model`` replaces the recorded base model (e.g. the hub id of the local copy training read);
    ``push_to_hub`` also uploads the folder's content to that repository.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"'{out}' already exists and is not an empty folder. Choose a new output folder")
    sharpener, config = load_sharpener(spec, exps_root)
    if base_model:
        sharpener.config = dataclasses.replace(config, base_model=base_model)
    card = {"repo_id": push_to_hub} if push_to_hub else None
    sharpener.save_pretrained(out, model_card_kwargs=card)
    if push_to_hub:  # upload this very folder (a second save_pretrained would not be byte-identical)

        api = HfApi()
        repo_id = api.create_repo(push_to_hub, private=private, exist_ok=True).repo_id
        api.upload_folder(repo_id=repo_id, folder_path=out, repo_type="model", commit_message="Upload DICE sharpener")
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m dice.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sharpener", help="experiment id (3), run folder, checkpoint-<step> folder, sharpener.safetensors, "
                   "Hub-layout folder or Hub repo id")
    p.add_argument("out", help="new (or empty) folder to write")
    p.add_argument("--exps_root", default=DEFAULT_ROOT, help="where experiment ids are looked up")
    p.add_argument("--base_model", default=None,
                   help="record this base model (a hub id) instead of the one training used, e.g. when it read a local copy")
    p.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="also upload to this Hub repository (owner/name)")
    p.add_argument("--private", action="store_true", default=None, help="create the Hub repository as private")
    args = p.parse_args(argv)
    try:
        out = export_sharpener(args.sharpener, args.out, exps_root=args.exps_root, base_model=args.base_model,
                               push_to_hub=args.push_to_hub, private=args.private)
    except (OSError, ValueError) as err:  # hub errors are OSErrors too; their first line says what failed
        raise SystemExit(f"error: {str(err).strip().splitlines()[0]}") from err
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    if args.push_to_hub:
        print(f"uploaded to https://huggingface.co/{args.push_to_hub}")
    return out


if __name__ == "__main__":
    main()
