"""Prompt lists for sampling and evaluation.

``load_prompts(spec)``: "coco5k" (the paper's 5,000 MS-COCO val2017 captions, shipped in
dice/assets/), a ``.txt`` file (one prompt per line) or a ``.jsonl`` file → [(index, prompt)].

The 5k list (SPEC §5): one caption per val2017 image — the first caption of each image in
``captions_val2017.json`` annotation order, images in order of first appearance, captions verbatim.
Regenerate it with ``python -m dice.prompts build-coco5k --captions captions_val2017.json --out f.jsonl``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ArgumentParser, UserError, exit_on_user_error

COCO5K = "coco5k"
COCO5K_FILE = Path(__file__).parent / "assets" / "coco_val2017_5k_prompts.jsonl"
PROMPT_KEYS = ("caption", "prompt", "text")


class PromptListError(UserError, ValueError):
    pass


class PromptListNotFound(UserError, FileNotFoundError):
    pass


def load_prompts(spec: str | os.PathLike = COCO5K) -> list[tuple[int, str]]:
    """[(index, prompt)] from "coco5k", a .txt (blank lines skipped) or a .jsonl file.

    Indices are line positions (blank lines not counted) unless a .jsonl line has "index".
    """
    path = COCO5K_FILE if str(spec) == COCO5K else Path(spec)
    if not path.is_file():
        raise PromptListNotFound(f"prompt list not found: {spec}. Pass '{COCO5K}', a .txt or a .jsonl file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".txt":
        return list(enumerate(lines))
    if path.suffix != ".jsonl":
        raise PromptListError(f"Unknown prompt list format: {spec}. Use '{COCO5K}', a .txt or a .jsonl file")
    prompts = []
    for position, line in enumerate(lines):
        try:
            entry = json.loads(line)
            key = next((k for k in PROMPT_KEYS if k in entry), None)
            if key is None or not isinstance(entry[key], str):
                raise ValueError(f"none of the keys {PROMPT_KEYS} holds a string")
            prompts.append((int(entry.get("index", position)), entry[key]))
        except (ValueError, TypeError) as err:
            raise PromptListError(
                f"{spec}: line {position + 1} is not a prompt ({err}): {line[:200]}. Give each line a "
                f'"caption", "prompt" or "text" string (and optionally an integer "index")'
            ) from None
    indices = [index for index, _ in prompts]
    if len(set(indices)) != len(indices) or min(indices, default=0) < 0:
        raise PromptListError(f"{spec}: the \"index\" values are not distinct non-negative integers. Give every line its own index, or none")
    return prompts


def coco5k_entries(captions: dict) -> list[dict]:
    """The first caption of each image, images in order of first appearance in ``annotations``."""
    first_caption: dict[int, str] = {}
    for annotation in captions["annotations"]:
        first_caption.setdefault(annotation["image_id"], annotation["caption"])
    return [
        {"index": index, "image_id": image_id, "caption": caption}
        for index, (image_id, caption) in enumerate(first_caption.items())
    ]


def build_coco5k(captions_json_path: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """Write the 5k prompt list from MS-COCO ``captions_val2017.json``; return the number of lines.

    Lines are ``json.dumps`` with its default separators and ASCII escapes, byte-identical to the
    shipped dice/assets/coco_val2017_5k_prompts.jsonl.
    """
    captions = json.loads(Path(captions_json_path).read_text(encoding="utf-8"))
    entries = coco5k_entries(captions)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8", newline="\n") as file:
        file.writelines(json.dumps(entry) + "\n" for entry in entries)
    return len(entries)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m dice.prompts", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-coco5k", help="regenerate the 5k list from captions_val2017.json")
    build.add_argument("--captions", required=True, help="MS-COCO annotations/captions_val2017.json")
    build.add_argument("--out", required=True, help="output .jsonl")
    args = parser.parse_args(argv)
    count = build_coco5k(args.captions, args.out)
    print(f"Wrote {count} prompts to {args.out}")


if __name__ == "__main__":
    with exit_on_user_error():
        main()
