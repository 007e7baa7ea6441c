"""The end-to-end smoke test: sample.py → the three evaluators (--smoke_test) → the results table,
run as `bash launch.sh demo-eval` on a tiny sharpener, and the smoke-test stand-in networks."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from dice.checkpoint import SharpenerConfig, save_sharpener
from evaluation.metrics.smoke import (
    SmokeTokenizer,
    smoke_aesthetic_models,
    smoke_clip_score_model,
    smoke_feature_extractor,
)
from dice import Sharpener

REPO = Path(__file__).resolve().parents[1]
NUM_PROMPTS = 4


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_demo_eval_chain_through_launch_sh(tiny_model, tiny_dataset, tmp_path):
    exps = tmp_path / "exps"
    torch.manual_seed(0)
    config = SharpenerConfig(family="sd15", base_model=str(tiny_model("sd15")), dim=32, step=1)
    save_sharpener(exps / "00000-demo-sd15" / "checkpoint-1", Sharpener(32), config)
    save_sharpener(exps / "00001-other" / "checkpoint-1", Sharpener(32), config)  # not a demo run: not picked
    env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = ["bash", str(REPO / "launch.sh"), "demo-eval", "--exps_root", str(exps), "--ref_data", str(tiny_dataset),
               "--num_prompts", str(NUM_PROMPTS), "--steps", "2"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    out = exps / "00000-demo-sd15" / "demo_eval"
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    folders = {r["images"] for r in records}
    assert len(folders) == 3 and all(Path(f).parent == out / "samples" for f in folders)
    assert sorted((r["images"], r["metric"]) for r in records) == sorted(
        (f, m) for f in folders for m in ("fid", "clip_score", "aesthetic"))  # one line per (folder, metric)
    assert all(r["options"]["smoke_test"] is True and r["count"] == NUM_PROMPTS for r in records)
    assert all(np.isfinite(r["value"]) for r in records)
    assert {r["sampling_options"]["method"] for r in records} == {"dice", "cfg", "unguided"}
    assert {r["sampling_options"]["cfg_scale"] for r in records if r["sampling_options"]["method"] == "cfg"} == {5.0}
    for folder in folders:  # what sample.py wrote: 32×32 images at the demo resolution
        with PIL.Image.open(Path(folder) / "00000.png") as image:
            assert image.size == (32, 32)
    assert (out / "fid_ref_smoke.npz").is_file()

    markdown = (out / "table.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert len(rows) == 3 and all("smoke test (random weights)" in row for row in rows)
    assert "meaningless" in markdown and markdown in proc.stdout  # the table is printed at the end
    table = list(csv.DictReader((out / "table.csv").open()))
    assert len(table) == 3 and all(row["smoke_test"] == "True" and row["fid_paper"] == "" for row in table)


def test_fid_cli_smoke_test_as_a_script(tmp_path):
    """The standalone script path (its own process, no weights anywhere): ref, then a dimension guard."""
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        PIL.Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TORCH_HOME=str(tmp_path / "torch"))
    env.pop("DICE_INCEPTION_WEIGHTS", None)
    script = str(REPO / "evaluation" / "fid.py")
    ref = subprocess.run([sys.executable, script, "ref", "--data", str(tmp_path / "images"), "--dest",
                          str(tmp_path / "ref.npz"), "--smoke_test", "--num_workers", "0"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "SMOKE TEST" in ref.stdout
    with np.load(tmp_path / "ref.npz") as stats:
        assert stats["mu"].shape == (64,)  # not Inception's 2048: smoke and real statistics never mix
    help_text = subprocess.run([sys.executable, script, "calc", "--help"], env=env, capture_output=True, text=True).stdout
    assert "--smoke_test" in help_text and "MEANINGLESS" in help_text


def test_smoke_models_are_deterministic_and_leave_the_rng_alone():
    images = torch.randint(0, 256, (3, 3, 40, 32), dtype=torch.uint8)
    state = torch.random.get_rng_state()
    first, second = smoke_feature_extractor(), smoke_feature_extractor()
    assert torch.equal(torch.random.get_rng_state(), state)
    with torch.no_grad():
        features = first(images)
        assert features.shape == (3, 64) and torch.equal(features, second(images))

    pictures = [PIL.Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)) for i in range(3)]
    prompts = ["a red ball", "a blue cup under the sky", "a red ball"]
    outputs = []
    for _ in range(2):
        model, preprocess, tokenizer = smoke_clip_score_model()
        with torch.no_grad():
            outputs.append((model.encode_image(torch.stack([preprocess(p) for p in pictures])),
                            model.encode_text(tokenizer(prompts))))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    text = outputs[0][1]
    assert torch.equal(text[0], text[2]) and not torch.allclose(text[0], text[1])  # same prompt, same embedding
    tokens = SmokeTokenizer()(prompts)
    assert tokens.shape == (3, 16) and tokens[0, 0] == 0 and tokens[0, 4] == 1  # start, 3 words, end

    head, clip_model, _ = smoke_aesthetic_models()
    assert head.layers[0].in_features == clip_model.config.projection_dim
    assert torch.equal(torch.random.get_rng_state(), state)
