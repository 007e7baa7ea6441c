"""CLIP score and aesthetic score: formulas on hand-made embeddings, pairing through the manifest,
the LAION head's file format, tiny random CLIP models end to end, and the offline error messages."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from evaluation.metrics.aesthetic import (
    AESTHETIC_URL,
    AestheticMLP,
    aesthetic_scores,
    calc_aesthetic,
    clip_image_features,
    load_aesthetic_head,
    load_clip_l,
)
from evaluation.metrics.clip_score import CLIP_HUB_REPO, calc_clip_score, clip_scores, load_open_clip
from evaluation.metrics.images import Processes
from evaluation.metrics.smoke import save_tiny_clip
from evaluation.metrics.weights import MissingWeightsError

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200), (90, 90, 90)]


class ColorClip(torch.nn.Module):
    """An open_clip-like model: an image embeds as its mean colour, 'prompt k' as colour k."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tensor(COLORS, dtype=torch.float64)[tokens]


def mean_color(image: PIL.Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float64).mean(axis=(0, 1)))


def color_tokenizer(prompts: list[str]) -> torch.Tensor:
    return torch.tensor([int(prompt.split()[-1]) for prompt in prompts])


def write_shuffled_sample_folder(folder: Path, count: int, seed: int = 0) -> None:
    """Image i is colour i and prompt i, but neither file names nor manifest lines follow i."""
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    names = [f"{name:05d}.png" for name in rng.sample(range(100), count)]
    entries = [{"index": i, "prompt": f"a photo of colour {i}", "seed": i, "file": names[i]} for i in range(count)]
    for i, entry in enumerate(entries):
        PIL.Image.new("RGB", (12, 12), COLORS[i]).save(folder / entry["file"])
    rng.shuffle(entries)
    (folder / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    (folder / "sampling_options.json").write_text(json.dumps({"method": "dice", "num_images": count, "steps": 20}))


# ---------------------------------------------------------------- CLIP score


def test_clip_score_formula():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    b = torch.tensor([[2.0, 4.0, 6.0], [0.0, 5.0, 0.0], [-1.0, -1.0, 0.0]])
    scores = clip_scores(a, b)
    assert scores.dtype == torch.float64
    assert scores.tolist() == pytest.approx([100.0, 0.0, -100.0], abs=1e-10)  # identical, orthogonal, opposite: no clamp
    assert clip_scores(a[2:], torch.tensor([[-1.0, 0.0, 0.0]])).item() == pytest.approx(-100 / np.sqrt(2))


def test_clip_score_pairs_images_and_prompts_through_the_manifest(tmp_path):
    write_shuffled_sample_folder(tmp_path / "samples", 7)
    result = calc_clip_score(
        tmp_path / "samples", model=ColorClip(), preprocess=mean_color, tokenizer=color_tokenizer, batch_size=3
    )
    assert result.metric == "clip_score" and result.count == 7
    assert result.value == pytest.approx(100.0, abs=1e-9)  # every image met its own prompt

    # The same folder paired by file-name order would score lower: the test can tell the difference.
    files = sorted((tmp_path / "samples").glob("*.png"))
    by_name = clip_scores(
        torch.stack([mean_color(PIL.Image.open(f).convert("RGB")) for f in files]),
        ColorClip().encode_text(torch.arange(7)),
    )
    assert by_name.mean().item() < 99


def test_clip_score_shards_add_up(tmp_path):
    write_shuffled_sample_folder(tmp_path / "samples", 7, seed=1)
    kwargs = dict(model=ColorClip(), preprocess=mean_color, tokenizer=lambda p: (color_tokenizer(p) + 1) % 7)  # every prompt off by one
    whole = calc_clip_score(tmp_path / "samples", **kwargs)

    class OneOfTwo(Processes):  # a rank of a two-process run, without the collective
        def sum(self, tensor):
            return tensor

    parts = [calc_clip_score(tmp_path / "samples", processes=OneOfTwo(rank=r, world_size=2), **kwargs) for r in (0, 1)]
    assert [p.count for p in parts] == [4, 3]
    combined = sum(p.value * p.count for p in parts) / sum(p.count for p in parts)
    assert combined == pytest.approx(whole.value, rel=1e-12) and whole.value < 100


def test_clip_score_needs_a_manifest(tmp_path):
    (tmp_path / "plain").mkdir()
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "plain" / "a.png")
    with pytest.raises(ValueError, match="manifest.jsonl"):
        calc_clip_score(tmp_path / "plain", model=ColorClip(), preprocess=mean_color, tokenizer=color_tokenizer)


