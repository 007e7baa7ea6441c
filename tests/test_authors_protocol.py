"""The protocol choices that decide whether a cluster run repeats the authors' (docs/authors_code.md), each built on a
tiny model in the situation a real checkpoint creates: a safety checker that flags images, an SDXL VAE that overflows
in fp16, the authors' loss normalisation, ω drawing, fp16 autocast, and every choice recorded where results are read."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from dice.adapters import adapter_class
from dice.distillation import distillation_loss
from dice.paper import TABLE1_PRESETS
from dice.presets import preset

PROMPTS = ["a red ball on a green field", "a photo of a cat"]


@pytest.fixture(scope="module")
def flagged_sd15(tmp_path_factory):
    """A tiny SD1.5 folder whose safety checker flags every image, as model_index.json lists one for the SD1.5 hub
    repos and DreamShaper."""
    from dice.testkit.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("flagged") / "sd15", "sd15", safety_checker=True)


def _black(image) -> bool:
    return np.asarray(image).max() == 0


def test_the_tiny_checker_flags_everything_in_the_stock_pipeline(flagged_sd15):
    from diffusers import StableDiffusionPipeline

    stock = StableDiffusionPipeline.from_pretrained(flagged_sd15)
    image = stock("a red ball", num_inference_steps=2, height=32, width=32).images[0]
    assert _black(image)  # the situation: without the fix every image below would be black


def test_sample_py_writes_no_black_image_and_records_the_checker_off(flagged_sd15, tmp_path):
    from dice.sample_cli import main as sample

    for cfg in ("5", "1"):
        folder = sample(["--pretrained_model_name_or_path", str(flagged_sd15), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", "2",
                         "--resolution", "32", "--cfg_scale", cfg, "--outdir", str(tmp_path / "samples")])
        images = sorted(folder.glob("*.png"))
        assert len(images) == 2 and not any(_black(Image.open(path)) for path in images)
        options = json.loads((folder / "sampling_options.json").read_text())
        assert options["output_filters_off"] == ["safety_checker"]


def test_training_validation_grid_and_checkpoint(flagged_sd15, tiny_dataset, tmp_path):
    from dice.training import main as train

    run = train("sd15", ["--pretrained_model_name_or_path", str(flagged_sd15), "--train_data_dir", str(tiny_dataset),
                         "--output_dir", str(tmp_path / "exps"), "--resolution", "32", "--train_batch_size", "2",
                         "--max_train_steps", "1", "--dataloader_num_workers", "0", "--validation_inference_steps", "2",
                         "--validation_prompts", "a red ball", "a blue cup"])
    grid = np.asarray(Image.open(run / "validation" / "step-000001.png").convert("L"))
    rows = np.array_split(grid[:, grid.shape[1] - 64:], 3)  # three rows (unguided, CFG, DICE) of two 32 px images
    assert all(row.max() > 0 for row in rows)
    config = json.loads((run / "checkpoint-1" / "sharpener.json").read_text())
    options = config["training_options"]
    assert options["output_filters_off"] == ["safety_checker"] and options["null_embedding"] == "encoded"
    assert options["preset"] == "paper"


def test_figures_and_demos_load_without_the_checker(flagged_sd15):
    """Figures, the plumbing demos and every evaluator load through Adapter.from_pretrained."""
    adapter = adapter_class("sd15").from_pretrained(str(flagged_sd15))
    assert adapter.pipe.safety_checker is None and adapter.removed_output_filters == ["safety_checker"]
    image = adapter.pipe("a red ball", num_inference_steps=2, height=32, width=32).images[0]
    assert not _black(image)


def test_dice_apply_documented_path_and_a_users_own_checker(flagged_sd15, caplog, tmp_path):
    """The documented path (docs, model card: safety_checker=None) gives no black image; on a user's own pipeline
    dice.apply leaves the checker alone and says so."""
    import dice
    from diffusers import StableDiffusionPipeline

    from dice.checkpoint import SharpenerConfig
    from dice.hub import model_card

    torch.manual_seed(0)
    sharpener = dice.Sharpener(32)
    sharpener.config = SharpenerConfig(family="sd15", base_model=str(flagged_sd15), dim=32)
    assert "safety_checker=None" in str(model_card(sharpener.config))
    documented = StableDiffusionPipeline.from_pretrained(flagged_sd15, safety_checker=None)
    dice.apply(documented, sharpener)
    assert not _black(documented("a red ball", num_inference_steps=2, height=32, width=32).images[0])
    own = StableDiffusionPipeline.from_pretrained(flagged_sd15)
    with caplog.at_level(logging.WARNING, logger="dice"):
        dice.apply(own, sharpener)
    assert "keeps its safety checker" in caplog.text and own.safety_checker is not None
    assert _black(own("a red ball", num_inference_steps=2, height=32, width=32).images[0])


def test_models_without_a_checker_keep_their_sample_folder_names(tiny_model):
    """The shapes world and the tiny models have no checker: nothing is recorded, so their folders keep their names."""
    assert adapter_class("sd15").from_pretrained(str(tiny_model("sd15"))).removed_output_filters == []


def test_sdxl_fp16_vae_encodes_finite_latents(tiny_model, tmp_path):
    """train_sdxl.py --mixed_precision fp16 with the model's own VAE: the stock SDXL VAE overflows in fp16 (NaN
    latents, NaN loss). A tiny VAE whose first convolution overflows fp16 stands for it; its config says force_upcast,
    as SDXL's does, and the stock pipeline decodes it in fp32: encoding does the same."""
    import shutil

    from diffusers import AutoencoderKL

    folder = tmp_path / "sdxl"
    shutil.copytree(tiny_model("sdxl"), folder)
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    with torch.no_grad():
        vae.encoder.conv_in.weight.mul_(1e5)  # still representable in fp16; its activations are not
    assert vae.config.force_upcast
    vae.save_pretrained(folder / "vae")
    adapter = adapter_class("sdxl").from_pretrained(str(folder), torch_dtype=torch.float16).freeze("cpu", torch.float16)
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = adapter.encode_images(pixels)
    assert latents.dtype == torch.float16 and torch.isfinite(latents).all()
    assert adapter.pipe.vae.dtype == torch.float16  # the stock pipeline still finds an fp16 VAE to upcast for decoding
    adapter.upcasts_fp16_vae = False  # the old behaviour: NaN
    assert not torch.isfinite(adapter.encode_images(pixels)).all()


