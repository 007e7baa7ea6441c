"""dice.comfyui, the library under the ComfyUI node, without ComfyUI: conditionings shaped as ComfyUI's text encoders
make them (facts from its code, COMFYUI.md), the family rules, the refusals, and the imports a ComfyUI environment
allows. The node in a real ComfyUI: tests/test_comfyui.py (slow tier)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dice.checkpoint import SharpenerMismatch
from dice.adapters import adapter_class
from dice.comfyui import COMFYUI_FAMILIES, PIXART_OPTIONS, load_for_comfyui, sharpen_conditioning
from dice.errors import UserError
from dice.methods.dice import apply_sharpener, sharpen_embeddings, sharpening_rule
from dice.testkit.comfyui import NOT_IN_COMFYUI, tiny_sd3_at_real_widths, without_packages_env, write_random_sharpener

REPO = Path(__file__).resolve().parents[1]


def loaded(tmp_path, family="sd15", dim=768, seed=0, **family_options):
    folder = write_random_sharpener(tmp_path / f"{family}-{dim}-{seed}", family, dim, seed, family_options)
    return load_for_comfyui(folder, tmp_path / "exps")


def clip_conditioning(tokens=77, dim=768, pooled_dim=768, batch=1, seed=0, **extras):
    """[tensor, dict] as CLIPTextEncode gives it: ``tokens`` = 77 * chunks, every chunk starting with the same BOS."""
    generator = torch.Generator().manual_seed(seed)
    tensor = torch.randn(batch, tokens, dim, generator=generator)
    tensor[:, ::77] = torch.randn(dim, generator=torch.Generator().manual_seed(99))  # BOS: the same vector everywhere
    return [tensor, {"pooled_output": torch.randn(batch, pooled_dim, generator=generator), **extras}]


def test_each_chunk_is_sharpened_as_a_diffusers_embedding_and_every_dict_entry_is_carried_over(tmp_path):
    sharpener = loaded(tmp_path)
    positive = [clip_conditioning(154, seed=1, area=(8, 8, 0, 0), strength=0.5)]
    u = [clip_conditioning(77, seed=2)]
    (out,) = sharpen_conditioning(sharpener, positive, u, 1.3)
    c, context = positive[0][0], u[0][0]
    expected = torch.cat([apply_sharpener(sharpener.module, c[:, part], context, 1.3)
                          for part in (slice(0, 77), slice(77, 154))], dim=1)
    assert torch.equal(out[0], expected)
    # Both chunks' BOS restored, everything else moved; the sharpener has no attention between prompt tokens, so
    # one pass over the whole sequence gives the same values elsewhere.
    whole = apply_sharpener(sharpener.module, c, context, 1.3)
    bos = torch.zeros(154, dtype=torch.bool)
    bos[[0, 77]] = True
    assert torch.equal(out[0][:, bos], c[:, bos]) and ((out[0] - c)[:, ~bos].abs().amax(-1) > 1e-3).all()
    assert torch.allclose(out[0][:, ~bos], whole[:, ~bos], atol=1e-6)
    assert out[1] is not positive[0][1] and out[1].keys() == positive[0][1].keys()
    assert all(out[1][k] is positive[0][1][k] for k in out[1])  # pooled vector, area, strength: the same objects


def test_sdxl_keeps_its_pooled_vector_and_size_entries(tmp_path):
    sharpener = loaded(tmp_path, "sdxl", 2048, empty_prompt="encoded")
    sizes = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}
    positive = [clip_conditioning(77, 2048, 1280, seed=3, **sizes)]
    (out,) = sharpen_conditioning(sharpener, positive, [clip_conditioning(77, 2048, 1280, seed=4)])
    assert out[1]["pooled_output"] is positive[0][1]["pooled_output"]
    assert {k: out[1][k] for k in sizes} == sizes
    assert not torch.equal(out[0], positive[0][0])


def test_several_entries_a_batch_dtype_and_strength_zero(tmp_path):
    sharpener = loaded(tmp_path)
    combined = [clip_conditioning(77, seed=5), clip_conditioning(231, batch=2, seed=6)]
    u = [clip_conditioning(154, seed=7)]  # a u longer than 77 tokens: the sharpener attends to all of it
    out = sharpen_conditioning(sharpener, combined, u)
    assert [entry[0].shape for entry in out] == [(1, 77, 768), (2, 231, 768)]
    alone = sharpen_conditioning(sharpener, [[combined[1][0][1:], combined[1][1]]], u)[0][0][0]
    assert torch.allclose(out[1][0][1], alone, atol=1e-6)
    half = sharpen_conditioning(sharpener, [[combined[0][0].half(), combined[0][1]]], u)[0][0]
    assert half.dtype == torch.float16 and torch.allclose(half.float(), out[0][0], atol=1e-2)
    unchanged = sharpen_conditioning(sharpener, combined, u, 0.0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(unchanged, combined))


@pytest.mark.parametrize("sharpener_args, positive, needle", [
    (("sdxl", 2048), clip_conditioning(), "was trained for sdxl"),  # SD1.5 conditioning, SDXL sharpener
    (("sd15", 768), clip_conditioning(77, 2048, 1280), "was trained for sd15"),
    (("sd15", 768), clip_conditioning(77, 1024, 1024), "no family the DICE node knows"),  # SD2.x
    (("pixart", 4096), [torch.zeros(1, 154, 4096), {"pooled_output": torch.zeros(1, 2048)}], "cannot be applied to a sd3 model"),
    (("sd15", 768), [torch.zeros(1, 100, 768), {"pooled_output": torch.zeros(1, 768)}], "not a multiple of ComfyUI's 77-token"),
    (("sd15", 768), [torch.zeros(100, 768), {}], "not [batch, tokens, width]"),
])
def test_a_sharpener_that_does_not_fit_the_conditioning_is_one_line(tmp_path, sharpener_args, positive, needle):
    family, dim = sharpener_args
    sharpener = loaded(tmp_path, family, dim, **(PIXART_OPTIONS if family == "pixart" else {}))
    u = positive if positive[0].ndim == 3 and positive[0].shape[1] % 77 == 0 else clip_conditioning()
    with pytest.raises(UserError) as error:
        sharpen_conditioning(sharpener, [positive], [u])
    assert needle in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_u_of_another_model_and_a_u_batch_that_does_not_fit_are_refused(tmp_path):
    sharpener = loaded(tmp_path)
    with pytest.raises(SharpenerMismatch, match="the u conditioning"):
        sharpen_conditioning(sharpener, [clip_conditioning()], [clip_conditioning(77, 1024, 1024)])
    with pytest.raises(UserError, match="u has a batch of 2"):
        sharpen_conditioning(sharpener, [clip_conditioning(batch=3)], [clip_conditioning(batch=2)])


def test_pixart_sharpeners_need_the_options_comfyui_can_give(tmp_path):
    """ComfyUI's T5 conditioning has no padding tokens: a sharpener that reads them (the defaults) is refused at load."""
    with pytest.raises(SharpenerMismatch) as error:
        loaded(tmp_path, "pixart", 4096)  # pixart_context_mask "all": attends to u's 120 padded tokens
    message = str(error.value)
    assert "pixart_context_mask=all" in message and "--pixart_mask prompt --pixart_context_mask prompt" in message
    with pytest.raises(SharpenerMismatch, match="pixart_mask=full"):
        loaded(tmp_path, "pixart", 4096, seed=1, pixart_mask="full", pixart_context_mask="prompt")
    assert loaded(tmp_path, "pixart", 4096, seed=2, pixart_mask="prompt", pixart_context_mask="prompt").layout.title == "PixArt-α"


