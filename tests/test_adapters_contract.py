"""One contract every family adapter must keep, run on the tiny sd15 / sdxl / pixart / pixart-sigma / sd3 pipelines."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dice.adapters import Conditioning, ModelLoadError, adapter_class
from dice.checkpoint import SharpenerConfig, load_sharpener, save_sharpener
from dice.sampling import generate
from dice import Sharpener
from dice.methods.dice import sharpen
from dice.methods.dice import keeps_first_token
from dice.distillation import cfg_teacher

FAMILIES = ["sd15", "sdxl", "pixart", "pixart-sigma", "sd3"]
# (tokens, width) of the sharpened sequence in the tiny configs of dice/testkit/tiny.py.
TINY_SHAPES = {"sd15": (77, 32), "sdxl": (77, 32 + 32), "pixart": (120, 32), "pixart-sigma": (300, 32), "sd3": (77 + 256, 48)}
T5_MASKED = ("pixart", "pixart-sigma")  # a T5 attention mask, no BOS token
PROMPTS = ["a red ball on a green field", "a photo of a cat"]


def load(tiny_model, family, **options):
    return adapter_class(family).from_pretrained(str(tiny_model(family)), **options)


@pytest.fixture(scope="module", params=FAMILIES)
def family_adapter(request, tiny_model):
    return request.param, load(tiny_model, request.param)


def random_sharpener(dim: int, seed: int = 0) -> Sharpener:
    torch.manual_seed(seed)
    return Sharpener(dim)


def zero_sharpener(dim: int) -> Sharpener:
    sharpener = Sharpener(dim)
    for p in sharpener.parameters():
        nn.init.zeros_(p)
    return sharpener


def noisy_inputs(adapter, batch=2, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, adapter.latent_channels, size, size, generator=gen)
    t = torch.tensor([17, 640][:batch])
    sizes = torch.tensor([[48, 40, 3, 0], [40, 64, 0, 5]][:batch])  # (orig h, orig w, crop top, crop left)
    return x_t, t, sizes


def test_encode_shapes(family_adapter):
    family, adapter = family_adapter
    tokens, dim = TINY_SHAPES[family]
    assert (adapter.num_tokens, adapter.text_dim) == (tokens, dim)
    cond = adapter.encode_prompts(PROMPTS)
    assert cond.embeds.shape == (2, tokens, dim)
    assert (cond.pooled is not None) == (family in ("sdxl", "sd3"))
    assert (cond.mask is not None) == (family in T5_MASKED)
    assert adapter.describe()["family"] == family


def test_null_and_negative_embeddings(family_adapter):
    family, adapter = family_adapter
    cond = adapter.encode_prompts(PROMPTS)
    uncond = adapter.encode_negative(["", "blurry"])
    assert uncond.embeds.shape == cond.embeds.shape
    # Default options everywhere: the empty prompt's null embedding is its encoding (not zeros).
    torch.testing.assert_close(uncond.embeds[:1], adapter.encode_prompts([""]).embeds)
    assert uncond.embeds[0].abs().sum() > 0
    assert not torch.allclose(uncond.embeds[0], uncond.embeds[1])
    assert not torch.allclose(uncond.embeds, cond.embeds)


def test_teacher_is_one_batched_cfg_call(family_adapter):
    family, adapter = family_adapter
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.encode_negative(["", "blurry"])
    x_t, t, sizes = noisy_inputs(adapter)
    calls = []
    hook = adapter.denoiser.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        teacher = cfg_teacher(adapter, x_t, t, cond, uncond, 5.0, sizes)
    finally:
        hook.remove()
    assert calls == [4]  # one denoiser call with the doubled batch
    eps_u, eps_c = adapter.predict_noise(x_t, t, uncond, sizes), adapter.predict_noise(x_t, t, cond, sizes)
    assert teacher.shape == x_t.shape == eps_c.shape
    torch.testing.assert_close(teacher, eps_u + 5.0 * (eps_c - eps_u), atol=1e-5, rtol=1e-4)


def test_student_and_apply_rule(family_adapter):
    family, adapter = family_adapter
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.encode_negative(["", ""])
    sharpener = random_sharpener(adapter.text_dim)
    sharpened = sharpen(adapter, sharpener, cond, uncond)
    assert sharpened.embeds.shape == cond.embeds.shape
    assert not torch.allclose(sharpened.embeds[:, 1:], cond.embeds[:, 1:])
    first_kept = torch.equal(sharpened.embeds[:, 0], cond.embeds[:, 0])
    assert first_kept == keeps_first_token(adapter) == (family not in T5_MASKED)  # T5 has no BOS token
    assert torch.equal(sharpen(adapter, sharpener, cond, uncond, alpha=0.0).embeds, cond.embeds)
    x_t, t, sizes = noisy_inputs(adapter)
    assert adapter.predict_noise(x_t, t, sharpened, sizes).shape == x_t.shape


def test_pipeline_kwargs_drive_the_stock_pipeline(family_adapter):
    family, adapter = family_adapter
    seeds = [3, 4]
    common = dict(steps=2, resolution=16, output_type="latent")
    unguided = generate(adapter, PROMPTS, seeds, **common)
    size = 16 // adapter.vae_scale_factor
    assert unguided.shape == (2, adapter.latent_channels, size, size)
    # A zero residual leaves the embedding, hence the image, exactly unchanged.
    dice = generate(adapter, PROMPTS, seeds, sharpener=zero_sharpener(adapter.text_dim), **common)
    assert torch.equal(dice, unguided)
    cfg = generate(adapter, PROMPTS, seeds, cfg_scale=5.0, **common)
    assert cfg.shape == unguided.shape and not torch.allclose(cfg, unguided)
    dice_cfg = generate(adapter, PROMPTS, seeds, sharpener=random_sharpener(adapter.text_dim), cfg_scale=5.0, **common)
    assert torch.isfinite(dice_cfg).all() and not torch.allclose(dice_cfg, cfg)


def test_sharpener_save_load_and_family_check(family_adapter, tmp_path):
    family, adapter = family_adapter
    sharpener = random_sharpener(adapter.text_dim, seed=1)
    config = SharpenerConfig(family=family, base_model=adapter.model, dim=adapter.text_dim,
                             num_tokens=adapter.num_tokens, family_options=dict(adapter.options))
    save_sharpener(tmp_path / "ckpt", sharpener, config)
    loaded, loaded_config = load_sharpener(tmp_path / "ckpt", family=family, dim=adapter.text_dim)
    for name, value in sharpener.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    assert loaded_config.family_options == adapter.options
    other = next(f for f in FAMILIES if f != family)
    with pytest.raises(ValueError, match=f"trained for {family}"):
        load_sharpener(tmp_path / "ckpt", family=other)


@pytest.mark.parametrize("family,folder_family", [(a, b) for a in FAMILIES for b in FAMILIES if a != b])
def test_loading_another_family_is_refused(tiny_model, family, folder_family):
    with pytest.raises(ModelLoadError, match=folder_family):
        adapter_class(family).from_pretrained(str(tiny_model(folder_family)))


def test_conditioning_batches_keep_mask_integer():
    cond = Conditioning(embeds=torch.zeros(1, 3, 2), mask=torch.ones(1, 3, dtype=torch.long))
    both = Conditioning.cat([cond, cond]).to(dtype=torch.float16)
    assert both.embeds.dtype == torch.float16 and both.mask.dtype == torch.long and len(both) == 2
