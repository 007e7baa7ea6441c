"""The embedded demo (`bash launch.sh demo`): the gap measure, the free-residual reference, a short run."""
from __future__ import annotations

import json

import pytest
import torch

from dice.residuals import PromptResiduals, fit_prompt_residuals
from dice.testkit.plumbing_demo import held_out_prompts
from evaluation.metrics.guidance_gap import cfg_gap_closed
from dice.methods.dice import sharpen
from dice.distillation import cfg_teacher


def test_cfg_gap_closed_measures_the_share_of_the_distance():
    z_uncond, z_cfg = torch.zeros(3, 4, 2, 2), torch.ones(3, 4, 2, 2)
    assert cfg_gap_closed(z_uncond, z_cfg, z_cfg) == pytest.approx(1.0)
    assert cfg_gap_closed(z_uncond, z_cfg, z_uncond) == pytest.approx(0.0)
    assert cfg_gap_closed(z_uncond, z_cfg, torch.full_like(z_cfg, 0.25)) == pytest.approx(0.25)
    # Overshooting CFG by as much as unguided falls short closes nothing.
    assert cfg_gap_closed(z_uncond, z_cfg, torch.full_like(z_cfg, 2.0)) == pytest.approx(0.0)


def test_prompt_residuals_refuse_other_prompt_batches():
    residuals = PromptResiduals(2, 5, 8)
    with pytest.raises(ValueError, match="fitted for embeddings"):
        residuals(torch.zeros(3, 5, 8), torch.zeros(3, 5, 8))


def test_fitted_residuals_lower_the_dice_loss(tiny_model, tiny_dataset):
    from dice.adapters import adapter_class
    from dice.data import load_records, make_loader
    from dice.distillation import distillation_loss

    adapter = adapter_class("sd15").from_pretrained(str(tiny_model("sd15")))
    prompts = held_out_prompts(4)
    residuals = fit_prompt_residuals(adapter, prompts, tiny_dataset, 5.0, 32, steps=40, seed=3)
    assert residuals.residual.abs().sum() > 0

    # Fresh draws, not the ones it was fitted on.
    _, records = load_records(tiny_dataset)
    batch = next(iter(make_loader(records, 32, 4, 0, 1, seed=99)))
    gen = torch.Generator().manual_seed(7)
    latents = adapter.encode_images(batch["pixels"])
    losses = {"zero": [], "fitted": []}
    cond, uncond = adapter.encode_prompts(prompts), adapter.encode_negative([""] * 4)
    with torch.no_grad():
        for _ in range(4):
            t = torch.randint(0, adapter.num_train_timesteps, (4,), generator=gen)
            x_t = adapter.add_noise(latents, torch.randn(latents.shape, generator=gen), t)
            teacher = cfg_teacher(adapter, x_t, t, cond, uncond, 5.0)
            losses["zero"].append(distillation_loss(adapter.predict_noise(x_t, t, cond), teacher).item())
            fitted = adapter.predict_noise(x_t, t, sharpen(adapter, residuals, cond, uncond))
            losses["fitted"].append(distillation_loss(fitted, teacher).item())
    assert sum(losses["fitted"]) < 0.9 * sum(losses["zero"])


def test_demo_runs_end_to_end_and_reports_the_gap(tmp_path, capsys):
    from dice.demo import cli

    cli(["sd15", "--exps_root", str(tmp_path), "--max_train_steps", "2", "--num_prompts", "2",
         "--model_seed", "1", "--free_residual_steps", "2"])
    out = capsys.readouterr().out
    run_dir = tmp_path / "00000-demo-sd15"
    result = json.loads((run_dir / "demo_result.json").read_text())
    assert result["train_steps"] == 2 and result["num_prompts"] == 2 and result["model_seed"] == 1
    assert result["free_residual_steps"] == 2
    for key in ("cfg_gap_closed", "free_residual_gap_closed"):
        assert result[key] < 1.0 and result[key] == result[key]  # a fraction, not NaN
    assert (tmp_path / "_demo_assets" / "tiny-sd15-seed1" / "model_index.json").is_file()
    assert out.rstrip().splitlines()[-1] == f"cfg_gap_closed={result['cfg_gap_closed']:.3f}"
    assert "not image quality" in out and "free_residual_gap_closed=" in out