@pytest.mark.parametrize("family", ["pixart", "pixart-sigma"])
@pytest.mark.parametrize("keep_first_token", [False, True])
def test_pixart_matches_the_library_on_the_unpadded_t5_conditioning(tmp_path, tiny_model, family, keep_first_token):
    """A PixArt-α / PixArt-Σ pipeline with a 4096-wide (tiny) T5: the library sharpens the 120 / 300-token masked
    encoding; ComfyUI's conditioning is T5 on the prompt's tokens alone. The sharpened real tokens agree."""
    from diffusers import PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from dice.adapters import adapter_class
    from dice.methods.dice import sharpen

    pipe = adapter_class(family).pipeline_class().from_pretrained(tiny_model(family))
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(d_model=4096, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                 vocab_size=len(pipe.tokenizer), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    config = {**pipe.transformer.config, "caption_channels": 4096}
    pipe.register_modules(text_encoder=t5.eval(), transformer=PixArtTransformer2DModel.from_config(config))
    options = {"pixart_mask": "prompt", "pixart_context_mask": "prompt", "keep_first_token": keep_first_token}
    adapter = adapter_class(family)(pipe, "tiny-4096", options)
    sharpener = loaded(tmp_path, family, 4096, **options)
    prompt = "a red cat next to a blue house"
    cond, uncond = adapter.encode_prompts([prompt]), adapter.encode_negative([""])
    assert cond.embeds.shape[1] == {"pixart": 120, "pixart-sigma": 300}[family]
    ours = sharpen(adapter, sharpener.module, cond, uncond).embeds

    def comfyui_t5(text):  # ComfyUI's PixArt T5: the real tokens, no padding, no mask (comfy/text_encoders/pixart_t5.py)
        ids = pipe.tokenizer(text.lower()).input_ids
        with torch.no_grad():
            return t5(torch.tensor([ids])).last_hidden_state

    c, u = comfyui_t5(prompt), comfyui_t5("")
    real = int(cond.mask.sum())
    assert c.shape[1] == real and u.shape[1] == 1
    assert torch.allclose(c, cond.embeds[:, :real], atol=1e-5)  # masked T5 real tokens == T5 on them alone
    (out,) = sharpen_conditioning(sharpener, [[c, {"pooled_output": None}]], [[u, {}]])
    assert torch.allclose(out[0], ours[:, :real], atol=1e-5)
    assert torch.equal(out[0][:, 0], c[:, 0]) == keep_first_token


def test_pixart_sigma_needs_the_same_options_as_alpha(tmp_path):
    with pytest.raises(SharpenerMismatch, match="--pixart_mask prompt --pixart_context_mask prompt"):
        loaded(tmp_path, "pixart-sigma", 4096)
    assert loaded(tmp_path, "pixart-sigma", 4096, seed=1, **PIXART_OPTIONS).layout.title == "PixArt-Σ"


# ---- SD3 / SD3.5 ------------------------------------------------------------------------------------------------
SD3_CLIP, SD3_WIDTH = 2048, 4096  # CLIP-L + CLIP-G columns, zero-padded to T5's width


def sd3_conditioning(chunks=1, t5_tokens=77, batch=1, seed=0, **extras):
    """[tensor, dict] as ComfyUI's SD3 CLIPTextEncode gives it: ``chunks`` CLIP-L/G chunks of 77 (2048 columns, zeros
    to 4096, each led by the same BOS), then ``t5_tokens`` T5 tokens (none: T5 absent); pooled [batch, 2048]."""
    generator = torch.Generator().manual_seed(seed)
    clip = torch.zeros(batch, 77 * chunks, SD3_WIDTH)
    clip[..., :SD3_CLIP] = torch.randn(batch, 77 * chunks, SD3_CLIP, generator=generator)
    clip[:, ::77, :SD3_CLIP] = torch.randn(SD3_CLIP, generator=torch.Generator().manual_seed(99))
    t5 = torch.randn(batch, t5_tokens, SD3_WIDTH, generator=generator)
    return [torch.cat([clip, t5], dim=1), {"pooled_output": torch.randn(batch, SD3_CLIP, generator=generator), **extras}]


def library_sd3(sharpener, c, u, c_pooled, u_pooled, alpha=1.0):
    """The library's pipeline-free rule on a diffusers-shaped SD3 embedding."""
    return sharpen_embeddings(sharpener.module, c, u, alpha, c_pooled=c_pooled, u_pooled=u_pooled,
                              **sharpening_rule(adapter_class("sd3"), sharpener.options))


@pytest.mark.parametrize("pooled_embedding", ["sharpen", "keep"])
def test_sd3_chunks_t5_pooled_and_zeros_follow_the_library(tmp_path, pooled_embedding):
    """Three CLIP chunks (a long prompt) then 90 T5 tokens: the first chunk with the T5 tokens is diffusers' layout and
    is sharpened as one embedding, each further chunk as a one-chunk prompt; every chunk's BOS restored, CLIP's
    zero columns kept zero, the pooled vector rewritten by the first group (or kept), every other entry carried over."""
    sharpener = loaded(tmp_path, "sd3", SD3_WIDTH, max_sequence_length=90, pooled_embedding=pooled_embedding)
    positive = [sd3_conditioning(3, 90, batch=2, seed=1, area=(8, 8, 0, 0))]
    u = [sd3_conditioning(1, 90, seed=2)]
    (out,) = sharpen_conditioning(sharpener, positive, u, 1.3)
    c, pooled = positive[0][0], positive[0][1]["pooled_output"]
    context, u_pooled = u[0][0].expand(2, -1, -1), u[0][1]["pooled_output"].expand(2, -1)
    first, new_pooled = library_sd3(sharpener, torch.cat([c[:, :77], c[:, 231:]], 1), context, pooled, u_pooled, 1.3)
    chunks = [library_sd3(sharpener, c[:, start:start + 77], context, pooled, u_pooled, 1.3)[0] for start in (77, 154)]
    torch.testing.assert_close(out[0], torch.cat([first[:, :77], *chunks, first[:, 77:]], 1), rtol=0, atol=1e-6)
    bos = torch.zeros(c.shape[1], dtype=torch.bool)
    bos[[0, 77, 154]] = True
    zero = c == 0
    assert torch.equal(out[0][:, bos], c[:, bos]) and (out[0][zero] == 0).all() and zero[:, :231, SD3_CLIP:].all()
    assert ((out[0] - c).abs()[~zero].reshape(-1) > 0).float().mean() > 0.99  # all else moved (bar BOS)
    assert out[1].keys() == positive[0][1].keys() and out[1]["area"] is positive[0][1]["area"]
    if pooled_embedding == "keep":
        assert out[1]["pooled_output"] is pooled
    else:
        assert torch.equal(out[1]["pooled_output"], new_pooled) and not torch.equal(new_pooled, pooled)


@pytest.mark.parametrize("length", [256, 77])
def test_sd3_without_t5_gets_diffusers_zero_tokens_in_u(tmp_path, length):
    """Without T5 ComfyUI's SD3 conditioning is the CLIP tokens alone; diffusers appends max_sequence_length zero
    tokens, which stay zero when sharpened but are part of u, the sharpener's context: the node puts them back."""
    sharpener = loaded(tmp_path, "sd3", SD3_WIDTH, max_sequence_length=length)
    positive, u = sd3_conditioning(1, 0, seed=3), sd3_conditioning(1, 0, seed=4)
    (out,) = sharpen_conditioning(sharpener, [positive], [u])
    pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, length))  # noqa: E731 - diffusers' absent T5
    expected, pooled = library_sd3(sharpener, pad(positive[0]), pad(u[0]), positive[1]["pooled_output"], u[1]["pooled_output"])
    assert (expected[:, 77:] == 0).all() and out[0].shape == positive[0].shape
    assert torch.equal(out[0], expected[:, :77]) and torch.equal(out[1]["pooled_output"], pooled)
    as_is, _ = library_sd3(sharpener, positive[0], u[0], positive[1]["pooled_output"], u[1]["pooled_output"])
    assert not torch.allclose(as_is, out[0], atol=1e-4)  # the zero tokens matter as context


