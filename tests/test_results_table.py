"""results.jsonl lines and the Table 1 layout built from a hand-written results file."""
from __future__ import annotations

import csv
import importlib.util
import io
import json
from datetime import datetime
from pathlib import Path

import pytest

from evaluation.record import MetricResult, append_result, read_results
from evaluation.table import build_table, format_csv, format_markdown, paper_values, protocol_mismatch

REPO = Path(__file__).resolve().parents[1]


def options(base_model, method, cfg_scale, alpha=None, steps=20, family="sd15"):
    nfe = steps * (2 if "cfg" in method and cfg_scale != 1 else 1)
    final = 8000 if "dice" in method else None  # the sharpener's last checkpoint (Table 1 uses the final one)
    return {"family": family, "base_model": base_model, "method": method, "cfg_scale": cfg_scale, "alpha": alpha,
            "steps": steps, "nfe": nfe, "num_images": 5000, "prompts": "coco5k", "sharpener": None,
            "resolution": 1024 if family == "sdxl" else 512, "scheduler": "dpmsolver++", "sharpener_step": final,
            "sharpener_max_train_steps": final,
            # as sample.py records them since the safety checker is off and SDXL's baselines take the stock u
            **({"output_filters_off": ["safety_checker"]} if family == "sd15" else {}),
            **({"null_embedding": "zeros"} if family == "sdxl" and "dice" not in method else {})}


def line(metric, value, folder, sampling_options, count=5000):
    return {"metric": metric, "value": value, "count": count, "images": folder, "sampling_options": sampling_options,
            "options": {}, "time": "2026-01-01T00:00:00+00:00", "seconds": 1.0}


def hand_written_results(path: Path) -> None:
    sd15_cfg = options("runwayml/stable-diffusion-v1-5", "cfg", 5.0)
    sd15_dice = options("stable-diffusion-v1-5/stable-diffusion-v1-5", "dice", 1.0, alpha=1.0)
    lines = [
        line("fid", 30.0, "samples/sd15-dice", sd15_dice),
        line("fid", 22.5, "samples/sd15-cfg5", sd15_cfg),
        line("clip_score", 30.1, "samples/sd15-cfg5", sd15_cfg),
        line("aesthetic", 5.31, "samples/sd15-cfg5", sd15_cfg),
        line("fid", 22.3, "samples/sd15-dice/", sd15_dice),  # re-scored later: this value wins
        line("fid", 33.0, "samples/sd15-w1", options("runwayml/stable-diffusion-v1-5", "unguided", 1.0)),
        line("clip_score", 31.9, "samples/sdxl-cfg5", options("stabilityai/stable-diffusion-xl-base-1.0", "cfg", 5.0, family="sdxl")),
        line("fid", 40.0, "samples/pixart-dice", options("PixArt-alpha/PixArt-XL-2-512x512", "dice", 1.0, alpha=1.0, family="pixart")),
        line("fid", 25.0, "samples/sd15-cfg5-10steps", options("runwayml/stable-diffusion-v1-5", "cfg", 5.0, steps=10)),
        line("fid", 28.0, "samples/sd15-dice-alpha2", options("runwayml/stable-diffusion-v1-5", "dice", 1.0, alpha=2.0)),
        line("aesthetic", 5.9, "samples/dreamshaper-dice+cfg", options("Lykon/DreamShaper", "dice+cfg", 3.0, alpha=1.0)),
        line("fid", 50.0, "samples/mine", options("/models/my-finetune", "cfg", 7.5), count=1000),
        line("fid", 12.0, "coco-val2017", None, count=5000),
    ]
    path.write_text("".join(json.dumps(entry) + "\n" for entry in lines))


def test_append_result_writes_one_complete_line(tmp_path):
    result = MetricResult("fid", 22.1, 5000, "samples/a", {"method": "cfg"}, {"ref": "ref.npz"}, seconds=12.3456)
    path = tmp_path / "results" / "results.jsonl"
    append_result(path, result)
    append_result(path, result)
    records = read_results(path)
    assert len(records) == 2
    assert set(records[0]) == {"metric", "value", "count", "images", "sampling_options", "options", "time", "seconds"}
    assert records[0]["value"] == 22.1 and records[0]["sampling_options"] == {"method": "cfg"}
    datetime.fromisoformat(records[0]["time"])


