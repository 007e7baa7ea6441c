"""Single-file (original LDM layout) checkpoints: dice.testkit.single_file writes them, diffusers and the
adapters read them back bit for bit, and the adapters' single-file checks say what went wrong.

Tiny-model caveat, checked below rather than hidden: diffusers recognises an SDXL single file by the
name of OpenCLIP layer 9 and hands CLIP-L weights to every text encoder of CLIP-L's width. The stock
tiny SDXL (2 OpenCLIP layers, both encoders 32 wide) is therefore read as "v1"/SD1.5 and its
text_encoder_2 would be loaded wrongly; its conversion is checked tensor by tensor with diffusers'
own converters instead, and the loading tests use a tiny SDXL whose second encoder is 48 wide with
10 layers (the stock one is used directly as soon as it qualifies).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


def _pipeline_class(family):
    import diffusers

    return getattr(diffusers, PIPELINES[family])


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def _assert_same_weights(expected, actual):
    exp, act = _modules(expected), _modules(actual)
    assert set(exp) == set(act)
    for name in exp:
        a, b = exp[name].state_dict(), act[name].state_dict()
        assert set(a) == set(b), f"{name}: key sets differ"
        for key in a:
            assert b[key].device.type != "meta", f"{name}.{key} was never loaded"
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{name}.{key} differs"


def _save_single_file_ready_sdxl(stock_folder, out):
    """The stock tiny SDXL if diffusers can read it from a single file, else a variant of it whose
    OpenCLIP encoder is 48 wide (CLIP-L stays 32) with 10 layers; everything else is the stock one."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    from dice.testkit.single_file import single_file_family_warnings

    pipe = StableDiffusionXLPipeline.from_pretrained(stock_folder)
    if not single_file_family_warnings(pipe, "sdxl"):
        return stock_folder
    torch.manual_seed(1)
    config = pipe.text_encoder_2.config
    config.hidden_size, config.num_hidden_layers = 48, 10  # projection_dim (pooled width) unchanged
    text_encoder_2 = CLIPTextModelWithProjection(config)
    cross = pipe.text_encoder.config.hidden_size + 48
    unet = UNet2DConditionModel.from_config({**pipe.unet.config, "cross_attention_dim": cross})
    pipe = StableDiffusionXLPipeline(**{**pipe.components, "text_encoder_2": text_encoder_2, "unet": unet})
    assert not single_file_family_warnings(pipe, "sdxl")
    pipe.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    """family -> (diffusers folder, single file written from it). "sdxl" is single-file ready;
    "sdxl_stock" is the stock tiny SDXL as written by dice.testkit.tiny."""
    from dice.testkit.single_file import save_single_file

    root = tmp_path_factory.mktemp("single_file")
    folders = {
        "sd15": tiny_model("sd15"),
        "sdxl_stock": tiny_model("sdxl"),
    }
    folders["sdxl"] = _save_single_file_ready_sdxl(folders["sdxl_stock"], root / "sdxl_ready")
    out = {}
    for name, folder in folders.items():
        family = name.split("_")[0]
        out[name] = (folder, save_single_file(folder, root / f"{name}.safetensors", family))
    return out