def test_sd3_t5_length_other_than_trained_is_used_as_given_with_a_warning(tmp_path, caplog):
    import logging

    logging.getLogger("dice").propagate = True  # restored by conftest's fixture
    sharpener = loaded(tmp_path, "sd3", SD3_WIDTH)  # max_sequence_length 256, the pipeline's
    positive, u = sd3_conditioning(1, 80, seed=5), sd3_conditioning(1, 77, seed=6)
    with caplog.at_level(logging.WARNING, logger="dice"):
        (out,) = sharpen_conditioning(sharpener, [positive], [u])
    assert "u has 77 T5 tokens where the sharpener was trained with 256" in caplog.text
    assert "T5TokenizerOptions node with min_length 256" in caplog.text
    expected, _ = library_sd3(sharpener, positive[0], u[0], positive[1]["pooled_output"], u[1]["pooled_output"])
    assert torch.equal(out[0], expected)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dice"):
        sharpen_conditioning(sharpener, [positive], [sd3_conditioning(1, 256, seed=6)])
    assert "T5 tokens" not in caplog.text


@pytest.mark.parametrize("t5", [False, True])
def test_sd3_node_equals_the_library_on_comfyuis_layout(tmp_path, t5):
    """The library's path (the adapter's encode_prompt at the sharpener's 77 T5 tokens, zeros without T5, then
    ``sharpen``, as training and dice.apply do) against the node on ComfyUI's layout of the same encoders: without T5
    the CLIP tokens alone; with T5 padded to 77 (ComfyUI's default, and this sharpener's length); a long prompt's second
    CLIP chunk encoded on its own. Equal within float rounding, the pooled vector too."""
    from dice.methods.dice import sharpen

    pipe = tiny_sd3_at_real_widths(t5)
    options = {"max_sequence_length": 77}
    sharpener = loaded(tmp_path, "sd3", SD3_WIDTH, **options)
    library = adapter_class("sd3")(pipe, "tiny-sd3-4096", options)
    comfyui = adapter_class("sd3")(pipe, "tiny-sd3-4096", {"max_sequence_length": 77 if t5 else 0})
    prompts = ["a red cat next to a blue house", "a photo of a small dog"]
    cond, uncond = library.encode_prompts(prompts), library.encode_negative([""] * 2)
    ours = sharpen(library, sharpener.module, cond, uncond)
    c, u = comfyui.encode_prompts(prompts), comfyui.encode_negative([""])
    assert c.embeds.shape[1] == (154 if t5 else 77) and (c.embeds[:, 77:, SD3_CLIP:] != 0).all()
    (out,) = sharpen_conditioning(sharpener, [[c.embeds, {"pooled_output": c.pooled}]], [[u.embeds, {"pooled_output": u.pooled}]])
    torch.testing.assert_close(out[0], ours.embeds[:, :c.embeds.shape[1]], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1]["pooled_output"], ours.pooled, rtol=0, atol=1e-5)
    assert (ours.embeds[:, 77:] == 0).all() != t5  # without T5, diffusers' zero tokens stayed zero
    # A prompt of two CLIP chunks: ComfyUI encodes the second on its own and puts T5's tokens after both.
    long = torch.cat([c.embeds[:1, :77], c.embeds[1:, :77], c.embeds[:1, 77:]], 1)
    (out,) = sharpen_conditioning(sharpener, [[long, {"pooled_output": c.pooled[:1]}]], [[u.embeds, {"pooled_output": u.pooled}]])
    expected = torch.cat([ours.embeds[:1, :77], ours.embeds[1:, :77], ours.embeds[:1, 77:c.embeds.shape[1]]], 1)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1]["pooled_output"], ours.pooled[:1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("sharpener_args, positive, needle", [
    (("sd3", 4096), sd3_conditioning(0, 77), "T5 tokens only, without CLIP-L/G's"),
    (("sd3", 4096), [torch.cat([sd3_conditioning(1, 0)[0][:, :50], torch.randn(1, 77, 4096)], 1),
                     {"pooled_output": torch.zeros(1, 2048)}], "50 CLIP tokens, not a multiple"),
    (("sd3", 4096), clip_conditioning(77, 2048, 1280), "was trained for sd3"),
    (("sd3", 4096), [torch.randn(1, 20, 4096), {"pooled_output": None}], "cannot be applied to a pixart or pixart-sigma model"),
    (("sd3", 48), sd3_conditioning(), "expects 48-wide text embeddings"),  # the tiny SD3's sharpener
    (("pixart-sigma", 4096), sd3_conditioning(), "was trained for pixart-sigma"),
])
def test_an_sd3_or_pixart_sigma_sharpener_that_does_not_fit_is_one_line(tmp_path, sharpener_args, positive, needle):
    family, dim = sharpener_args
    sharpener = loaded(tmp_path, family, dim, **(PIXART_OPTIONS if family.startswith("pixart") else {}))
    with pytest.raises(UserError) as error:
        sharpen_conditioning(sharpener, [positive], [sd3_conditioning() if family == "sd3" else positive])
    assert needle in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_loader_refusals_are_one_line(tmp_path, monkeypatch):
    import dice.comfyui as comfy

    with pytest.raises(UserError) as error:
        load_for_comfyui(tmp_path / "missing", tmp_path / "exps")
    assert "\n" not in str(error.value)
    folder = write_random_sharpener(tmp_path / "other", "sd15", 768)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "family": "sd3"}))
    # A library family the node has no entry for (every one has today: a family added to the library later).
    monkeypatch.setattr(comfy, "COMFYUI_FAMILIES", {k: v for k, v in COMFYUI_FAMILIES.items() if k != "sd3"})
    with pytest.raises(SharpenerMismatch, match="sd3 family, which the ComfyUI node does not support yet"):
        load_for_comfyui(folder, tmp_path / "exps")