def test_table_rows_latest_values_and_paper_numbers(tmp_path):
    hand_written_results(tmp_path / "results.jsonl")
    rows = build_table(read_results(tmp_path / "results.jsonl"))
    by_folder = {row["images"]: row for row in rows}
    assert len(rows) == 10  # "samples/sd15-dice/" and "samples/sd15-dice" are one folder

    cfg5 = by_folder["samples/sd15-cfg5"]
    assert (cfg5["model"], cfg5["guidance"], cfg5["nfe"]) == ("SD1.5", "w=5", 40)
    assert cfg5["values"] == {"fid": 22.5, "clip_score": 30.1, "aesthetic": 5.31}
    assert cfg5["paper"] == {"fid": 22.04, "clip_score": 30.22, "aesthetic": 5.36}
    assert by_folder["samples/sd15-dice"]["values"]["fid"] == 22.3
    assert by_folder["samples/sd15-dice"]["paper"]["fid"] == 22.22
    assert by_folder["samples/sd15-w1"]["paper"]["fid"] == 32.80
    assert by_folder["samples/sdxl-cfg5"]["paper"]["clip_score"] == 32.10
    assert by_folder["samples/pixart-dice"]["paper"]["fid"] == 39.80
    for folder in ("samples/sd15-cfg5-10steps", "samples/sd15-dice-alpha2", "samples/dreamshaper-dice+cfg",
                   "samples/mine", "coco-val2017"):
        assert by_folder[folder]["paper"] == {}, folder
    assert by_folder["samples/dreamshaper-dice+cfg"]["guidance"] == "α=1, w=3"
    assert by_folder["samples/mine"]["model"] == "/models/my-finetune"

    order = [row["images"] for row in rows]  # paper model order, then cfg / unguided / dice, then steps
    assert order[:5] == ["samples/sd15-cfg5-10steps", "samples/sd15-cfg5", "samples/sd15-w1",
                         "samples/sd15-dice", "samples/sd15-dice-alpha2"]
    assert order.index("samples/dreamshaper-dice+cfg") < order.index("samples/sdxl-cfg5") < order.index("samples/pixart-dice")

    markdown = format_markdown(rows)
    assert "| SD1.5 | cfg |  |  |  |  | 5 |  |  | 20 | 40 | - | coco5k (5000) | 512 |  | 22.50 (22.04) | 30.10 (30.22) | 5.31 (5.36) |" in markdown
    table = list(csv.DictReader(io.StringIO(format_csv(rows))))
    assert table[1]["images"] == "samples/sd15-cfg5"
    assert table[1]["fid"] == "22.5" and table[1]["fid_paper"] == "22.04" and table[1]["aesthetic_count"] == "5000"
    assert table[0]["fid_paper"] == "" and table[0]["why_not_paper"] == "fid: 10 steps, not 20"  # no paper row


def test_results_cli_writes_markdown_and_csv(tmp_path, capsys):
    hand_written_results(tmp_path / "results.jsonl")
    spec = importlib.util.spec_from_file_location("results_cli", REPO / "evaluation" / "results.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cli.main(["--results", str(tmp_path / "results.jsonl"), "--out", str(tmp_path / "table" / "table1")])
    assert "22.50 (22.04)" in (tmp_path / "table" / "table1.md").read_text()
    assert (tmp_path / "table" / "table1.csv").read_text().startswith("model,base_model,sharpener_model,method,guidance,")
    assert (tmp_path / "table" / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "table1.md" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="calc commands write it"):
        cli.main(["--results", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "t")])


def test_smoke_test_rows_are_marked_and_never_beside_the_paper(tmp_path):
    """A run matching a paper row but scored with --smoke_test stand-ins: flagged, no paper numbers."""
    sd15_cfg = options("runwayml/stable-diffusion-v1-5", "cfg", 5.0)
    smoke = line("fid", 0.03, "samples/smoke", sd15_cfg)
    smoke["options"] = {"smoke_test": True}
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(smoke) + "\n" + json.dumps(line("fid", 22.5, "samples/real", sd15_cfg)) + "\n")
    rows = {row["images"]: row for row in build_table(read_results(path))}
    assert rows["samples/smoke"]["smoke_test"] and rows["samples/smoke"]["paper"] == {}
    assert not rows["samples/real"]["smoke_test"] and rows["samples/real"]["paper"]["fid"] == 22.04

    markdown = format_markdown(list(rows.values()))
    smoke_line = next(row for row in markdown.splitlines() if "samples/smoke" in row)
    assert "smoke test (random weights)" in smoke_line and "(22.04)" not in smoke_line and "0.03 |" in smoke_line
    assert "meaningless" in markdown
    table = {r["images"]: r for r in csv.DictReader(io.StringIO(format_csv(list(rows.values()))))}
    assert table["samples/smoke"]["smoke_test"] == "True" and table["samples/smoke"]["fid_paper"] == ""
    assert table["samples/real"]["smoke_test"] == "False"
    # Without smoke rows the Markdown table keeps its usual columns.
    assert "note" not in format_markdown([rows["samples/real"]]).splitlines()[0]


