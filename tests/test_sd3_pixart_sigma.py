"""SD3 / SD3.5 and PixArt-Sigma specifics on the tiny pipelines: the joint prompt embedding and DICE's rule on it
(first token, zero padding, pooled vector, token counts it was not trained on), T5 absent, the model card's
guidance scale, the sampler recorded by sample.py, GD and PnP, and training + resume through dice.training.main."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dice.adapters import adapter_class
from dice.adapters.registry import detect_family, entry_script
from dice.errors import UserError
from dice.methods.dice import sharpen, sharpen_embeddings, sharpening_rule
from dice.options import build_parser, resolve_options
from dice.sharpener import Sharpener

PROMPTS = ["a red ball on a green field", "a photo of a cat"]
CLIP_TOKENS, CLIP_WIDTH, JOINT = 77, 16 + 24, 48  # the tiny SD3 of dice/testkit/tiny.py


@pytest.fixture(scope="module")
def no_t5(tmp_path_factory):
    from dice.testkit.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("sd3") / "no-t5", "sd3", t5=False)


def sharpener_for(adapter, seed=0):
    torch.manual_seed(seed)
    return Sharpener(adapter.text_dim)


def test_families_are_detected_and_named(tiny_model, no_t5):
    assert detect_family(str(tiny_model("sd3"))) == "sd3" == detect_family(str(no_t5))
    assert detect_family(str(tiny_model("pixart-sigma"))) == "pixart-sigma"
    assert entry_script("pixart-sigma") == "train_pixart_sigma.py" and entry_script("sd3") == "train_sd3.py"


@pytest.mark.parametrize("t5", [True, False])
def test_sd3_joint_embedding_and_rule(tiny_model, no_t5, t5):
    """[B, 77 + L, joint]: CLIP-L and CLIP-G side by side, zero-padded to the joint width, then L T5 tokens (zeros
    without T5). Sharpened: the first token restored, the zeros kept, every other entry rewritten; the pooled vector
    rewritten as one more token (default) or passed on unchanged (pooled_embedding="keep", SDXL's rule)."""
    adapter = adapter_class("sd3").from_pretrained(str(tiny_model("sd3") if t5 else no_t5))
    assert (adapter.pipe.text_encoder_3 is not None) == t5
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.encode_negative(["", "blurry"])
    assert cond.embeds.shape == (2, CLIP_TOKENS + 256, JOINT) and cond.pooled.shape == (2, CLIP_WIDTH)
    assert (cond.embeds[:, :CLIP_TOKENS, CLIP_WIDTH:] == 0).all() and (cond.embeds[:, :CLIP_TOKENS, :CLIP_WIDTH] != 0).all()
    assert (cond.embeds[:, CLIP_TOKENS:] == 0).all() != t5
    sharpened = sharpen(adapter, sharpener_for(adapter), cond, uncond)
    zero = cond.embeds == 0
    assert torch.equal(sharpened.embeds[:, 0], cond.embeds[:, 0])  # CLIP's BOS
    assert (sharpened.embeds[zero] == 0).all()  # the padding stays padding
    assert (sharpened.embeds[:, 1:][~zero[:, 1:]] != cond.embeds[:, 1:][~zero[:, 1:]]).all()
    assert sharpened.pooled.shape == cond.pooled.shape and (sharpened.pooled != cond.pooled).all()
    rule = {"keep_first_token": True, "keep_zeros": True, "sharpen_pooled": True}
    assert sharpening_rule(adapter) == sharpening_rule(adapter_class("sd3"), {"pooled_embedding": "sharpen"}) == rule
    # The pooled vector is the sequence's last token for the sharpener: the same layers rewrite it.
    sharpener = sharpener_for(adapter)
    as_token = lambda p: torch.nn.functional.pad(p, (0, JOINT - CLIP_WIDTH))[:, None]  # noqa: E731
    joined = sharpener(torch.cat([cond.embeds, as_token(cond.pooled)], 1), torch.cat([uncond.embeds, as_token(uncond.pooled)], 1))
    torch.testing.assert_close(sharpened.pooled, cond.pooled + joined[:, -1, :CLIP_WIDTH])
    keep = adapter_class("sd3")(adapter.pipe, adapter.model, {"pooled_embedding": "keep"})
    kept = sharpen(keep, sharpener, cond, uncond)
    assert torch.equal(kept.pooled, cond.pooled) and not torch.equal(kept.embeds, sharpened.embeds)


def test_sd3_sharpener_takes_token_counts_it_was_not_trained_on(tiny_model):
    """ComfyUI pads T5 only to the prompt's length: c and u of other lengths (and of each other) are sharpened by
    the same rule; the CLIP block follows it exactly as in the full-length embedding."""
    adapter = adapter_class("sd3").from_pretrained(str(tiny_model("sd3")))
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.encode_negative(["", ""])
    sharpener = sharpener_for(adapter)
    c, u = cond.embeds[:, : CLIP_TOKENS + 7], uncond.embeds[:, : CLIP_TOKENS + 3]
    out, pooled = sharpen_embeddings(sharpener, c, u, c_pooled=cond.pooled, u_pooled=uncond.pooled,
                                     **sharpening_rule(adapter_class("sd3"), {"pooled_embedding": "sharpen"}))
    assert out.shape == c.shape and torch.equal(out[:, 0], c[:, 0]) and (out[c == 0] == 0).all()
    assert pooled.shape == cond.pooled.shape
    assert not torch.equal(out[:, 1:], c[:, 1:])
    x_t, t = torch.randn(2, 4, 16, 16), torch.tensor([300.0, 800.0])
    assert adapter.predict_noise(x_t, t, cond.replace(embeds=out)).shape == x_t.shape  # the transformer takes it


def test_sd3_max_sequence_length_is_a_recorded_option(tiny_model, tiny_dataset):
    adapter = adapter_class("sd3").from_pretrained(str(tiny_model("sd3")), max_sequence_length=7)
    assert adapter.num_tokens == CLIP_TOKENS + 7 and adapter.encode_prompts(PROMPTS).embeds.shape[1] == CLIP_TOKENS + 7
    assert adapter.describe()["family_options"] == {"flow_sigmas": "logit_normal", "max_sequence_length": 7,
                                                    "pooled_embedding": "sharpen"}
    with pytest.raises(UserError, match="from 0 to 512"):
        build_parser("sd3").parse_args(["--pretrained_model_name_or_path", "x", "--train_data_dir", "y",
                                        "--max_sequence_length", "600"])


@pytest.mark.parametrize("model,given,expected", [
    ("stabilityai/stable-diffusion-3.5-medium", None, 4.5), ("stabilityai/stable-diffusion-3.5-large", None, 3.5),
    ("stabilityai/stable-diffusion-3-medium-diffusers", None, 7.0), ("stabilityai/stable-diffusion-3.5-medium", 6.0, 6.0),
    ("some/sd3-finetune", None, 5.0),
])
def test_teacher_guidance_is_the_model_cards(model, given, expected, tiny_dataset):
    argv = ["--pretrained_model_name_or_path", model, "--train_data_dir", str(tiny_dataset)]
    argv += ["--guidance_scale", str(given)] if given else []
    assert resolve_options("sd3", build_parser("sd3").parse_args(argv)).guidance_scale == expected
    gd = resolve_options("sd3", build_parser("sd3").parse_args(argv + ["--method", "gd"]))  # GD: ω drawn over a range
    assert (gd.guidance_scale, gd.guidance_scale_range) == ((given, None) if given else (None, [2.0, 14.0]))


def test_sharpener_parameter_counts_of_the_released_models():
    """The paper's layout (A.1) at each family's released width: SD3/3.5 and PixArt-Sigma are 4096 wide (T5-XXL)."""
    from dice.options import sharpener_parameters

    assert sharpener_parameters(4096) == 5_248_000 and sharpener_parameters(768) == 1_836_800
    for family, count in (("sd3", "5,248,000"), ("pixart-sigma", "5,248,000"), ("sdxl", "3,148,800")):
        assert f"{count} parameters" in " ".join(build_parser(family).format_help().split())


def test_pnp_is_refused_and_gd_hooks_the_timestep_features(tiny_model):
    from dice.methods import method_class
    from dice.methods.gd import timestep_projection_path

    for family in ("sd3", "pixart-sigma"):
        with pytest.raises(UserError, match="not available for .*ControlNet"):
            method_class("pnp").check_family(adapter_class(family))
    adapter = adapter_class("sd3").from_pretrained(str(tiny_model("sd3")))
    assert adapter.denoiser.get_submodule(timestep_projection_path(adapter.denoiser)).num_channels == 256


def test_pixart_sigma_is_pixart_at_300_tokens(tiny_model, tmp_path):
    from dice.adapters.pixart_sigma import load_transformer

    adapter = adapter_class("pixart-sigma").from_pretrained(str(tiny_model("pixart-sigma")))
    cond = adapter.encode_prompts(PROMPTS)
    assert cond.embeds.shape == (2, 300, 32) and cond.mask.shape == (2, 300) and adapter.num_tokens == 300
    assert adapter.pipeline_kwargs(cond, cond)["use_resolution_binning"] is False
    # The 512 checkpoint's transformer in the 1024 pipeline: recorded, loaded from a transformer/ folder or a root.
    adapter.pipe.transformer.save_pretrained(tmp_path / "root")
    for where in (tiny_model("pixart-sigma"), tmp_path / "root"):
        loaded = load_transformer(str(where)).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in adapter.pipe.transformer.state_dict().items())
    replaced = adapter_class("pixart-sigma").from_pretrained(
        str(tiny_model("pixart-sigma")), pretrained_transformer_model_name_or_path=str(tmp_path / "root"))
    assert replaced.options["pretrained_transformer_model_name_or_path"] == str(tmp_path / "root")


