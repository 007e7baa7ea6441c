"""Tiny random-weight stand-ins for the metric networks: the evaluators' ``--smoke_test``.

The real networks (Inception-v3, open_clip ViT-g-14, CLIP ViT-L/14 + the LAION aesthetic head)
cannot be downloaded offline or in CI. These stand-ins are built in code from a fixed seed, behind
the same interfaces the calc functions take, so sample.py → evaluators → results table runs
anywhere. Their numbers are MEANINGLESS: they check the plumbing (manifests, image/prompt pairing,
statistics, results lines, the table) and nothing else. Results scored with them carry
``"smoke_test": true`` in their options and the results table marks those rows.

The tests build their tiny metric networks here too.
"""
from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from evaluation.metrics.aesthetic import AestheticMLP, _ClipPreprocess, clip_image_features
from evaluation.record import SMOKE_TEST_NOTE, MetricResult

SMOKE_SEED = 0
SMOKE_TEST_HELP = (
    "smoke test: replace the real network(s) by tiny random-weight ones built in code (fixed seed, no "
    "downloads). The numbers are MEANINGLESS and not comparable to anything; this checks the plumbing "
    "only. Results are marked \"smoke_test\": true and the table flags them."
)


@contextlib.contextmanager
def seeded(seed: int = SMOKE_SEED):
    """Build under a fixed seed without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------- FID


def pooled_color_features(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> 12 features: the image averaged over a 2×2 grid (closed-form tests)."""
    return F.adaptive_avg_pool2d(images.float(), 2).flatten(1)


class SmokeFeatureExtractor(torch.nn.Module):
    """Inception's stand-in: uint8 [B,3,H,W] -> float [B, dim] from a tiny random conv net.

    Like Inception it resizes every image to one input size first, so any image size works.
    """

    def __init__(self, dim: int = 64, input_size: int = 64, seed: int = SMOKE_SEED):
        super().__init__()
        self.input_size = input_size
        with seeded(seed):
            self.network = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(32, dim, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            )
            for layer in self.network:
                if isinstance(layer, torch.nn.Conv2d):  # He init: features of order 1, not vanishing
                    torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    torch.nn.init.zeros_(layer.bias)
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) / 127.5 - 1
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.network(x)


def smoke_feature_extractor(device: str | torch.device = "cpu") -> SmokeFeatureExtractor:
    return SmokeFeatureExtractor().to(device)


# ---------------------------------------------------------------- CLIP (score and aesthetic)


def tiny_clip(projection_dim: int = 768, image_size: int = 32, seed: int = SMOKE_SEED):
    """(CLIPModel, CLIPImageProcessor): a random transformers CLIP with 16-wide towers.

    ``projection_dim`` 768 is what the LAION aesthetic head reads (CLIP ViT-L/14's embedding width).
    Text: vocabulary 100, token 0 = start, 1 = end and padding (see SmokeTokenizer).
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=20, num_attention_heads=2, num_hidden_layers=1,
                         vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=20, num_attention_heads=2, num_hidden_layers=1,
                           image_size=image_size, patch_size=8),
        projection_dim=projection_dim,
    )
    with seeded(seed):
        model = CLIPModel(config)
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return model.eval().requires_grad_(False), processor


def save_tiny_clip(folder: str | os.PathLike, **kwargs) -> Path:
    """tiny_clip() saved like a hub model (for --clip_l_model FOLDER)."""
    model, processor = tiny_clip(**kwargs)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Path(folder)


class SmokeTokenizer:
    """open_clip-like tokenizer for tiny_clip: words -> fixed ids (crc32), [start, words..., end, pad...]."""

    def __init__(self, vocab_size: int = 100, context_length: int = 16):
        self.vocab_size, self.context_length = vocab_size, context_length

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        tokens = torch.ones(len(prompts), self.context_length, dtype=torch.long)  # 1 = end / padding
        for row, prompt in enumerate(prompts):
            words = [2 + zlib.crc32(w.encode("utf-8")) % (self.vocab_size - 2) for w in prompt.lower().split()]
            ids = [0] + words[: self.context_length - 2] + [1]
            tokens[row, : len(ids)] = torch.tensor(ids)
        return tokens


class SmokeOpenClip(torch.nn.Module):
    """open_clip's interface (encode_image / encode_text) over a tiny transformers CLIPModel."""

    def __init__(self, clip_model):
        super().__init__()
        self.clip = clip_model

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return clip_image_features(self.clip, pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        output = self.clip.get_text_features(input_ids=tokens)
        return output if isinstance(output, torch.Tensor) else output.pooler_output


def smoke_clip_score_model(device: str | torch.device = "cpu"):
    """(model, preprocess, tokenizer) standing in for open_clip ViT-g-14."""
    clip_model, processor = tiny_clip()
    return SmokeOpenClip(clip_model).to(device).eval(), _ClipPreprocess(processor), SmokeTokenizer()


def smoke_aesthetic_models(device: str | torch.device = "cpu"):
    """(head, clip_model, image_processor): a random LAION-layout head on a tiny CLIP of matching width."""
    clip_model, processor = tiny_clip()
    with seeded(SMOKE_SEED + 1):
        head = AestheticMLP(input_size=clip_model.config.projection_dim)
    return head.eval().requires_grad_(False), clip_model.to(device), processor


def mark_smoke_test(result: MetricResult) -> MetricResult:
    """Flag a result scored with the stand-ins (the results table reads ``options.smoke_test``)."""
    result.options = {"smoke_test": True, "note": f"{SMOKE_TEST_NOTE}: meaningless numbers, plumbing check only",
                      **result.options}
    return result
