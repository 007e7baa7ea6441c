"""dice.apply / dice.remove on stock diffusers pipelines (tiny SD1.5, SDXL, PixArt-alpha, PixArt-Sigma, SD3)."""
from __future__ import annotations

import logging

import pytest
import torch

import dice
from dice.adapters import adapter_class
from dice.checkpoint import SharpenerConfig
from dice.sampling import generate, initial_noise
from dice import Sharpener

PROMPTS = ["a red cat", "a dog under a tree"]
SEEDS = [3, 4]
# Non-default family options: the ones recorded in the checkpoint must reach the pipeline's encoding.
OPTIONS = {"sd15": {}, "sdxl": {"empty_prompt": "zeros"}, "pixart": {"pixart_context_mask": "prompt", "keep_first_token": True},
           "pixart-sigma": {"pixart_mask": "full"}, "sd3": {"max_sequence_length": 12}}
FAMILIES = list(OPTIONS)


def stock_pipeline(tiny_model, family):
    pipe = adapter_class(family).pipeline_class().from_pretrained(tiny_model(family))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sharpener_for(tiny_model, family, seed=0, base_model=None, **options) -> Sharpener:
    adapter = adapter_class(family).from_pretrained(str(tiny_model(family)))
    torch.manual_seed(seed)
    sharpener = Sharpener(adapter.text_dim)
    sharpener.config = SharpenerConfig(family=family, base_model=base_model or str(tiny_model(family)),
                                       dim=adapter.text_dim, num_tokens=adapter.num_tokens, family_options=options)
    return sharpener


def call_kwargs(adapter, family, **extra):
    """Fixed noise, few steps, tiny size; PixArt's tiny transformer has no resolution bins."""
    kwargs = dict(latents=initial_noise(adapter, SEEDS, 16), num_inference_steps=2, height=16, width=16, output_type="latent")
    if family in ("pixart", "pixart-sigma"):
        kwargs.update(use_resolution_binning=False, clean_caption=False)
    return {**kwargs, **extra}


def denoiser_batches(pipe, run):
    """Run ``run()`` and return the batch size of every denoiser evaluation."""
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    batches = []
    hook = denoiser.register_forward_hook(  # SD3's pipeline passes the latents by keyword
        lambda module, args, kwargs, out: batches.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True)
    try:
        result = run()
    finally:
        hook.remove()
    return result, batches


@pytest.mark.parametrize("family", FAMILIES)
def test_applied_pipeline_samples_as_generate_and_remove_restores_it(tiny_model, family, tmp_path):
    pipe = stock_pipeline(tiny_model, family)
    sharpener = sharpener_for(tiny_model, family, **OPTIONS[family])
    reference = adapter_class(family)(stock_pipeline(tiny_model, family), str(tiny_model(family)), OPTIONS[family])
    kwargs = call_kwargs(reference, family)
    common = dict(steps=2, resolution=16, output_type="latent")
    stock_default = pipe(PROMPTS, **kwargs).images  # the stock default guidance scale: CFG
    stock_unguided = pipe(PROMPTS, guidance_scale=1.0, **kwargs).images

    sharpener.save_pretrained(tmp_path / "sharpener")
    assert dice.apply(pipe, str(tmp_path / "sharpener")) is pipe
    dice_images, batches = denoiser_batches(pipe, lambda: pipe(PROMPTS, **kwargs).images)
    assert batches == [len(PROMPTS)] * 2  # no guidance_scale: unguided, one evaluation per step
    assert torch.equal(dice_images, generate(reference, PROMPTS, SEEDS, sharpener=sharpener, **common))
    assert not torch.allclose(dice_images, stock_unguided)

    # Explicit guidance_scale = DICE + CFG; negative_prompt is the sharpener's context u.
    both = pipe(PROMPTS, guidance_scale=3.0, negative_prompt="blurry", **kwargs).images
    assert torch.equal(both, generate(reference, PROMPTS, SEEDS, sharpener=sharpener, cfg_scale=3.0,
                                      negative_prompt="blurry", **common))

    # The caller's own (stock) embeddings are sharpened exactly once.
    own = reference.embedding_pipeline_kwargs(reference.encode_prompts(PROMPTS), reference.encode_negative([""] * 2))
    assert torch.equal(pipe(**own, **kwargs).images, dice_images)

    assert dice.remove(pipe) is pipe and type(pipe) is adapter_class(family).pipeline_class()
    assert torch.equal(pipe(PROMPTS, **kwargs).images, stock_default)
    assert torch.equal(pipe(PROMPTS, guidance_scale=1.0, **kwargs).images, stock_unguided)


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_zero_is_unguided_and_applying_again_replaces(tiny_model, family):
    pipe = stock_pipeline(tiny_model, family)
    adapter = adapter_class(family)(pipe, str(tiny_model(family)))
    kwargs = call_kwargs(adapter, family)
    unguided = pipe(PROMPTS, guidance_scale=1.0, **kwargs).images
    sharpener = sharpener_for(tiny_model, family)
    dice.apply(pipe, sharpener, alpha=0.0)
    assert torch.equal(pipe(PROMPTS, **kwargs).images, unguided)
    dice.apply(pipe, sharpener, alpha=2.0)
    dice.apply(pipe, sharpener, alpha=1.0)  # replaces: never stacks a second sharpening
    once = pipe(PROMPTS, **kwargs).images
    dice.remove(pipe)
    reference = adapter_class(family)(stock_pipeline(tiny_model, family), str(tiny_model(family)))
    assert torch.equal(once, generate(reference, PROMPTS, SEEDS, sharpener=sharpener, steps=2, resolution=16,
                                      output_type="latent"))


