"""The method axis (GD, PnP beside DICE) on the tiny pipelines: training through dice.training.main, resume,
what is trained and how big it is, the student at initialisation, and sampling through sample.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dice.adapters import adapter_class
from dice.data import load_records, make_loader, step_generator
from dice.distillation import distillation_loss
from dice.methods import build_method, load_trained, method_class
from dice.methods.base import count_parameters
from dice.methods.gd import GUIDANCE_EMBEDDING_DIM, guidance_embedding
from dice.sampling import generate
from dice.options import build_parser, resolve_options
from dice.training import main
from dice.methods.gd import timestep_projection_path
from dice.distillation import cfg_teacher

COMBINATIONS = [("sd15", "gd"), ("sd15", "pnp"), ("sdxl", "gd"), ("sdxl", "pnp"), ("pixart", "gd"), ("sd3", "gd")]
WEIGHTS = {"gd": {"sd15": "unet", "sdxl": "unet", "pixart": "transformer", "sd3": "transformer"},
           "pnp": {"sd15": "controlnet", "sdxl": "controlnet"}}


def _args(model, data, out, steps, *extra):
    return ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data), "--output_dir", str(out),
            "--resolution", "32", "--train_batch_size", "2", "--max_train_steps", str(steps), "--checkpointing_steps",
            str(steps), "--dataloader_num_workers", "0", "--validation_prompts", *extra]


def _trained_weights(checkpoint: Path, family: str, method: str) -> dict[str, torch.Tensor]:
    (file,) = (checkpoint / WEIGHTS[method][family]).glob("*.safetensors")
    weights = load_file(str(file))
    if (checkpoint / "guidance_embedding.safetensors").is_file():
        weights["cond_proj"] = load_file(str(checkpoint / "guidance_embedding.safetensors"))["weight"]
    return weights


@pytest.mark.parametrize("family,method", COMBINATIONS)
def test_train_resume_and_sample(family, method, tiny_model, tiny_dataset, tmp_path):
    from dice.sample_cli import main as sample

    model, out = tiny_model(family), tmp_path / "exps"
    short = ("--max_sequence_length", "8") if family == "sd3" else ()  # 8 T5 tokens, not 256: a faster tiny run
    straight = main(family, _args(model, tiny_dataset, out, 4, "--method", method, "--desc", "straight", *short))
    main(family, _args(model, tiny_dataset, out, 2, "--method", method, "--desc", "cut", *short))
    resumed = main(family, _args(model, tiny_dataset, out, 4, "--method", method, "--resume_from_checkpoint", "latest",
                                 "--experiment", "1", *short))
    assert resumed.name == "00001-cut"
    a, b = (_trained_weights(run / "checkpoint-4", family, method) for run in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    assert not (straight / "checkpoint-4" / "model.safetensors").exists()  # resumed from the method's own files
    config = json.loads((straight / "checkpoint-4" / "method.json").read_text())
    assert config["method"] == method and config["step"] == 4 and config["training_options"]["learning_rate"] == 5e-5
    assert config["training_options"]["guidance_scale_range"] == [2.0, 14.0]

    folder = sample(["--model_path", "0", "--exps_root", str(out), "--prompt", "a red ball", "--prompt", "a cat",
                     "--steps", "2", "--outdir", str(tmp_path / "samples")])
    assert sorted(p.name for p in folder.glob("*.png")) == ["00000.png", "00001.png"]
    options = json.loads((folder / "sampling_options.json").read_text())
    assert options["method"] == method and options["gd_scale"] == 5 and options["trained_step"] == 4
    assert options["trainable_parameters"] == config["method_options"]["trainable_parameters"]
    assert folder.name.startswith(f"{family}-{method}-00000-g5-")
    per_step = 1 + (options["trainable_parameters"] / config["method_options"]["base_parameters"] if method == "pnp" else 0)
    assert options["nfe"] == pytest.approx(2 * per_step, abs=0.05)


def _fixed_batches(adapter, data, count=2, batch_size=8, seed=123):
    """Noised training latents with fixed timesteps and ω, and their CFG targets: an evaluation set."""
    _, records = load_records(data)
    loader = iter(make_loader(records, 32, batch_size, 0, 1, seed))
    batches = []
    for index in range(count):
        batch, gen = next(loader), step_generator(seed, index)
        latents = adapter.encode_images(batch["pixels"])
        t = torch.randint(0, 1000, (batch_size,), generator=gen)
        x_t = adapter.add_noise(latents, torch.randn(latents.shape, generator=gen), t)
        cond, uncond = adapter.encode_prompts(batch["captions"]), adapter.encode_negative([""] * batch_size)
        omega = 2 + 12 * torch.rand(batch_size, generator=gen)
        batches.append((x_t, t, cond, uncond, omega, cfg_teacher(adapter, x_t, t, cond, uncond, omega)))
    return batches


@pytest.mark.parametrize("method", ["gd", "pnp"])
def test_starts_as_the_base_model_and_the_loss_goes_down(method, tiny_model, tiny_dataset, tmp_path):
    """At initialisation the student is the unguided base model (zero-initialised ω-map / residuals);
    a short run lowers the distillation loss on a fixed evaluation set."""
    adapter = adapter_class("sd15").from_pretrained(str(tiny_model("sd15"))).freeze("cpu", torch.float32)
    batches = _fixed_batches(adapter, tiny_dataset)
    args = resolve_options("sd15", build_parser("sd15").parse_args(_args(tiny_model("sd15"), tiny_dataset, tmp_path, 1, "--method", method)))
    impl = build_method(method, **vars(args))
    torch.manual_seed(0)
    initial = impl.build(adapter)

    def loss(module):
        with torch.no_grad():
            return sum(distillation_loss(impl.student_noise(module, adapter, x_t, t, c, u, w, None), target).item()
                       for x_t, t, c, u, w, target in batches) / len(batches)

    x_t, t, cond, uncond, omega, _ = batches[0]
    with torch.no_grad():  # equal to float rounding (another module instance: ~1e-6)
        torch.testing.assert_close(impl.student_noise(initial, adapter, x_t, t, cond, uncond, omega, None),
                                   adapter.predict_noise(x_t, t, cond))
    run = main("sd15", _args(tiny_model("sd15"), tiny_dataset, tmp_path, 100, "--method", method, "--learning_rate", "3e-3",
                             "--train_batch_size", "8"))
    trained = load_trained(run)
    assert loss(trained.module) < 0.8 * loss(initial)


def test_trainable_parameters_are_the_papers(tiny_model, tiny_dataset, tmp_path):
    """GD trains the whole denoiser plus its ω-map (256 x the timestep-feature width); PnP the UNet's encoder
    half (copied), its zero convolutions and the control-image encoder; DICE the sharpener only."""
    counts = {}
    for family in ("sd15", "sdxl", "pixart"):
        adapter = adapter_class(family).from_pretrained(str(tiny_model(family))).freeze("cpu", torch.float32)
        args = resolve_options(family, build_parser(family).parse_args(_args(tiny_model(family), tiny_dataset, tmp_path, 1)))
        base = count_parameters(adapter.denoiser)
        gd = build_method("gd", **vars(args)).build(adapter)
        # Width of the timestep's sinusoidal features, to which the ω-map adds.
        features = adapter.denoiser.get_submodule(timestep_projection_path(adapter.denoiser) or "time_proj").num_channels
        assert count_parameters(gd) == base + GUIDANCE_EMBEDDING_DIM * features
        counts[family] = (base, count_parameters(gd))
        if family == "pixart":
            with pytest.raises(Exception, match="not available for pixart"):
                method_class("pnp").check_family(type(adapter))
            continue
        unet, guide = adapter.denoiser, build_method("pnp", **vars(args)).build(adapter)
        copied = [unet.conv_in, unet.time_embedding, unet.down_blocks, unet.mid_block] + ([unet.add_embedding] if family == "sdxl" else [])
        own = [guide.controlnet_cond_embedding, guide.controlnet_down_blocks, guide.controlnet_mid_block]
        assert count_parameters(guide) == sum(map(count_parameters, copied + own))
        # The copy starts from the frozen weights; the residual convolutions start at zero.
        assert torch.equal(guide.down_blocks[0].resnets[0].conv1.weight, unet.down_blocks[0].resnets[0].conv1.weight)
        assert all(p.abs().sum() == 0 for p in guide.controlnet_down_blocks.parameters())
    assert counts["pixart"][1] - counts["pixart"][0] == 256 * 256


def test_the_stock_pipelines_get_what_training_used(tiny_model, tiny_dataset, tmp_path):
    """GD: the stock SD pipeline feeds the GD UNet emb(ω − 1), the embedding training used, and skips CFG.
    PnP: the stock ControlNet pipeline feeds the guide ω in every pixel at the sampled size, every step."""
    run = main("sd15", _args(tiny_model("sd15"), tiny_dataset, tmp_path / "gd", 1, "--method", "gd"))
    adapter = adapter_class("sd15").from_pretrained(str(tiny_model("sd15"))).freeze("cpu", torch.float32)
    trained = load_trained(run)
    seen = []
    hook = trained.module.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs), with_kwargs=True)
    generate(adapter, ["a red ball", "a cat"], [0, 1], trained=trained, gd_scale=3.5, steps=2, output_type="latent")
    hook.remove()
    assert len(seen) == 2 and all(call["timestep_cond"].shape == (2, GUIDANCE_EMBEDDING_DIM) for call in seen)
    torch.testing.assert_close(seen[0]["timestep_cond"], guidance_embedding(torch.tensor([3.5, 3.5])))
    assert seen[0]["encoder_hidden_states"].shape[0] == 2  # no CFG: no doubled batch

    run = main("sd15", _args(tiny_model("sd15"), tiny_dataset, tmp_path / "pnp", 1, "--method", "pnp"))
    trained = load_trained(run)
    seen = []
    hook = trained.module.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs), with_kwargs=True)
    generate(adapter, ["a red ball", "a cat"], [0, 1], trained=trained, gd_scale=7.0, steps=3, resolution=32, output_type="latent")
    hook.remove()
    assert len(seen) == 3
    control = seen[0]["controlnet_cond"]
    assert control.shape == (2, 3, 32, 32) and torch.all(control == 7.0)
    with pytest.raises(ValueError, match="replaces CFG"):
        generate(adapter, ["a cat"], [0], trained=trained, cfg_scale=5.0, steps=1)


def test_scaling_scales_every_token_but_clip_bos_and_the_pooled_vector_dice_rewrites(tiny_model):
    """Scaling multiplies what DICE's sharpener may rewrite: every token but CLIP's BOS, and SD3's pooled vector where
    it is sharpened (the default), not SDXL's, nor SD3's with --pooled_embedding keep."""
    from dice.methods.scaling import scale_prompt_embedding

    for family, options, pooled_scaled in (("sd15", {}, False), ("sdxl", {}, False), ("pixart", {}, False), ("sd3", {}, True),
                                           ("sd3", {"pooled_embedding": "keep"}, False)):
        adapter = adapter_class(family).from_pretrained(str(tiny_model(family)), **options)
        cond = adapter.encode_prompts(["a red ball"])
        scaled = scale_prompt_embedding(adapter, cond, 1.5)
        first = 1 if family != "pixart" else 0
        torch.testing.assert_close(scaled.embeds[:, first:], 1.5 * cond.embeds[:, first:])
        assert torch.equal(scaled.embeds[:, :first], cond.embeds[:, :first])
        assert scaled.mask is cond.mask
        if pooled_scaled:
            torch.testing.assert_close(scaled.pooled, 1.5 * cond.pooled)
        else:
            assert scaled.pooled is cond.pooled
