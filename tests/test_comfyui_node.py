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
from dice.comfyui import COMFYUI_FAMILIES, load_for_comfyui, sharpen_conditioning
from dice.errors import UserError
from dice.methods.dice import apply_sharpener
from dice.testkit.comfyui import NOT_IN_COMFYUI, without_packages_env, write_random_sharpener

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
    (("pixart", 4096), [torch.zeros(1, 154, 4096), {"pooled_output": torch.zeros(1, 2048)}], "no family the DICE node knows"),  # SD3
    (("sd15", 768), [torch.zeros(1, 100, 768), {"pooled_output": torch.zeros(1, 768)}], "not a multiple of ComfyUI's 77-token"),
    (("sd15", 768), [torch.zeros(100, 768), {}], "not [batch, tokens, width]"),
])
def test_a_sharpener_that_does_not_fit_the_conditioning_is_one_line(tmp_path, sharpener_args, positive, needle):
    family, dim = sharpener_args
    options = {"pixart_mask": "prompt", "pixart_context_mask": "prompt"} if family == "pixart" else {}
    sharpener = loaded(tmp_path, family, dim, **options)
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


@pytest.mark.parametrize("keep_first_token", [False, True])
def test_pixart_matches_the_library_on_the_unpadded_t5_conditioning(tmp_path, tiny_model, keep_first_token):
    """A PixArt-α pipeline with a 4096-wide (tiny) T5: the library sharpens the 120-token masked encoding; ComfyUI's
    conditioning is T5 on the prompt's tokens alone. The sharpened real tokens agree."""
    from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from dice.adapters.pixart import PixArtAdapter
    from dice.methods.dice import sharpen

    pipe = PixArtAlphaPipeline.from_pretrained(tiny_model("pixart"))
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(d_model=4096, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                 vocab_size=len(pipe.tokenizer), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    config = {**pipe.transformer.config, "caption_channels": 4096}
    pipe.register_modules(text_encoder=t5.eval(), transformer=PixArtTransformer2DModel.from_config(config))
    options = {"pixart_mask": "prompt", "pixart_context_mask": "prompt", "keep_first_token": keep_first_token}
    adapter = PixArtAdapter(pipe, "tiny-4096", options)
    sharpener = loaded(tmp_path, "pixart", 4096, **options)
    prompt = "a red cat next to a blue house"
    cond, uncond = adapter.encode_prompts([prompt]), adapter.encode_negative([""])
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


def test_loader_refusals_are_one_line(tmp_path):
    with pytest.raises(UserError) as error:
        load_for_comfyui(tmp_path / "missing", tmp_path / "exps")
    assert "\n" not in str(error.value)
    folder = write_random_sharpener(tmp_path / "other", "sd15", 768)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "family": "sd3"}))
    with pytest.raises(SharpenerMismatch, match="sd3 family, which the ComfyUI node does not support yet"):
        load_for_comfyui(folder, tmp_path / "exps")


def test_every_family_of_the_table_is_a_library_family():
    from dice.adapters.registry import families

    assert set(COMFYUI_FAMILIES) <= set(families())
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