@pytest.fixture(scope="module")
def loaded(files):
    """name -> the pipeline loaded from its diffusers folder (once; tests only read it)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _pipeline_class(name.split("_")[0]).from_pretrained(files[name][0])
        return cache[name]

    return get


# ---- the file itself -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sd15", "sdxl_stock", "sdxl"])
def test_conversion_is_exact_under_diffusers_converters(files, loaded, name):
    """diffusers' forward converters turn the file back into every original tensor, bit for bit."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint, load_single_file_checkpoint,
    )

    path = files[name][1]
    pipe = loaded(name)
    ckpt = load_single_file_checkpoint(str(path))
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.",
                "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")
    assert all(k.startswith(prefixes) for k in ckpt)

    def strip_text_model(sd, model):  # CLIPTextModel has no text_model wrapper in transformers >= 5.6
        return sd if hasattr(model, "text_model") else {k.removeprefix("text_model."): v for k, v in sd.items()}

    converted = {
        "unet": convert_ldm_unet_checkpoint(ckpt, dict(pipe.unet.config)),
        "vae": convert_ldm_vae_checkpoint(ckpt, dict(pipe.vae.config)),
        "text_encoder": strip_text_model(convert_ldm_clip_checkpoint(ckpt), pipe.text_encoder),
    }
    if name.startswith("sdxl"):
        converted["text_encoder_2"] = convert_open_clip_checkpoint(
            pipe.text_encoder_2, ckpt, prefix="conditioner.embedders.1.model.")
    for component, state in converted.items():
        original = getattr(pipe, component).state_dict()
        assert set(state) == set(original), f"{component}: {set(state) ^ set(original)}"
        for key, tensor in original.items():
            assert torch.equal(state[key], tensor), f"{component}.{key} differs"
    # Original-layout shapes: the VAE's mid attention is 1x1 convolutions, the OpenCLIP projection
    # is stored transposed with q/k/v merged.
    assert ckpt["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    if name.startswith("sdxl"):
        te2 = pipe.text_encoder_2
        hidden = te2.config.hidden_size
        assert ckpt["conditioner.embedders.1.model.text_projection"].shape == (hidden, te2.config.projection_dim)
        assert ckpt["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * hidden, hidden)


def test_family_inference(files):
    from dice.adapters.registry import family_of_single_file

    assert family_of_single_file(str(files["sd15"][1])) == "sd15"
    assert family_of_single_file(str(files["sdxl"][1])) == "sdxl"
    # diffusers alone calls a 2-layer OpenCLIP encoder "v1"; our fallback recognises SDXL by its keys.
    assert family_of_single_file(str(files["sdxl_stock"][1])) == "sdxl"


# Real block structures at tiny widths: where LDM puts each block is not something diffusers' forward
# converter checks strictly (it accepts an upsampler at output_blocks.N.1.conv or .2.conv), so the
# original names are pinned here against the real SD1.5 / SDXL checkpoints' layout.
REAL_UNETS = {
    "sd15": dict(
        block_out_channels=(4, 8, 16, 16), layers_per_block=2, cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ),
    "sdxl": dict(
        block_out_channels=(4, 8, 16), layers_per_block=2, cross_attention_dim=8, attention_head_dim=(2, 2, 2),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 3), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 8,
    ),
}
REAL_UNET_KEYS = {  # present (True) / absent (False) in the real checkpoints' model.diffusion_model.*
    "sd15": {
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": True, "input_blocks.3.0.op.weight": True,
        "input_blocks.4.0.skip_connection.weight": True, "input_blocks.9.0.op.weight": True,
        "input_blocks.11.0.in_layers.0.weight": True, "input_blocks.11.1.proj_in.weight": False,
        "input_blocks.12.0.in_layers.0.weight": False, "middle_block.1.proj_out.weight": True,
        "middle_block.2.emb_layers.1.weight": True, "output_blocks.2.1.conv.weight": True,
        "output_blocks.5.2.conv.weight": True, "output_blocks.8.2.conv.weight": True,
        "output_blocks.11.1.proj_in.weight": True, "output_blocks.11.2.conv.weight": False,
        "output_blocks.11.0.skip_connection.weight": True, "out.2.weight": True, "time_embed.2.weight": True,
        "label_emb.0.0.weight": False,
    },
    "sdxl": {
        "input_blocks.1.1.proj_in.weight": False, "input_blocks.3.0.op.weight": True,
        "input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight": True, "input_blocks.6.0.op.weight": True,
        "input_blocks.8.1.transformer_blocks.2.ff.net.2.weight": True, "input_blocks.9.0.op.weight": False,
        "middle_block.1.transformer_blocks.2.attn2.to_k.weight": True, "output_blocks.0.1.transformer_blocks.2.norm3.weight": True,
        "output_blocks.2.2.conv.weight": True, "output_blocks.5.2.conv.weight": True,
        "output_blocks.8.1.proj_in.weight": False, "output_blocks.8.2.conv.weight": False,
        "output_blocks.8.0.skip_connection.weight": True, "label_emb.0.0.weight": True, "label_emb.0.2.bias": True,
    },
}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_real_block_structure(family):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from dice.testkit.single_file import unet_to_ldm, vae_to_ldm

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, norm_num_groups=2, **REAL_UNETS[family])
    ldm = unet_to_ldm(unet)
    for key, present in REAL_UNET_KEYS[family].items():
        assert (key in ldm) == present, f"{key} should be {'present' if present else 'absent'}"
    back = convert_ldm_unet_checkpoint({"model.diffusion_model." + k: v for k, v in ldm.items()}, dict(unet.config))
    assert set(back) == set(unet.state_dict())
    assert all(torch.equal(back[k], v) for k, v in unet.state_dict().items())

    # The SD VAE: 4 blocks of 2 layers; LDM numbers the decoder's up blocks from the full-resolution end.
    vae = AutoencoderKL(block_out_channels=(4, 8, 8, 8), layers_per_block=2, norm_num_groups=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    ldm = vae_to_ldm(vae)
    expected = {
        "encoder.down.2.downsample.conv.weight": True, "encoder.down.3.downsample.conv.weight": False,
        "encoder.down.1.block.0.nin_shortcut.weight": True, "encoder.down.3.block.1.conv2.weight": True,
        "decoder.up.0.upsample.conv.weight": False, "decoder.up.1.upsample.conv.weight": True,
        "decoder.up.3.upsample.conv.weight": True, "decoder.up.0.block.0.nin_shortcut.weight": True,
        "decoder.up.3.block.2.conv2.weight": True, "decoder.up.3.block.0.nin_shortcut.weight": False,
        "decoder.mid.attn_1.proj_out.weight": True, "encoder.mid.block_2.norm2.bias": True,
        "encoder.norm_out.weight": True, "post_quant_conv.weight": True,
    }
    for key, present in expected.items():
        assert (key in ldm) == present, f"{key} should be {'present' if present else 'absent'}"
    assert ldm["decoder.mid.attn_1.q.weight"].shape == (8, 8, 1, 1)
    back = convert_ldm_vae_checkpoint({"first_stage_model." + k: v for k, v in ldm.items()}, dict(vae.config))
    assert set(back) == set(vae.state_dict())
    assert all(torch.equal(back[k], v) for k, v in vae.state_dict().items())


# ---- loading through diffusers -------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_from_single_file_is_bit_exact(files, loaded, family):
    folder, path = files[family]
    _assert_same_weights(loaded(family), _pipeline_class(family).from_single_file(str(path), config=str(folder)))


def test_config_folder_needs_no_weights(files, loaded, tmp_path):
    """What the adapter's error message promises: configs and tokenizers are enough for config=."""
    folder, path = files["sd15"]
    configs = tmp_path / "configs_only"
    shutil.copytree(folder, configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    _assert_same_weights(loaded("sd15"), _pipeline_class("sd15").from_single_file(str(path), config=str(configs)))


# ---- loading through the adapters ----------------------------------------------------------
def _sdxl_adapter_class():
    from dice.adapters import adapter_class

    try:
        return adapter_class("sdxl")
    except (ValueError, ImportError):
        return None


def test_sd15_adapter_single_file_matches_folder(files):
    from dice.adapters import Conditioning, adapter_class

    folder, path = files["sd15"]
    cls = adapter_class("sd15")
    from_folder = cls.from_pretrained(str(folder))
    from_file = cls.from_pretrained(str(path), single_file_config=str(folder))
    _assert_same_weights(from_folder.pipe, from_file.pipe)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([10, 500])
    cond = Conditioning(embeds=torch.randn(2, 77, from_folder.text_dim, generator=gen))
    with torch.no_grad():
        assert torch.equal(from_folder.predict_noise(x, t, cond), from_file.predict_noise(x, t, cond))
    assert torch.equal(from_folder.encode_prompts(["a red cat"]).embeds, from_file.encode_prompts(["a red cat"]).embeds)


def test_sdxl_adapter_single_file_matches_folder(files):
    from dice.adapters import Conditioning

    cls = _sdxl_adapter_class()
    if cls is None:
        pytest.skip("the sdxl adapter is not registered yet (sdxl loading is covered via diffusers above)")
    folder, path = files["sdxl"]
    from_folder = cls.from_pretrained(str(folder))
    from_file = cls.from_pretrained(str(path), single_file_config=str(folder))
    _assert_same_weights(from_folder.pipe, from_file.pipe)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([10, 500])
    pooled_dim = from_folder.pipe.text_encoder_2.config.projection_dim
    cond = Conditioning(embeds=torch.randn(2, 77, from_folder.text_dim, generator=gen),
                        pooled=torch.randn(2, pooled_dim, generator=gen))
    sizes = torch.tensor([[32, 32, 0, 0], [40, 48, 4, 8]])
    with torch.no_grad():
        assert torch.equal(from_folder.predict_noise(x, t, cond, sizes), from_file.predict_noise(x, t, cond, sizes))
    assert torch.equal(from_folder.encode_prompts(["a red cat"]).embeds, from_file.encode_prompts(["a red cat"]).embeds)


def test_sd15_adapter_refuses_sdxl_file(files):
    from dice.adapters import ModelLoadError, adapter_class

    folder, path = files["sdxl"]
    with pytest.raises(ModelLoadError, match="sdxl"):
        adapter_class("sd15").from_pretrained(str(path), single_file_config=str(folder))


def test_sdxl_adapter_refuses_sd15_file(files):
    from dice.adapters import ModelLoadError

    cls = _sdxl_adapter_class()
    if cls is None:
        pytest.skip("the sdxl adapter is not registered yet")
    folder, path = files["sd15"]
    with pytest.raises(ModelLoadError, match="sd15"):
        cls.from_pretrained(str(path), single_file_config=str(folder))


def test_missing_file(tmp_path):
    from dice.adapters import ModelLoadError, adapter_class

    with pytest.raises(ModelLoadError, match="does not exist"):
        adapter_class("sd15").from_pretrained(str(tmp_path / "nope.safetensors"))


def test_offline_single_file_without_config(files, monkeypatch):
    import huggingface_hub.constants

    from dice.adapters import ModelLoadError, adapter_class

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as info:
        adapter_class("sd15").from_pretrained(str(files["sd15"][1]))
    message = str(info.value)
    assert "--single_file_config" in message and "could not load single-file checkpoint" in message


def test_wrong_single_file_config_is_named(files):
    """A config folder of another architecture: the message points at --single_file_config."""
    from dice.adapters import ModelLoadError, adapter_class

    with pytest.raises(ModelLoadError, match="single_file_config"):
        adapter_class("sd15").from_pretrained(str(files["sd15"][1]), single_file_config=str(files["sdxl"][0]))


# ---- writer API and command line -----------------------------------------------------------
def test_cli_writes_the_same_file(files, tmp_path, capsys):
    from safetensors import safe_open

    from dice.testkit.single_file import main

    folder, reference = files["sd15"]
    out = tmp_path / "cli.safetensors"
    assert main([str(folder), str(out), "--family", "sd15"]) == 0
    assert "from_single_file" in capsys.readouterr().out
    (tmp_path / "plain.txt").write_text("")  # the weights file is as readable as any file written here
    assert out.stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777
    half = tmp_path / "half.safetensors"
    assert main([str(folder), str(half), "--dtype", "fp16"]) == 0  # family read from model_index.json
    with safe_open(str(reference), "pt") as ref, safe_open(str(out), "pt") as new, safe_open(str(half), "pt") as h:
        assert set(ref.keys()) == set(new.keys()) == set(h.keys())
        assert new.metadata()["dice_family"] == "sd15"
        for key in ref.keys():
            assert torch.equal(ref.get_tensor(key), new.get_tensor(key))
            assert h.get_tensor(key).dtype == torch.float16


def test_cli_warns_about_unrecognisable_tiny_sdxl(files, tmp_path, capsys):
    from dice.testkit.single_file import main

    folder, _ = files["sdxl_stock"]
    stock_ready = folder == files["sdxl"][0]
    assert main([str(folder), str(tmp_path / "x.safetensors")]) == 0
    err = capsys.readouterr().err
    assert ("infer_diffusers_model_type" in err) != stock_ready


def test_refuses_other_families(tmp_path):
    from dice.testkit.single_file import save_single_file

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    with pytest.raises(ValueError, match="SD1.5 and SDXL"):
        save_single_file(tmp_path, tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError):
        save_single_file(tmp_path / "missing", tmp_path / "x.safetensors")