# ---- the authors' training recipe --------------------------------------------------------------------------------
def test_authors_preset_is_their_launch_scripts():
    sd15, sdxl = preset("sd15", "authors"), preset("sdxl", "authors")
    for recipe in (sd15, sdxl):
        assert recipe["adam_weight_decay"] == 1e-2 and recipe["learning_rate"] == 2e-4
        assert recipe["lr_scheduler"] == "constant" and recipe["lr_warmup_steps"] == 0
        assert recipe["loss_reduction"] == "sum_per_global_batch" and recipe["shared_timestep"]
        assert recipe["denoiser_autocast"] == "fp16"
    assert (sd15["loss_type"], sd15["train_batch_size"], sd15["max_train_steps"]) == ("l1", 16, 8000)
    assert (sdxl["loss_type"], sdxl["train_batch_size"], sdxl["max_train_steps"]) == ("mse", 8, 4000)
    gd, pnp = preset("sd15", "authors", "gd"), preset("sd15", "authors", "pnp")
    assert gd["omega_draw"] == pnp["omega_draw"] == "batch" and gd["omega_student_input"] == "integer"
    assert "omega_student_input" not in pnp and gd["learning_rate"] == pnp["learning_rate"] == 5e-5
    assert gd["loss_type"] == "mse" and gd["loss_reduction"] == "sum_per_global_batch" and gd["denoiser_autocast"] == "fp16"
    assert "omega_draw" not in preset("sd15", "paper", "gd") and "denoiser_autocast" not in preset("sd15", "paper")
    assert TABLE1_PRESETS == {"sd15": "authors", "dreamshaper": "authors", "sdxl": "authors", "pixart": "paper"}