def test_cross_model_rows_name_both_models_and_are_not_table1(tmp_path):
    """A sharpener trained on DreamShaper sampled on SD1.5 (paper Fig. 6): both models in the table."""
    own = dict(options("Lykon/DreamShaper", "dice", 1.0, alpha=1.0), sharpener_base_model="Lykon/DreamShaper")
    cross = dict(options("stable-diffusion-v1-5/stable-diffusion-v1-5", "dice", 1.0, alpha=1.0),
                 sharpener_base_model="Lykon/DreamShaper")
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(line("fid", 30.4, "samples/own", own)) + "\n" + json.dumps(line("fid", 25.0, "samples/cross", cross)) + "\n")
    rows = {row["images"]: row for row in build_table(read_results(path))}
    assert rows["samples/own"]["paper"]["fid"] == 30.36 and rows["samples/cross"]["paper"] == {}
    assert (rows["samples/cross"]["model"], rows["samples/cross"]["sharpener_model"]) == ("SD1.5", "DreamShaper")
    markdown = format_markdown(list(rows.values()))
    assert "trained on" in markdown.splitlines()[0]
    assert next(r for r in markdown.splitlines() if "samples/cross" in r).startswith("| SD1.5 | dice | DreamShaper |  | 8000 |")
    table = {r["images"]: r for r in csv.DictReader(io.StringIO(format_csv(list(rows.values()))))}
    assert table["samples/cross"]["sharpener_model"] == "DreamShaper" and table["samples/cross"]["model"] == "SD1.5"
    with_negative = dict(options("Lykon/DreamShaper", "cfg", 5.0), negative_prompt="blurry")
    assert paper_values(with_negative) is None and paper_values(options("Lykon/DreamShaper", "cfg", 5.0))["fid"] == 30.35


def test_baseline_rows_scaling_gd_pnp(tmp_path):
    """Table 1's other rows: labels, NFE and trainable parameters, the paper's values where they match."""
    sd15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    scaling = dict(options(sd15, "scaling", 1.0), embedding_scale=1.2)
    other_s = dict(options(sd15, "scaling", 1.0), embedding_scale=1.5)
    final = {"trained_step": 8000, "trained_max_train_steps": 8000, "trained_preset": "authors"}  # the final checkpoint
    gd = dict(options(sd15, "gd", 1.0), gd_scale=5.0, trainable_parameters=859_602_884, **final)
    pnp = dict(options(sd15, "pnp", 1.0), gd_scale=5.0, nfe=28.4, trainable_parameters=361_279_120, **final)
    pnp7 = dict(pnp, gd_scale=7.0)
    dice = dict(options(sd15, "dice", 1.0, alpha=1.0), trainable_parameters=1_836_800, trained_preset="paper")
    path = tmp_path / "results.jsonl"
    entries = [("scaling", scaling), ("s15", other_s), ("gd", gd), ("pnp", pnp), ("pnp7", pnp7), ("dice", dice)]
    path.write_text("".join(json.dumps(line("fid", 25.0, f"samples/{name}", o)) + "\n" for name, o in entries))
    rows = {row["images"]: row for row in build_table(read_results(path))}
    assert [rows[f"samples/{n}"]["paper"].get("fid") for n, _ in entries] == [32.54, None, 23.54, 26.57, None, 22.22]
    assert [rows[f"samples/{n}"]["guidance"] for n, _ in entries] == ["s=1.2", "s=1.5", "ω=5", "ω=5", "ω=7", "α=1"]
    order = [row["images"] for row in build_table(read_results(path))]
    assert order.index("samples/scaling") < order.index("samples/gd") < order.index("samples/pnp") < order.index("samples/dice")
    markdown = format_markdown(list(rows.values()))
    assert "| SD1.5 | pnp |  | authors | 8000 |  | 1 |  | 5 | 20 | 28.4 | 361M | coco5k (5000) | 512 |  | 25.00 (26.57) |" in markdown
    assert "| SD1.5 | gd |  | authors | 8000 |  | 1 |  | 5 | 20 | 20 | 860M |" in markdown
    assert "| SD1.5 | dice |  | paper | 8000 | 1 | 1 |  |  | 20 | 20 | 1.84M |" in markdown
    assert "| SD1.5 | scaling |  |  |  |  | 1 | 1.2 |  | 20 | 20 | - |" in markdown
    table = {r["images"]: r for r in csv.DictReader(io.StringIO(format_csv(list(rows.values()))))}
    assert table["samples/pnp"]["params"] == "361279120" and table["samples/pnp"]["nfe"] == "28.4"
    assert table["samples/pnp"]["preset"] == "authors" and table["samples/scaling"]["output_filters_off"] == "safety_checker"


