"""SDXL and PixArt-alpha specifics: empty-prompt rule, pooled/size conditioning, T5 masks, the text
embedding cache, and training + resume through dice.training.main on the tiny pipelines."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dice.adapters import adapter_class
from dice.adapters.text_cache import TextCacheError
from dice.checkpoint import load_sharpener
from dice.distillation import distillation_loss
from dice.sampling import generate, initial_noise
from dice import Sharpener
from dice.methods.dice import sharpen
from dice.methods.dice import context_mask
from dice.distillation import cfg_teacher

PROMPTS = ["a red ball on a green field", "a photo of a cat"]


def load(tiny_model, family, **options):
    return adapter_class(family).from_pretrained(str(tiny_model(family)), **options)


def sharpener_for(adapter, seed=0):
    torch.manual_seed(seed)
    return Sharpener(adapter.text_dim)


# ---- SDXL ------------------------------------------------------------------------------------
def test_sdxl_empty_prompt_zeros_vs_encoded(tiny_model):
    encoded, zeros = load(tiny_model, "sdxl"), load(tiny_model, "sdxl", empty_prompt="zeros")
    assert encoded.options["empty_prompt"] == "encoded"  # the authors' choice is the default
    u_enc, u_zero = encoded.encode_negative(["", "blurry"]), zeros.encode_negative(["", "blurry"])
    assert u_zero.embeds[0].abs().sum() == 0 and u_zero.pooled[0].abs().sum() == 0
    assert u_enc.embeds[0].abs().sum() > 0 and u_enc.pooled[0].abs().sum() > 0
    # A non-empty negative prompt is always encoded.
    assert torch.equal(u_enc.embeds[1], u_zero.embeds[1]) and torch.equal(u_enc.pooled[1], u_zero.pooled[1])
    kwargs = zeros.pipeline_kwargs(zeros.encode_prompts(PROMPTS), u_zero)
    assert kwargs["negative_prompt_embeds"] is u_zero.embeds and kwargs["negative_pooled_prompt_embeds"] is u_zero.pooled


def test_sdxl_cfg_baseline_is_the_stock_pipelines_and_a_trained_model_keeps_its_own_u(tiny_model):
    """The CFG baseline's image equals the stock pipeline's guidance_scale=5 image (its force_zeros_for_empty_prompt
    null embedding) byte for byte, whatever the trained methods' empty_prompt option; a trained model (here DICE + CFG
    with a sharpener whose residual is zero) keeps the u it was trained with: the encoded "" by default."""
    encoded, zeros = load(tiny_model, "sdxl"), load(tiny_model, "sdxl", empty_prompt="zeros")
    seeds = [0, 1]
    latents = initial_noise(encoded, seeds, 16)
    stock = encoded.pipe(prompt=PROMPTS, latents=latents, num_inference_steps=2, height=16, width=16, guidance_scale=5.0,
                         output_type="np").images
    for adapter in (encoded, zeros):
        ours = generate(adapter, PROMPTS, seeds, cfg_scale=5.0, steps=2, resolution=16)
        assert np.array_equal(np.stack([np.asarray(image) for image in ours]), (stock * 255).round().astype(np.uint8))
        assert adapter.null_embedding(stock=True) == "zeros"
    silent = sharpener_for(encoded)
    torch.nn.init.zeros_(silent.fc2.weight), torch.nn.init.zeros_(silent.fc2.bias)
    trained = generate(encoded, PROMPTS, seeds, sharpener=silent, cfg_scale=5.0, steps=2, resolution=16, output_type="latent")
    stock_encoded = encoded.pipe(prompt=PROMPTS, negative_prompt=["", ""], latents=latents, num_inference_steps=2,
                                 height=16, width=16, guidance_scale=5.0, output_type="latent").images
    torch.testing.assert_close(trained, stock_encoded)
    assert encoded.null_embedding() == "encoded" and zeros.null_embedding() == "zeros"


def test_sdxl_empty_prompt_option_reaches_checkpoint_and_sampler(tiny_model, tiny_dataset, tmp_path):
    from dice.options import build_parser, resolve_options

    argv = ["--pretrained_model_name_or_path", str(tiny_model("sdxl")), "--train_data_dir", str(tiny_dataset),
            "--empty_prompt", "zeros"]
    args = resolve_options("sdxl", build_parser("sdxl").parse_args(argv))
    adapter = adapter_class("sdxl").from_args(args)
    assert adapter.describe()["family_options"] == {"empty_prompt": "zeros", "size_conditioning": "target",
                                                    "pretrained_vae_model_name_or_path": None}
    # The sampler re-creates the adapter from the checkpoint's family_options.
    again = adapter_class("sdxl").from_pretrained(str(tiny_model("sdxl")), **adapter.describe()["family_options"])
    assert again.encode_negative([""]).embeds.abs().sum() == 0


def test_sdxl_pooled_and_time_ids_pass_through(tiny_model):
    adapter = load(tiny_model, "sdxl")
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.encode_negative(["", "blurry"])
    sharpened = sharpen(adapter, sharpener_for(adapter), cond, uncond)
    assert torch.equal(sharpened.pooled, cond.pooled) and not torch.equal(sharpened.embeds, cond.embeds)
    seen = []
    hook = adapter.denoiser.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["added_cond_kwargs"]), with_kwargs=True)
    x_t = torch.randn(2, 4, 8, 8)
    sizes = torch.tensor([[48, 40, 3, 0], [40, 64, 0, 5]])
    try:
        cfg_teacher(adapter, x_t, torch.tensor([5, 900]), cond, uncond, 5.0, sizes)
        adapter.predict_noise(x_t, torch.tensor([5, 900]), cond)
    finally:
        hook.remove()
    teacher, plain = seen
    assert torch.equal(teacher["text_embeds"], torch.cat([uncond.pooled, cond.pooled]))
    target = 8 * adapter.vae_scale_factor
    # Training passes what sampling passes (original = target, no crop), whatever the images' sizes: the default
    # size_conditioning "target", as the authors trained.
    sampling = torch.tensor([[target, target, 0, 0, target, target]] * 2, dtype=torch.float32)
    assert torch.equal(plain["time_ids"], sampling) and torch.equal(teacher["time_ids"], torch.cat([sampling, sampling]))
    # size_conditioning "image": each image's own original size and crop.
    per_image = load(tiny_model, "sdxl", size_conditioning="image")
    expected = torch.tensor([[48, 40, 3, 0, target, target], [40, 64, 0, 5, target, target]], dtype=torch.float32)
    assert torch.equal(per_image.time_ids(x_t, sizes), expected)


def test_sdxl_non_square_training_images_get_the_time_ids_of_sampling(tiny_model, tmp_path):
    """Non-square COCO-like images through the real loader: their time ids are the ones the stock pipeline passes at
    sampling (training's micro-conditioning used to be each image's true size and crop offset, which sampling never
    shows the sharpener)."""
    from PIL import Image

    from dice.data import load_records, make_loader

    folder = tmp_path / "non_square"
    folder.mkdir()
    for i, (w, h) in enumerate([(64, 40), (40, 72), (96, 48), (48, 48)]):
        Image.new("RGB", (w, h), (40 * i, 90, 160)).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": "a red ball"}) + "\n"
                                                   for i in range(4)))
    _, records = load_records(folder)
    batch = next(iter(make_loader(records, 32, 4, 0, 1, seed=0)))
    assert {tuple(size[:2].tolist()) for size in batch["sizes"]} != {(32, 32)}  # the loader saw the true sizes
    adapter = load(tiny_model, "sdxl")
    x_t = torch.randn(4, 4, 32 // adapter.vae_scale_factor, 32 // adapter.vae_scale_factor)
    assert torch.equal(adapter.time_ids(x_t, batch["sizes"]), adapter.time_ids(x_t, None))
    assert not torch.equal(load(tiny_model, "sdxl", size_conditioning="image").time_ids(x_t, batch["sizes"]),
                           adapter.time_ids(x_t, None))


def test_sdxl_replacement_vae_is_recorded_and_sampled_with(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    """The VAE training used (the authors' fp16-fixed one) travels in the checkpoint: sample.py and the
    validation grid decode with it by default."""
    from diffusers import AutoencoderKL

    from dice.adapters.sdxl import load_vae
    from dice.sample_cli import main as sample_main
    from dice.training import main as train_main

    vae = AutoencoderKL.from_pretrained(str(tiny_model("sdxl")), subfolder="vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias += 0.5  # unlike the model's own VAE
    vae.save_pretrained(tmp_path / "vae")
    assert load_vae(str(tiny_model("sdxl"))).config.latent_channels == 4  # a pipeline folder: its vae/
    with pytest.raises(Exception, match="pretrained_vae_model_name_or_path"):
        load_vae(str(tmp_path / "missing"))

    monkeypatch.chdir(tmp_path)  # a relative path is recorded absolute
    run = train_main("sdxl", ["--pretrained_model_name_or_path", str(tiny_model("sdxl")), "--train_data_dir",
                              str(tiny_dataset), "--preset", "demo", "--train_batch_size", "1", "--max_train_steps", "1",
                              "--validation_prompts", "a cat", "--validation_inference_steps", "1",
                              "--dataloader_num_workers", "0", "--pretrained_vae_model_name_or_path", "vae"])
    config = json.loads((run / "checkpoint-1" / "sharpener.json").read_text())
    assert config["family_options"]["pretrained_vae_model_name_or_path"] == str(tmp_path / "vae")
    assert (run / "validation" / "step-000001.png").is_file()
    adapter = adapter_class("sdxl").from_pretrained(config["base_model"], **config["family_options"])
    assert torch.equal(adapter.pipe.vae.decoder.conv_out.bias, vae.decoder.conv_out.bias)
    folder = sample_main(["--sharpener_path", str(run), "--prompt", "a cat", "--steps", "1", "--outdir", "samples"])
    options = json.loads((folder / "sampling_options.json").read_text())
    assert options["family_options"]["pretrained_vae_model_name_or_path"] == str(tmp_path / "vae")


# ---- PixArt ----------------------------------------------------------------------------------
def test_pixart_defaults_and_pipeline_kwargs(tiny_model):
    adapter = load(tiny_model, "pixart")
    assert adapter.options == {"pixart_mask": "prompt", "keep_first_token": False, "pixart_context_mask": "all"}
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.encode_negative(["", ""])
    assert cond.mask.dtype == torch.long and cond.mask[0].sum() < adapter.num_tokens
    sharpened = sharpen(adapter, sharpener_for(adapter), cond, uncond)
    assert torch.equal(sharpened.mask, cond.mask)  # prompt mask: padding stays invisible
    kwargs = adapter.pipeline_kwargs(sharpened, uncond)
    assert torch.equal(kwargs["prompt_attention_mask"], cond.mask)
    assert torch.equal(kwargs["negative_prompt_attention_mask"], uncond.mask)
    assert kwargs["negative_prompt"] is None and kwargs["use_resolution_binning"] is False


def test_pixart_full_mask_and_first_token(tiny_model):
    adapter = load(tiny_model, "pixart", pixart_mask="full", keep_first_token=True)
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.encode_negative(["", ""])
    sharpened = sharpen(adapter, sharpener_for(adapter), cond, uncond)
    assert torch.equal(sharpened.mask, torch.ones_like(cond.mask))  # sharpened padding becomes visible
    assert torch.equal(sharpened.embeds[:, 0], cond.embeds[:, 0])
    # The teacher still sees each prompt's own mask.
    seen = []
    hook = adapter.denoiser.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["encoder_attention_mask"]), with_kwargs=True)
    try:
        cfg_teacher(adapter, torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), cond, uncond, 5.0)
    finally:
        hook.remove()
    assert torch.equal(seen[0], torch.cat([uncond.mask, cond.mask]))


def test_pixart_context_mask(tiny_model):
    """T5 encodes "" (with its mask) as "</s>" plus 119 identical padding vectors. With u's real tokens
    only, the residual is one constant vector for every token of every prompt; with all tokens the
    attention can mix the two values per head, so it depends on the prompt (a little, at init)."""
    spread = {}
    for context in ("prompt", "all"):
        adapter = load(tiny_model, "pixart", pixart_context_mask=context)
        cond, uncond = adapter.encode_prompts(PROMPTS), adapter.encode_negative(["", ""])
        assert (context_mask(adapter, uncond) is None) == (context == "all")
        residual = (sharpen(adapter, sharpener_for(adapter), cond, uncond).embeds - cond.embeds).flatten(0, 1)
        spread[context] = (residual - residual[:1]).abs().max().item()
    assert spread["prompt"] < 1e-6 < 1e-5 < spread["all"]


def test_pixart_1024_additional_conditions(tiny_model):
    from diffusers import PixArtTransformer2DModel

    adapter = load(tiny_model, "pixart")
    config = dict(adapter.pipe.transformer.config)
    config["use_additional_conditions"] = True
    adapter.pipe.transformer = PixArtTransformer2DModel.from_config(config)
    assert adapter.denoiser.use_additional_conditions
    seen = []
    hook = adapter.denoiser.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["added_cond_kwargs"]), with_kwargs=True)
    try:
        eps = adapter.predict_noise(torch.randn(2, 4, 8, 6), torch.tensor([1, 2]), adapter.encode_prompts(PROMPTS))
    finally:
        hook.remove()
    assert eps.shape == (2, 4, 8, 6)  # eps only: the learned-sigma channels are dropped
    assert torch.equal(seen[0]["resolution"], torch.tensor([[16.0, 12.0]] * 2))
    torch.testing.assert_close(seen[0]["aspect_ratio"], torch.tensor([[16 / 12]] * 2))


def test_pixart_text_cache_matches_live_encoding(tiny_model, tmp_path):
    live = load(tiny_model, "pixart")
    cached = load(tiny_model, "pixart")
    cached.text_cache_dir = str(tmp_path / "cache")
    cached.prepare_text_cache(PROMPTS, ["", "blurry"])
    assert cached.pipe.text_encoder is None  # T5 unloaded

    c_live, c_cached = live.encode_prompts(PROMPTS), cached.encode_prompts(PROMPTS)
    assert torch.equal(c_live.mask, c_cached.mask)
    real = c_live.mask.bool()
    assert torch.equal(c_live.embeds[real], c_cached.embeds[real])
    assert (c_cached.embeds[~real] == 0).all()  # prompt mask: padding never stored
    u_live, u_cached = live.encode_negative(["", "blurry"]), cached.encode_negative(["", "blurry"])
    assert torch.equal(u_live.embeds, u_cached.embeds) and torch.equal(u_live.mask, u_cached.mask)

    # Identical losses: teacher and student see the same visible tokens.
    x_t, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([50, 800])
    sharpener = sharpener_for(live)
    losses = []
    for adapter, cond, uncond in ((live, c_live, u_live), (cached, c_cached, u_cached)):
        teacher = cfg_teacher(adapter, x_t, t, cond, uncond, 5.0)
        student = adapter.predict_noise(x_t, t, sharpen(adapter, sharpener, cond, uncond))
        losses.append(distillation_loss(student, teacher, "mse", "mean"))
    assert torch.equal(losses[0], losses[1])

    with pytest.raises(TextCacheError, match="not in the text embedding cache"):
        cached.encode_prompts(["an uncached prompt"])
    # Reusing the folder: only new prompts are encoded; another model's folder is refused.
    again = load(tiny_model, "pixart")
    again.text_cache_dir = cached.text_cache_dir
    again.prepare_text_cache(PROMPTS + ["a blue car"], [""])
    shards = sorted({shard for shard, _ in again.text_cache.entries.values()})
    assert len(again.text_cache.entries) == 5 and len(shards) == 2  # the first shard + one for "a blue car"
    full = load(tiny_model, "pixart", pixart_mask="full")
    full.text_cache_dir = cached.text_cache_dir
    full.prepare_text_cache([], [])
    with pytest.raises(TextCacheError, match="without its padding"):
        full.encode_prompts(PROMPTS)
    other = adapter_class("pixart").from_pretrained(str(tiny_model("pixart")))
    torch.nn.init.normal_(other.pipe.text_encoder.shared.weight)
    other.text_cache_dir = cached.text_cache_dir
    with pytest.raises(TextCacheError, match="different text encoder"):
        other.prepare_text_cache(PROMPTS, [""])


# ---- training + resume -----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sdxl", "pixart"])
def test_training_resume_is_bit_identical(family, tiny_model, tiny_dataset, tmp_path):
    from dice.training import main

    common = ["--pretrained_model_name_or_path", str(tiny_model(family)), "--train_data_dir", str(tiny_dataset),
              "--preset", "demo", "--train_batch_size", "2", "--resolution", "32", "--max_train_steps", "6",
              "--checkpointing_steps", "3", "--validation_prompts", "--dataloader_num_workers", "0",
              "--output_dir", str(tmp_path / "exps"), "--negative_prompts", "default",
              "--negative_prompt_prob", "0.5", "--mixed_precision", "no", "--log_every", "3"]
    run_dir = main(family, common)
    uninterrupted = load_file(str(run_dir / "checkpoint-6" / "sharpener.safetensors"))
    config = json.loads((run_dir / "checkpoint-6" / "sharpener.json").read_text())
    assert config["family"] == family and config["step"] == 6
    assert config["family_options"] == adapter_class(family).option_defaults
    assert config["training_options"]["negative_prompts"] == "default"
    assert config["negative_prompt_prob"] == 0.5 and config["negative_prompts"][0] == "blurry"  # sample.py's default u
    assert len(config["training_options"]["negative_prompt_list"]) >= 20
    losses = [json.loads(line)["loss"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(loss == loss and loss > 0 for loss in losses)

    # Resume from step 3 (PixArt: through the text embedding cache, T5 unloaded) and finish again.
    extra = ["--text_embedding_cache", str(tmp_path / "t5cache")] if family == "pixart" else []
    main(family, common + ["--resume_from_checkpoint", str(run_dir / "checkpoint-3")] + extra)
    if extra:  # shards as readable as the cache's index (safetensors alone writes 0600)
        assert {p.stat().st_mode & 0o777 for p in (tmp_path / "t5cache").iterdir()} == {
            (tmp_path / "t5cache" / "index.json").stat().st_mode & 0o777}
    resumed = load_file(str(run_dir / "checkpoint-6" / "sharpener.safetensors"))
    assert uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    sharpener, _ = load_sharpener(run_dir, family=family)
    assert sharpener.dim == adapter_class(family).from_pretrained(str(tiny_model(family))).text_dim