def test_sd3_train_resume_bit_identical_and_sample(tiny_model, no_t5, tiny_dataset, tmp_path):
    """Train the tiny SD3 without T5 (the stock configuration the flow-matching shapes world uses), resume from the
    middle, and end with identical weights; sample.py records the family's flow-matching sampler."""
    from dice.sample_cli import main as sample
    from dice.training import main

    common = ["--pretrained_model_name_or_path", str(no_t5), "--train_data_dir", str(tiny_dataset), "--preset", "demo",
              "--train_batch_size", "2", "--resolution", "32", "--max_train_steps", "4", "--checkpointing_steps", "2",
              "--validation_prompts", "a cat", "--validation_inference_steps", "2", "--dataloader_num_workers", "0",
              "--output_dir", str(tmp_path / "exps"), "--mixed_precision", "no", "--max_sequence_length", "8",
              "--flow_sigmas", "uniform"]
    run_dir = main("sd3", common)
    whole = load_file(str(run_dir / "checkpoint-4" / "sharpener.safetensors"))
    config = json.loads((run_dir / "checkpoint-4" / "sharpener.json").read_text())
    assert config["family"] == "sd3" and config["dim"] == JOINT and config["num_tokens"] == CLIP_TOKENS + 8
    assert config["family_options"] == {"flow_sigmas": "uniform", "max_sequence_length": 8, "pooled_embedding": "sharpen"}
    assert config["training_options"]["guidance_scale"] == 5.0  # no model card for a local folder: the paper's w
    main("sd3", common + ["--resume_from_checkpoint", str(run_dir / "checkpoint-2")])
    resumed = load_file(str(run_dir / "checkpoint-4" / "sharpener.safetensors"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)

    folder = sample(["--sharpener_path", str(run_dir), "--prompt", "a cat", "--steps", "2", "--outdir", str(tmp_path / "s")])
    options = json.loads((folder / "sampling_options.json").read_text())
    assert options["scheduler"] == "flow_euler" and options["family"] == "sd3"
    assert options["family_options"]["max_sequence_length"] == 8
    with pytest.raises(UserError, match="flow-matching"):
        sample(["--sharpener_path", str(run_dir), "--prompt", "a cat", "--scheduler", "ddim", "--outdir", str(tmp_path / "t")])


def test_apply_on_sd3_honours_the_calls_t5_length_and_refuses_third_prompts(tiny_model):
    import dice
    from dice.checkpoint import SharpenerConfig
    from dice.sampling import generate, initial_noise

    model = str(tiny_model("sd3"))
    pipe = adapter_class("sd3").pipeline_class().from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    sharpener = sharpener_for(adapter_class("sd3").from_pretrained(model))
    sharpener.config = SharpenerConfig(family="sd3", base_model=model, dim=JOINT, family_options={"max_sequence_length": 20})
    dice.apply(pipe, sharpener)
    reference = adapter_class("sd3").from_pretrained(model, max_sequence_length=5)
    kwargs = dict(latents=initial_noise(reference, [0], 32), num_inference_steps=2, height=32, width=32, output_type="latent")
    short = pipe("a cat", max_sequence_length=5, **kwargs).images
    assert torch.equal(short, generate(reference, ["a cat"], [0], sharpener=sharpener, steps=2, resolution=32,
                                       output_type="latent"))
    assert not torch.equal(short, pipe("a cat", **kwargs).images)  # the recorded 20 tokens otherwise
    with pytest.raises(ValueError, match="prompt_3"):
        pipe("a cat", prompt_3="a dog", **kwargs)
    dice.remove(pipe)