def test_missing_clip_weights_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("DICE_CLIP_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError) as error:
        load_open_clip()
    assert CLIP_HUB_REPO in str(error.value)
    assert "--clip_weights" in str(error.value) and "DICE_CLIP_WEIGHTS" in str(error.value)
    with pytest.raises(MissingWeightsError, match="not found: /no/such/file.bin"):
        load_open_clip("/no/such/file.bin")


# ---------------------------------------------------------------- aesthetic score

LAION_KEYS = {
    "layers.0.weight": (1024, 768), "layers.0.bias": (1024,),
    "layers.2.weight": (128, 1024), "layers.2.bias": (128,),
    "layers.4.weight": (64, 128), "layers.4.bias": (64,),
    "layers.6.weight": (16, 64), "layers.6.bias": (16,),
    "layers.7.weight": (1, 16), "layers.7.bias": (1,),
}


def test_aesthetic_head_layout_matches_the_laion_file():
    head = AestheticMLP()
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == LAION_KEYS
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.GELU)) for m in head.modules())


def test_aesthetic_head_file_loading(tmp_path):
    torch.manual_seed(0)
    state = AestheticMLP().state_dict()
    torch.save(state, tmp_path / "head.pth")
    head = load_aesthetic_head(str(tmp_path / "head.pth"), verify_sha256=False)
    assert all(torch.equal(head.state_dict()[k], state[k]) for k in state)
    assert not head.training  # dropout off

    with pytest.raises(ValueError, match="sha256"):  # not the released file
        load_aesthetic_head(str(tmp_path / "head.pth"))
    torch.save({**state, "layers.7.weight": torch.zeros(2, 16)}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="does not hold the aesthetic predictor"):
        load_aesthetic_head(str(tmp_path / "shape.pth"), verify_sha256=False)
    torch.save({k.replace("layers", "mlp"): v for k, v in state.items()}, tmp_path / "keys.pth")
    with pytest.raises(ValueError, match="does not hold the aesthetic predictor"):
        load_aesthetic_head(str(tmp_path / "keys.pth"), verify_sha256=False)


def test_aesthetic_formula_on_hand_made_features():
    head = AestheticMLP()
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.zero_()
        for index in (0, 2, 4, 6):  # pass feature 0 straight through ...
            head.layers[index].weight[0, 0] = 1.0
        head.layers[7].weight[0, 0] = 2.0  # ... so score = 5 + 2 * f0 / |f|
        head.layers[7].bias[0] = 5.0
    head.eval()
    features = torch.zeros(3, 768)
    features[0, :2] = torch.tensor([3.0, 4.0])
    features[1, :2] = torch.tensor([-30.0, 40.0])  # a negative projection stays negative: no activation
    features[2, 0] = 0.001
    assert aesthetic_scores(features, head).tolist() == pytest.approx([6.2, 3.8, 7.0], abs=1e-6)


def test_aesthetic_end_to_end_with_a_tiny_clip(tmp_path):
    save_tiny_clip(tmp_path / "clip", projection_dim=768)  # 768: what the LAION head reads
    torch.manual_seed(1)
    torch.save(AestheticMLP().state_dict(), tmp_path / "head.pth")
    write_shuffled_sample_folder(tmp_path / "samples", 5)
    result = calc_aesthetic(
        tmp_path / "samples",
        aesthetic_weights=str(tmp_path / "head.pth"),
        verify_sha256=False,
        clip_l_model=str(tmp_path / "clip"),
        batch_size=2,
    )
    clip, processor = load_clip_l(str(tmp_path / "clip"))
    head = load_aesthetic_head(str(tmp_path / "head.pth"), verify_sha256=False)
    files = sorted((tmp_path / "samples").glob("*.png"))
    pixels = processor(images=[PIL.Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = clip_image_features(clip, pixels)
        expected = head(features / features.norm(dim=-1, keepdim=True)).mean().item()
    assert result.metric == "aesthetic" and result.count == 5
    assert result.value == pytest.approx(expected, rel=1e-5)
    assert result.sampling_options["method"] == "dice" and result.options["clip_model"] == str(tmp_path / "clip")


def test_missing_aesthetic_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty weights cache
    monkeypatch.delenv("DICE_AESTHETIC_WEIGHTS", raising=False)
    monkeypatch.delenv("DICE_CLIP_L_MODEL", raising=False)
    with pytest.raises(MissingWeightsError) as error:
        load_aesthetic_head()
    assert AESTHETIC_URL in str(error.value)
    assert "--aesthetic_weights" in str(error.value) and "DICE_AESTHETIC_WEIGHTS" in str(error.value)
    with pytest.raises(MissingWeightsError) as error:
        load_clip_l()
    assert "openai/clip-vit-large-patch14" in str(error.value) and "--clip_l_model" in str(error.value)