def test_every_library_family_is_in_the_table():
    from dice.adapters.registry import families

    assert set(COMFYUI_FAMILIES) == set(families())
    assert all(f.family == name for name, f in COMFYUI_FAMILIES.items())


def test_the_node_library_imports_in_a_comfyui_environment(tmp_path):
    """With diffusers and accelerate (and this project's other extras, transformers too) uninstalled, the parts of
    dice the node imports load a sharpener and sharpen a conditioning."""
    folder = write_random_sharpener(tmp_path / "sharpener", "sd15", 768)
    blocked = (*NOT_IN_COMFYUI, "transformers", "matplotlib", "open_clip", "torch_fidelity", "ftfy")
    env = without_packages_env(tmp_path / "site", blocked)
    env["PYTHONPATH"] += f":{REPO}"
    code = f"""
import importlib.util, sys, torch
assert all(importlib.util.find_spec(name) is None for name in {blocked!r})
from dice.checkpoint import resolve_sharpener_files
from dice.comfyui import load_for_comfyui, sharpen_conditioning
sharpener = load_for_comfyui({str(folder)!r}, "exps")
c = [[torch.randn(1, 77, 768), {{"pooled_output": torch.randn(1, 768)}}]]
out = sharpen_conditioning(sharpener, c, c)
assert out[0][0].shape == (1, 77, 768)
print(sorted({{m.split(".")[0] for m in sys.modules}} & {set(blocked)!r}))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_families_with_the_same_text_encoders_share_a_conditioning(tmp_path, monkeypatch):
    """PixArt-α and PixArt-Σ give the same T5 conditioning: a sharpener of either fits it. Here a stand-in family
    with SD1.5's text encoder, listed first, must not make an SD1.5 sharpener's conditioning look foreign."""
    import dice.comfyui as comfy

    twin = comfy.ComfyFamily("twin", "SD1.5 twin", 768, 768, comfy.clip_chunks)
    monkeypatch.setattr(comfy, "COMFYUI_FAMILIES", {"twin": twin, **comfy.COMFYUI_FAMILIES})
    assert [f.family for f in comfy.recognise(*clip_conditioning())] == ["twin", "sd15"]
    (out,) = sharpen_conditioning(loaded(tmp_path), [clip_conditioning()], [clip_conditioning(seed=1)])
    assert out[0].shape == (1, 77, 768)