def test_two_pipelines_one_with_dice_coexist(tiny_model):
    from diffusers import StableDiffusionPipeline

    stock_call = StableDiffusionPipeline.__call__
    with_dice, without = stock_pipeline(tiny_model, "sd15"), stock_pipeline(tiny_model, "sd15")
    kwargs = call_kwargs(adapter_class("sd15")(without, ""), "sd15")
    before = without(PROMPTS, **kwargs).images
    dice.apply(with_dice, sharpener_for(tiny_model, "sd15"))
    assert torch.equal(without(PROMPTS, **kwargs).images, before)
    assert not torch.equal(with_dice(PROMPTS, **kwargs).images, before)
    assert type(without) is StableDiffusionPipeline and StableDiffusionPipeline.__call__ is stock_call
    assert isinstance(with_dice, StableDiffusionPipeline) and type(with_dice).__name__ == "StableDiffusionPipeline"
    dice.remove(with_dice)
    assert type(with_dice) is StableDiffusionPipeline
    assert torch.equal(with_dice(PROMPTS, **kwargs).images, before)


def test_pipeline_in_bfloat16_keeps_an_fp32_sharpener(tiny_model):
    pipe = stock_pipeline(tiny_model, "sd15").to(dtype=torch.bfloat16)
    reference = adapter_class("sd15")(stock_pipeline(tiny_model, "sd15").to(dtype=torch.bfloat16), str(tiny_model("sd15")))
    sharpener = sharpener_for(tiny_model, "sd15")
    dice.apply(pipe, sharpener)
    images = pipe(PROMPTS, **call_kwargs(reference, "sd15")).images
    assert images.dtype == torch.bfloat16 and sharpener.fc1.weight.dtype == torch.float32
    assert torch.equal(images, generate(reference, PROMPTS, SEEDS, sharpener=sharpener, steps=2, resolution=16,
                                        output_type="latent"))


def test_mismatches_are_refused_and_another_base_model_is_noted(tiny_model, caplog):
    pipe = stock_pipeline(tiny_model, "sd15")
    with pytest.raises(ValueError, match="trained for sdxl"):
        dice.apply(pipe, sharpener_for(tiny_model, "sdxl"))
    wide = Sharpener(48)
    wide.config = SharpenerConfig(family="sd15", base_model="x/y", dim=48)
    with pytest.raises(ValueError, match="expects 48-wide text embeddings but this model's are 32-wide"):
        dice.apply(pipe, wide)
    assert type(pipe).__call__ is adapter_class("sd15").pipeline_class().__call__  # nothing applied

    with caplog.at_level(logging.INFO, logger="dice"):
        dice.apply(pipe, sharpener_for(tiny_model, "sd15", base_model="someone/other-sd15"))
    notes = [r.getMessage() for r in caplog.records if r.name == "dice"]
    assert len(notes) == 1 and "someone/other-sd15" in notes[0] and str(tiny_model("sd15")) in notes[0]
    caplog.clear()
    dice.apply(pipe, sharpener_for(tiny_model, "sd15"))  # its own base model: nothing to say
    assert not [r for r in caplog.records if r.name == "dice"]

    with pytest.raises(ValueError, match="clip_skip"):
        pipe("a cat", clip_skip=1, num_inference_steps=1)
    with pytest.raises(ValueError, match="sharpener applied"):  # generate would sharpen twice
        generate(adapter_class("sd15")(pipe, ""), PROMPTS, SEEDS, steps=1, resolution=16)