def test_paper_values_only_where_the_protocol_is_the_papers():
    """The issue's example: a 100-image, 256 px, step-800 DICE run must not print the paper's 22.22."""
    full = dict(options("stable-diffusion-v1-5/stable-diffusion-v1-5", "dice", 1.0, alpha=1.0))
    assert paper_values(full)["fid"] == 22.22
    for change, why in (({"num_images": 100}, "100 of the 5000 prompts"), ({"resolution": 256}, "256 px"),
                        ({"sharpener_step": 800}, "step 800, not the final one"), ({"scheduler": "ddim"}, "scheduler ddim"),
                        ({"embedding_scale": 1.2}, "not a Table 1 method")):
        assert paper_values({**full, **change}) is None
        assert why in protocol_mismatch({**full, **change})


def test_folders_of_the_choices_fixed_later_are_not_beside_the_paper():
    """Folders sampled before the safety checker was switched off (SD1.5) or before SDXL's CFG baseline took the stock
    pipeline's zero null embedding are not the authors' protocol: no paper value, and the CSV says why."""
    sd15 = options("stable-diffusion-v1-5/stable-diffusion-v1-5", "cfg", 5.0)
    assert paper_values(sd15)["fid"] == 22.04
    old_sd15 = {k: v for k, v in sd15.items() if k != "output_filters_off"}
    assert paper_values(old_sd15) is None and "safety checker on" in protocol_mismatch(old_sd15)
    sdxl = options("stabilityai/stable-diffusion-xl-base-1.0", "cfg", 5.0, family="sdxl")
    assert paper_values(sdxl)["fid"] == 23.95
    for old in ({k: v for k, v in sdxl.items() if k != "null_embedding"}, {**sdxl, "null_embedding": "encoded"}):
        assert paper_values(old) is None and "null embedding" in protocol_mismatch(old)


def test_hps_and_drawbench_columns_join_the_coco_row(tmp_path):
    """Folders of one configuration on COCO, an HPS style and DrawBench make one row with all their columns."""
    sd15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    coco = options(sd15, "cfg", 5.0)
    anime = dict(coco, prompts="hps-anime", num_images=800, prompt_set_size=800)
    drawbench = dict(coco, prompts="drawbench", num_images=100, prompt_set_size=200)  # part of the set only
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(entry) + "\n" for entry in (
        line("fid", 22.1, "samples/coco", coco), line("hps", 24.0, "samples/anime", anime, count=800),
        line("hps", 23.0, "samples/db", drawbench, count=100))))
    (row,) = build_table(read_results(path))
    assert row["values"] == {"fid": 22.1, "hps_anime": 24.0, "drawbench": 23.0}
    assert row["paper"] == {"fid": 22.04, "hps_anime": 24.29}  # DrawBench: 100 of 200 prompts, no paper value
    assert "100 of the 200 prompts of drawbench" in row["why_not_paper"]["drawbench"]
    assert row["prompts"] == "coco5k (5000), hps-anime (800), drawbench (100)"
    markdown = format_markdown([row])
    assert "HPS anime (paper)" in markdown and "| 24.00 (24.29) |" in markdown and "| 23.00 |" in markdown
