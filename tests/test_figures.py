"""Every figure script on the tiny pipeline (seconds each): JSON + PNG out, sweeps resumable.

The numbers are meaningless here (random weights, --smoke_test metric stand-ins); what is checked is
that each analysis runs end to end through sample.py and the evaluators, writes its files, and that a
second run reuses the finished sample folders and scores."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from dice.checkpoint import SharpenerConfig, save_sharpener
from dice import Sharpener


@pytest.fixture
def setup(tiny_model, tmp_path):
    torch.manual_seed(0)
    config = SharpenerConfig(family="sd15", base_model=str(tiny_model("sd15")), dim=32, step=2,
                             training_options={"resolution": 32, "max_train_steps": 2, "guidance_scale": 5.0})
    for step in (1, 2):
        save_sharpener(tmp_path / "exps" / "00000-tiny" / f"checkpoint-{step}", Sharpener(32), config)
    (tmp_path / "prompts.txt").write_text("a red ball\na blue cup under the sky\n")
    common = ["--exps_root", str(tmp_path / "exps"), "--out", str(tmp_path / "fig")]
    sweep = common + ["--prompts", str(tmp_path / "prompts.txt"), "--metrics", "paper", "--smoke_test", "--batch_gpu", "2"]
    return tmp_path, common, sweep


def _read(out, name):
    data = json.loads((out / f"{name}.json").read_text())
    assert (out / f"{name}.png").stat().st_size > 1000
    return data


def test_quality_sweeps_run_and_reuse_their_folders(setup, tiny_dataset):
    from figures import sweeps

    root, _, sweep = setup
    out = root / "fig"
    nfe = sweeps.nfe_cli(sweep + ["--sharpener_path", "0", "--nfe", "2", "3", "4"])
    assert [x for x, _ in nfe["series"]["DICE (1 NFE/step)"]] == [2, 3, 4]
    assert [x for x, _ in nfe["series"]["CFG w=5 (2 NFE/step)"]] == [2, 4]  # odd NFE: no CFG point
    alpha = sweeps.alpha_cli(sweep + ["--sharpener_path", "0", "--alphas", "0", "1", "--steps", "2"])
    assert set(alpha["references"]) == {"unguided", "CFG w=5"} and "clip_score" in alpha["series"]["DICE"][0][1]
    # alpha 0 and the unguided reference are one folder, scored once.
    assert alpha["series"]["DICE"][0][1]["folder"] == alpha["references"]["unguided"]["folder"]
    lines = (out / "results.jsonl").read_text().splitlines()
    sweeps.alpha_cli(sweep + ["--sharpener_path", "0", "--alphas", "0", "1", "--steps", "2"])  # a rerun: nothing new
    assert (out / "results.jsonl").read_text().splitlines() == lines
    both = sweeps.dice_cfg_cli(sweep + ["--sharpener_path", "0", "--cfg_scales", "1", "2", "--steps", "2"])
    assert set(both["series"]) == {"CFG", "DICE + CFG"}
    curve = sweeps.training_cli(sweep + ["--experiment", "0", "--steps", "2"])
    assert [x for x, _ in curve["series"]["DICE"]] == [0, 1, 2]
    train_args = (f"--pretrained_model_name_or_path {_base_model(root)} --train_data_dir {tiny_dataset} "
                  f"--output_dir {root / 'exps'} --resolution 32 --train_batch_size 2 --max_train_steps 1 "
                  f"--dataloader_num_workers 0 --validation_prompts")
    structure = sweeps.structure_cli(sweep + ["--experiments", "0", "--train", "16x2", "--train_args", train_args, "--steps", "2"])
    widths = sorted(values["inner_dim"] for _, values in structure["series"]["DICE (inner width / heads)"])
    assert widths == [16, 512]
    (run,) = (root / "exps").glob("*-structure-16x2")
    shutil.rmtree(run / "checkpoint-1")  # as if killed before its checkpoint: a rerun continues that run, none new
    sweeps.structure_cli(sweep + ["--experiments", "0", "--train", "16x2", "--train_args", train_args, "--steps", "2"])
    assert list((root / "exps").glob("*-structure-16x2")) == [run] and (run / "checkpoint-1").is_dir()
    for name in ("quality_vs_nfe", "alpha_sweep", "dice_cfg_sweep", "training_curve", "sharpener_structure"):
        _read(out, name)


def _base_model(root):
    return json.loads((root / "exps" / "00000-tiny" / "checkpoint-1" / "sharpener.json").read_text())["base_model"]


def test_transfer_matrix(setup):
    from figures.transfer import cli

    root, _, sweep = setup
    data = cli(sweep + ["--sharpeners", "0", str(root / "exps" / "00000-tiny" / "checkpoint-1"), "--models", _base_model(root),
                        "--steps", "2"])
    assert len(data["matrix"]) == 3 and all(len(row) == 1 for row in data["matrix"].values())
    _read(root / "fig", "transfer_matrix")


def test_embedding_analyses_attention_and_prompt_optimisation(setup):
    from figures import attention, embeddings, optimise

    root, common, _ = setup
    out = root / "fig"
    prompts = ["--prompts", str(root / "prompts.txt")]
    split = embeddings.semantic_padding_cli(common + prompts + ["--sharpener_path", "0", "--panel_prompts", "2", "--steps", "2"])
    assert split["num_prompts"] == 2 and -1 <= split["cosine"]["padding"]["mean"] <= 1
    assert (out / "semantic_padding_panel.png").is_file()
    pca = embeddings.pca_cli(common + prompts + ["--sharpener_path", "0"])
    assert 0 < pca["pca"]["original"]["top3"] <= 1 and pca["pca"]["sharpened"]["components_80"] >= 1
    maps = attention.cli(common + ["--sharpener_path", "0", "--prompt", "a red ball", "--steps", "3"])
    assert maps["tokens"] == ["a", "red", "ball", "padding (mean)"] and (out / "attention_trajectory.png").is_file()
    fit = optimise.cli(["--pretrained_model_name_or_path", _base_model(root), "--prompt", "a red ball", "--out", str(out),
                        "--fit_steps", "3", "--steps", "2", "--seeds", "2"])
    assert fit["loss_last10"] > 0 and (out / "prompt_optimisation_grid.png").is_file()
    for name in ("semantic_padding", "embedding_pca", "attention_maps", "prompt_optimisation"):
        _read(out, name)


def test_end_of_text_split():
    from figures.embeddings import part_cosines, part_masks

    semantic, padding = part_masks(torch.tensor([3, 1]), 5, first_semantic=1)
    assert semantic.tolist() == [[False, True, True, False, False], [False] * 5]
    assert padding.tolist() == [[False, False, False, True, True], [False, True, True, True, True]]
    original = torch.ones(2, 5, 4)
    sharpened = original.clone()
    sharpened[:, 3:] *= -1  # padding flipped, semantic kept
    assert part_cosines(original, sharpened, semantic)[0] == pytest.approx(1.0)
    assert part_cosines(original, sharpened, padding)[0] == pytest.approx(-1.0)
    assert part_cosines(original, sharpened, semantic)[1].isnan()  # an empty part
