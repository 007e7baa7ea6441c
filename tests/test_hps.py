"""HPS v2.1 and DrawBench (Table 1's last five columns): sample.py on a named set, evaluation/hps.py, the table."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from evaluation.record import read_results
from evaluation.table import build_table

REPO = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"eval_{name}", REPO / "evaluation" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_drawbench_folder_scored_into_its_column(tiny_model, tmp_path, monkeypatch):
    from dice.sample_cli import main as sample_main

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "drawbench.csv").write_text("Prompts,Category\nA red colored car.,Colors\nA cup on a table.,Positional\n")
    monkeypatch.setenv("DICE_PROMPTS_DIR", str(prompts))
    folder = sample_main(["--pretrained_model_name_or_path", str(tiny_model("sd15")), "--prompts", "drawbench", "--steps", "2",
                          "--outdir", str(tmp_path / "samples")])
    assert "-drawbench-" in folder.name
    options = json.loads((folder / "sampling_options.json").read_text())
    assert options["prompts"] == "drawbench" and options["prompt_set_size"] == 2
    results = tmp_path / "results.jsonl"
    _script("hps").main(["calc", "--images", str(folder), "--results", str(results), "--smoke_test", "--num_workers", "0"])
    (record,) = read_results(results)
    assert record["metric"] == "hps" and record["options"]["prompt_set"] == "drawbench" and record["count"] == 2
    assert record["options"]["smoke_test"] is True
    (row,) = build_table([record])
    assert list(row["values"]) == ["drawbench"] and row["paper"] == {}


def test_missing_or_wrong_hps_weights_are_one_line(tmp_path, monkeypatch):
    from evaluation.metrics.hps import load_hps
    from evaluation.metrics.weights import MissingWeightsError, WrongWeightsError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("DICE_HPS_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError, match=r"hf download xswu/HPSv2 HPS_v2.1_compressed.pt.*--hps_weights"):
        load_hps()
    with pytest.raises(MissingWeightsError, match="not found"):
        load_hps(str(tmp_path / "nope.pt"))
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(WrongWeightsError, match="not a readable HPS weights file"):
        load_hps(str(tmp_path / "bad.pt"))