def test_sum_per_global_batch_is_the_authors_loss():
    """Their per-process loss: (prediction - target) summed over the micro-batch, divided by the global batch."""
    student, teacher = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    ours = distillation_loss(student, teacher, "l1", "sum_per_global_batch", global_batch=4 * 8)
    assert ours.item() == pytest.approx((student - teacher).abs().sum().mul(1 / 32).item(), rel=1e-6)
    per_sample = distillation_loss(student, teacher, "l1", "sum_per_sample")
    assert ours.item() == pytest.approx(per_sample.item() / 8, rel=1e-6)  # = sum_per_sample / processes
    with pytest.raises(ValueError, match="global batch"):
        distillation_loss(student, teacher, "l1", "sum_per_global_batch")


def test_omega_per_global_batch_and_gd_student_truncation(tiny_model):
    from dice.data import step_generator
    from dice.methods import build_method
    from dice.methods.gd import guidance_embedding

    method = build_method("gd", guidance_scale=None, guidance_scale_range=[2.0, 14.0], omega_draw="batch",
                          omega_student_input="integer")
    draws = [method.training_guidance(4, step_generator(0, 7, 0, rank), step_generator(0, 7, 0, -1)) for rank in (0, 1)]
    assert torch.equal(draws[0], draws[1]) and len(set(draws[0].tolist())) == 1  # one ω on every process
    per_sample = build_method("gd", guidance_scale=None, guidance_scale_range=[2.0, 14.0])
    assert len(set(per_sample.training_guidance(4, step_generator(0, 7, 0, 0)).tolist())) == 4
    adapter = adapter_class("sd15").from_pretrained(str(tiny_model("sd15")))
    student = method.build(adapter)
    torch.nn.init.normal_(student.time_embedding.cond_proj.weight)  # make the ω input matter
    seen = []
    hook = student.register_forward_hook(lambda m, a, kw, out: seen.append(kw["timestep_cond"]), with_kwargs=True)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.encode_negative(["", ""])
    method.student_noise(student, adapter, x_t, t, cond, uncond, torch.tensor([5.9, 13.2]), None)
    per_sample.student_noise(student, adapter, x_t, t, cond, uncond, torch.tensor([5.9, 13.2]), None)
    hook.remove()
    torch.testing.assert_close(seen[0], guidance_embedding(torch.tensor([5.0, 13.0])))
    torch.testing.assert_close(seen[1], guidance_embedding(torch.tensor([5.9, 13.2])))


