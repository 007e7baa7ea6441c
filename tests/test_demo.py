"""The embedded demo (`bash launch.sh demo`): the gap measure, the free-residual reference, a short run."""
from __future__ import annotations

import json
from pathlib import Path

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


REPO = Path(__file__).resolve().parents[1]
DEMO_RESULT = REPO / "docs" / "shapes_world" / "demo_result.json"  # written by python -m dice.demo --results_out


def test_the_readme_shows_the_committed_demo_result():
    """README.md's and docs/shapes_world.md's demo tables are the committed demo_result.json as the demo prints it,
    from a run of the demo as shipped (its preset, 256 prompts, pinned CPU kernels), meeting the issue's target."""
    from dice.presets import preset
    from dice.shapes_world.demo import PINNED_KERNELS, TOY_PRESET, render_report_block

    result = json.loads(DEMO_RESULT.read_text())
    for page in ("README.md", "docs/shapes_world.md"):
        text = (REPO / page).read_text()
        assert render_report_block(text, result) == text, f"{page}: run python -m dice.shapes_world.demo"
    settings = preset("sd15", TOY_PRESET)
    assert (result["preset"], result["seed"], result["num_prompts"]) == (TOY_PRESET, 0, 256)
    assert (result["train_steps"], result["train_batch_size"]) == (settings["max_train_steps"], settings["train_batch_size"])
    assert result["cpu_kernels"] == {"pinned": True, **PINNED_KERNELS, "aten_capability": "AVX2", "threads": 2}


@pytest.mark.xfail(strict=True, reason="issue 30, item 3, not met: the committed demo's trained-now row recovers 44.7% "
                   "(docs/shapes_world.md, the recipe); remove this mark when a recipe clears it")
def test_the_trained_now_row_clears_40_percent_of_cfgs_gain_with_margin():
    assert json.loads(DEMO_RESULT.read_text())["cfg_gain_recovered_now"] >= 0.45


def test_a_report_block_is_replaced_whole_and_only_where_marked():
    from dice.shapes_world.demo import REPORT_BEGIN, REPORT_END, render_report_block

    result = json.loads(DEMO_RESULT.read_text())
    page = f"before\n{REPORT_BEGIN}\n```\nold table\n```\n{REPORT_END}\nafter\n"
    rendered = render_report_block(page, result)
    assert rendered.startswith("before\n") and rendered.endswith(f"{REPORT_END}\nafter\n") and "old table" not in rendered
    assert f"accuracy_dice_now={result['methods']['dice_now']['accuracy']:.3f}" in rendered
    assert render_report_block(rendered, result) == rendered
    with pytest.raises(ValueError, match="one block"):
        render_report_block("no block here", result)


@pytest.mark.slow
def test_the_demo_prints_the_readme_numbers_whatever_kernels_the_environment_asks_for(tmp_path):
    """The README claims the same numbers on every run on the CPUs it names. Run the whole demo (minutes) in a fresh
    process whose environment asks for other kernels and threads than the demo pins: it must print the README's table
    line for line."""
    import os
    import subprocess
    import sys

    from dice.shapes_world.demo import toy_report

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if not ("AMD EPYC" in cpuinfo and " avx512f " in cpuinfo):
        pytest.skip("the README claims these exact numbers for AMD EPYC CPUs with AVX-512, where they were measured; "
                    "elsewhere MKL's kernels give other bits (docs/shapes_world.md, the demo)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), ATEN_CPU_CAPABILITY="default",
               ONEDNN_MAX_CPU_ISA="SSE41", MKL_CBWR="AUTO", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "dice.demo", "--exps_root", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.rstrip().splitlines()
    expected = toy_report(json.loads(DEMO_RESULT.read_text())).splitlines()
    assert printed[-len(expected):] == expected
