"""Prompt lists: the shipped COCO 5k list (SPEC §5), its regeneration rule and byte format, .txt / .jsonl."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dice.prompts import COCO5K_FILE, build_coco5k, load_prompts, main

SHARED_REFERENCE = Path("/work/shared/reference/coco_val2017_5k_prompts.jsonl")


def test_coco5k_list():
    prompts = load_prompts("coco5k")
    assert len(prompts) == 5000
    assert [index for index, _ in prompts] == list(range(5000))
    assert prompts[0] == (0, "A black Honda motorcycle parked in front of a garage.")
    assert prompts[13][1].endswith("watching tv\n")  # verbatim, trailing newline included
    assert load_prompts() == prompts


@pytest.mark.skipif(not SHARED_REFERENCE.is_file(), reason="no shared reference copy on this machine")
def test_shipped_list_is_the_reference():
    assert COCO5K_FILE.read_bytes() == SHARED_REFERENCE.read_bytes()


def test_rebuilding_from_annotations_reproduces_the_file_byte_for_byte(tmp_path):
    """Feed build_coco5k annotations whose first caption per image is the shipped list, with later
    captions of the same images interleaved (as in captions_val2017.json): the output is identical."""
    entries = [json.loads(line) for line in COCO5K_FILE.read_text().splitlines()]
    annotations = []
    for n, entry in enumerate(entries):
        annotations.append({"image_id": entry["image_id"], "id": 2 * n, "caption": entry["caption"]})
        if n:  # a second caption of the previous image comes later: must not replace its first one
            annotations.append({"image_id": entries[n - 1]["image_id"], "id": 2 * n + 1, "caption": "a later caption"})
    images = sorted(({"id": e["image_id"]} for e in entries), key=lambda image: image["id"])  # a different order
    (tmp_path / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    main(["build-coco5k", "--captions", str(tmp_path / "captions_val2017.json"), "--out", str(tmp_path / "out.jsonl")])
    assert (tmp_path / "out.jsonl").read_bytes() == COCO5K_FILE.read_bytes()


def test_first_caption_rule(tmp_path):
    annotations = [
        {"image_id": 7, "caption": "seven first"},
        {"image_id": 3, "caption": "three first\n"},
        {"image_id": 7, "caption": "seven second"},
        {"image_id": 5, "caption": " five, café"},
        {"image_id": 3, "caption": "three second"},
    ]
    (tmp_path / "captions.json").write_text(json.dumps({"images": [], "annotations": annotations}))
    assert build_coco5k(tmp_path / "captions.json", tmp_path / "out.jsonl") == 3
    assert (tmp_path / "out.jsonl").read_text() == (
        '{"index": 0, "image_id": 7, "caption": "seven first"}\n'
        '{"index": 1, "image_id": 3, "caption": "three first\\n"}\n'
        '{"index": 2, "image_id": 5, "caption": " five, caf\\u00e9"}\n'
    )
    assert load_prompts(tmp_path / "out.jsonl") == [(0, "seven first"), (1, "three first\n"), (2, " five, café")]


def test_txt_and_jsonl_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  \na dog on a mat\r\nlast line")
    assert load_prompts(str(tmp_path / "p.txt")) == [(0, "a cat"), (1, "a dog on a mat"), (2, "last line")]
    lines = [{"prompt": "first"}, {"text": "second"}, {"caption": "third", "index": 42}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert load_prompts(tmp_path / "p.jsonl") == [(0, "first"), (1, "second"), (42, "third")]


def test_prompt_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="coco5k"):
        load_prompts(tmp_path / "missing.txt")
    (tmp_path / "p.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no prompt column"):
        load_prompts(tmp_path / "p.csv")
    (tmp_path / "p.yaml").write_text("a: b\n")
    with pytest.raises(ValueError, match="Unknown prompt list format"):
        load_prompts(tmp_path / "p.yaml")
    (tmp_path / "p.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="JSON list of strings"):
        load_prompts(tmp_path / "p.json")
    (tmp_path / "p.jsonl").write_text('{"name": "x"}\n')
    with pytest.raises(ValueError, match="none of the keys"):
        load_prompts(tmp_path / "p.jsonl")


def test_named_benchmark_sets_are_found_or_named_with_how_to_fetch_them(tmp_path, monkeypatch):
    """Table 1's HPS v2 / DrawBench sets: hpsv2's JSON list format, the DrawBench sheet's CSV, and the
    one-line error (source, licence, fetch command) when a set is missing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPS_ROOT", str(tmp_path / "hps-cache"))
    monkeypatch.delenv("DICE_PROMPTS_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"hps-anime.*not shipped.*zhwang/HPDv2 benchmark/anime.json"):
        load_prompts("hps-anime")
    with pytest.raises(FileNotFoundError, match="DrawBench.*drawbench.csv"):
        load_prompts("drawbench")
    cache = tmp_path / "hps-cache" / "datasets" / "benchmark"  # where hpsv2.benchmark_prompts() puts them
    cache.mkdir(parents=True)
    (cache / "anime.json").write_text(json.dumps(["an anime girl", "a samurai cat"]))
    assert load_prompts("hps-anime") == [(0, "an anime girl"), (1, "a samurai cat")]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "drawbench.csv").write_text('Prompts,Category\n"A red colored car.",Colors\n,Empty\n"A, b",Misc\n')
    monkeypatch.setenv("DICE_PROMPTS_DIR", str(mine))
    assert load_prompts("drawbench") == [(0, "A red colored car."), (1, "A, b")]