def test_denoiser_autocast_runs_the_teacher_in_that_dtype(tiny_model):
    from dice.distillation import cfg_teacher

    adapter = adapter_class("sd15").from_pretrained(str(tiny_model("sd15"))).freeze("cpu", torch.float32)
    x_t, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 700])
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.encode_negative(["", ""])
    plain = cfg_teacher(adapter, x_t, t, cond, uncond, 5.0)
    adapter.denoiser_autocast = torch.bfloat16
    autocast = cfg_teacher(adapter, x_t, t, cond, uncond, 5.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        adapter.denoiser_autocast = None
        explicit = cfg_teacher(adapter, x_t, t, cond, uncond, 5.0)
    assert not torch.equal(plain, autocast) and torch.equal(autocast, explicit)


def test_table1_prints_and_records_its_preset(tmp_path):
    """launch.sh asks dice.recipes for the block's preset; its one-line refusal names the blocks."""
    import subprocess
    import sys

    from conftest import REPO

    run = lambda *a: subprocess.run([sys.executable, "-m", "dice.recipes", *a], cwd=REPO, capture_output=True, text=True)  # noqa: E731
    assert run("table1-preset", "sdxl").stdout.strip() == "authors"
    # "sd15" is SD1.5 itself (the authors' sample.py loaded DreamShaper under that name)
    assert run("model", "sd15").stdout.strip() == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert run("model", "dreamshaper").stdout.strip() == "Lykon/DreamShaper"
    assert run("table1-preset", "pixart").stdout.strip() == "paper"
    refused = run("table1-preset", "sd3")
    assert refused.returncode != 0 and "no Table-1 block 'sd3'" in refused.stderr and "Traceback" not in refused.stderr
    script = (REPO / "launch.sh").read_text()
    assert '--preset="$preset"' in script and "table1-preset" in script


def test_shared_timestep_is_one_t_for_the_global_batch(tiny_model):
    """--shared_timestep (authors): one t for the whole batch and the same on every process (theirs: Python's random
    seeded 42 on every GPU; ours: a generator keyed by seed and step, without the rank)."""
    from dice.data import step_generator
    from dice.distillation import distillation_step
    from dice.methods import build_method
    from dice.training import NegativeBank
    from dice.negatives import NegativePrompts

    adapter = adapter_class("sd15").from_pretrained(str(tiny_model("sd15")))
    method = build_method("dice")
    sharpener = method.build(adapter)
    seen, add_noise = [], adapter.add_noise
    adapter.add_noise = lambda latents, noise, t: seen.append(t.clone()) or add_noise(latents, noise, t)
    latents, bank = torch.randn(3, 4, 8, 8), NegativeBank(adapter, NegativePrompts())
    for rank, shared in ((0, True), (1, True), (0, False)):
        distillation_step(adapter, method, sharpener, latents, PROMPTS + PROMPTS[:1], None, bank,
                          step_generator(0, 3, 0, rank), shared_generator=step_generator(0, 3, 0, -1),
                          shared_timestep=shared)
    assert len(set(seen[0].tolist())) == 1 and torch.equal(seen[0], seen[1])
    assert len(set(seen[2].tolist())) > 1


def test_gd_and_pnp_train_fp32_master_weights():
    """A recorded difference: the authors cast GD's UNet and PnP's ControlNet to bf16 and stepped AdamW on bf16 weights.
    An Adam step moves a weight by about lr = 5e-5, below the resolution of a bf16 weight of magnitude 0.05 (2^-8 x 0.05
    = 2e-4), so such steps round away; ours keep fp32 weights under mixed precision."""
    from dice.methods import build_method
    from dice.testkit.tiny import build_tiny_pipeline

    adapter = adapter_class("sd15")(build_tiny_pipeline("sd15"), "tiny").freeze("cpu", torch.bfloat16)
    for name in ("gd", "pnp"):
        module = build_method(name, guidance_scale=None, guidance_scale_range=[2.0, 14.0]).build(adapter)
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    weight = torch.tensor(0.05, dtype=torch.bfloat16)
    assert weight - 5e-5 == weight  # the lost update


def test_sdxl_watermark_is_off(tiny_model):
    """The stock SDXL pipeline watermarks every image when invisible-watermark is installed; the authors' had none."""
    adapter = adapter_class("sdxl").from_pretrained(str(tiny_model("sdxl")))
    assert adapter.pipe.watermark is None


def test_latents_are_the_posterior_mean_and_the_sampler_is_dpm_solver_pp_2m(tiny_model):
    """Two recorded choices: training latents are the VAE posterior's mean (the authors drew .sample()); sampling uses
    DPM-Solver++ (2M) built from the model's own scheduler config, as the authors' sample.py did."""
    from dice.sampling import use_scheduler

    adapter = adapter_class("sd15").from_pretrained(str(tiny_model("sd15")))
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mean = adapter.pipe.vae.encode(pixels).latent_dist.mode() * adapter.pipe.vae.config.scaling_factor
    torch.testing.assert_close(adapter.encode_images(pixels), mean)
    use_scheduler(adapter, "dpmsolver++")
    scheduler = adapter.pipe.scheduler
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert (scheduler.config.algorithm_type, scheduler.config.solver_order) == ("dpmsolver++", 2)
    assert scheduler.config.beta_schedule == adapter.noise_scheduler.config.beta_schedule
