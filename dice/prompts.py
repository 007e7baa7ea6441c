"""Prompt lists for sampling and evaluation.

``load_prompts(spec)``: "coco5k" (the paper's 5,000 MS-COCO val2017 captions, shipped in
dice/assets/), a named benchmark set (``hps-anime``, ``hps-concept-art``, ``hps-paintings``,
``hps-photo``, ``drawbench``: Table 1's HPS v2.1 and DrawBench columns, see PROMPT_SETS), a ``.txt``
file (one prompt per line), a ``.jsonl`` file, a ``.json`` list of strings (the HPS v2 benchmark's
format) or a ``.csv`` with a ``Prompts``/``prompt`` column (the DrawBench sheet) → [(index, prompt)].

The 5k list (SPEC §5): one caption per val2017 image — the first caption of each image in
``captions_val2017.json`` annotation order, images in order of first appearance, captions verbatim.
Regenerate it with ``python -m dice.prompts build-coco5k --captions captions_val2017.json --out f.jsonl``.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .errors import ArgumentParser, UserError, exit_on_user_error

COCO5K = "coco5k"
COCO5K_FILE = Path(__file__).parent / "assets" / "coco_val2017_5k_prompts.jsonl"
PROMPT_KEYS = ("caption", "prompt", "text")
CSV_COLUMNS = ("Prompts", "Prompt", "prompt", "prompts", "text", "caption")

# Benchmark prompt sets of Table 1 that no reachable package ships (hpsv2 1.2.0 downloads its four
# files at run time; nothing on PyPI carries DrawBench): name -> (file names tried, what it is, how to fetch it).
_HPS_FETCH = "hf download zhwang/HPDv2 benchmark/{file} --repo-type dataset --local-dir data/prompts"
PROMPT_SETS = {
    **{f"hps-{style}": ((f"{style}.json",), f"HPS v2 benchmark prompts, style '{style}' (Hub dataset zhwang/HPDv2)",
                        _HPS_FETCH.format(file=f"{style}.json"))
       for style in ("anime", "concept-art", "paintings", "photo")},
    "drawbench": (("drawbench.json", "drawbench.csv", "drawbench.txt"),
                  "DrawBench (Saharia et al. 2022, Imagen), 200 prompts",
                  "export the DrawBench sheet (column 'Prompts') as drawbench.csv, or save hpsv2's drawbench.json (a JSON "
                  "list of the 200 prompts)"),
}
PROMPTS_DIR_ENV = "DICE_PROMPTS_DIR"


def prompt_set_dirs() -> list[Path]:
    """Where named sets are looked for: $DICE_PROMPTS_DIR, data/prompts[/benchmark], hpsv2's own cache."""
    hps_root = Path(os.environ.get("HPS_ROOT") or Path.home() / ".cache" / "hpsv2")
    dirs = [os.environ.get(PROMPTS_DIR_ENV), "data/prompts", "data/prompts/benchmark", hps_root / "datasets" / "benchmark"]
    return [Path(d) for d in dirs if d]


def prompt_set_file(name: str) -> Path:
    """The file of a named prompt set; a missing one is one error line saying how to fetch it."""
    names, what, fetch = PROMPT_SETS[name]
    for folder in prompt_set_dirs():
        for file in names:
            if (folder / file).is_file():
                return folder / file
    where = ", ".join(str(d) for d in prompt_set_dirs())
    raise PromptListNotFound(
        f"prompt set '{name}' ({what}) is not shipped with dice: no package reachable from here ships it. Fetch it "
        f"({fetch}) into one of: {where} (or set {PROMPTS_DIR_ENV}); file name {' or '.join(names)}"
    )


class PromptListError(UserError, ValueError):
    pass


class PromptListNotFound(UserError, FileNotFoundError):
    pass


def load_prompts(spec: str | os.PathLike = COCO5K) -> list[tuple[int, str]]:
    """[(index, prompt)] from "coco5k", a .txt (blank lines skipped) or a .jsonl file.

    Indices are line positions (blank lines not counted) unless a .jsonl line has "index".
    """
    if str(spec) in PROMPT_SETS:
        path = prompt_set_file(str(spec))
    else:
        path = COCO5K_FILE if str(spec) == COCO5K else Path(spec)
    if not path.is_file():
        raise PromptListNotFound(f"prompt list not found: {spec}. Pass '{COCO5K}', one of {', '.join(PROMPT_SETS)}, "
                                 "or a .txt, .jsonl, .json or .csv file")
    if path.suffix in (".json", ".csv"):
        return list(enumerate(_json_or_csv_prompts(path, spec)))
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".txt":
        return list(enumerate(lines))
    if path.suffix != ".jsonl":
        raise PromptListError(f"Unknown prompt list format: {spec}. Use '{COCO5K}', a .txt, .jsonl, .json or .csv file")
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


def prompt_texts(spec: str, count: int | None = None) -> list[str]:
    """The first ``count`` prompts of a prompt set or file (all when None); none at all is refused."""
    prompts = [p for _, p in load_prompts(spec)][:count]
    if not prompts:
        raise UserError(f"--prompts '{spec}' holds no prompts. Give a prompt file or set")
    return prompts


def _json_or_csv_prompts(path: Path, spec) -> list[str]:
    """A JSON list of strings (the HPS v2 benchmark files), or a CSV's prompt column (the DrawBench sheet)."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json":
        try:
            prompts = json.loads(text)
        except ValueError as err:
            raise PromptListError(f"{spec} is not JSON ({err}). Give a JSON list of prompt strings") from None
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise PromptListError(f"{spec} is not a JSON list of strings. Give a JSON list of prompt strings")
        return prompts

    rows = list(csv.DictReader(text.splitlines()))
    column = next((c for c in CSV_COLUMNS if rows and c in rows[0]), None)
    if column is None:
        raise PromptListError(f"{spec} has no prompt column (one of {', '.join(CSV_COLUMNS)}). Name the column 'Prompts'")
    return [row[column] for row in rows if (row[column] or "").strip()]


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
