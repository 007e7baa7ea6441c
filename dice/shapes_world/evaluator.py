"""The shapes world's evaluator: an attribute classifier, the world's CLIP score and FID in one network.

It reads a 32x32 image and predicts the colour and shape of the left and of the right object.
* **Prompt accuracy**: the share of generated images whose four predicted attributes all equal what
  the prompt says (the world's text-image alignment score, in the role of the CLIP score, but exact:
  a caption fully determines the attributes, so there is no "sort of matches").
* **Fréchet distance** between its 128-d penultimate features of generated images and of real
  renders of the same prompts (the world's FID: Inception-v3 pool features there, these here).
Both differ from their COCO counterparts in scale and meaning: the numbers compare methods on this
world and nothing else.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .world import ATTRIBUTE_VALUES, ATTRIBUTES, IMAGE_SIZE, Combination

FEATURE_DIM = 128
WEIGHTS_NAME = "evaluator.safetensors"
CONFIG_NAME = "evaluator.json"


class AttributeClassifier(nn.Module):
    """Six 3x3 convolutions (three stride-2), a 128-d feature layer, one linear head per attribute.

    The features keep the 4x4 spatial map flattened (no global pooling): left and right must stay
    apart for the heads to tell which object is which.
    """

    def __init__(self, width: int = 16, feature_dim: int = FEATURE_DIM):
        super().__init__()
        chans = [3, width, width, 2 * width, 2 * width, 4 * width, 4 * width]
        layers = []
        for i in range(6):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2 if i % 2 else 1, padding=1), nn.GroupNorm(8, chans[i + 1]), nn.SiLU()]
        self.convs = nn.Sequential(*layers)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * (IMAGE_SIZE // 8) ** 2, feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(ATTRIBUTE_VALUES[name])) for name in ATTRIBUTES})
        self.config = {"width": width, "feature_dim": feature_dim}

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``pixels`` [B, 3, 32, 32] in [-1, 1] -> (features [B, 128], logits per attribute)."""
        feats = self.features(self.convs(pixels))
        return feats, {name: head(feats) for name, head in self.heads.items()}


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float in [-1, 1], resized to 32x32 if the sampler used another size."""
    pixels = images.float() / 127.5 - 1.0
    if pixels.shape[-1] != IMAGE_SIZE or pixels.shape[-2] != IMAGE_SIZE:
        pixels = F.interpolate(pixels, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")
    return pixels


def labels_of(combinations: list[Combination]) -> torch.Tensor:
    """[B, 4] attribute indices in ATTRIBUTES order."""
    return torch.tensor([[ATTRIBUTE_VALUES[a].index(v) for a, v in zip(ATTRIBUTES, c.attributes())] for c in combinations])


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What generated images vary in and captions do not fix: brightness, contrast, noise, small shifts."""
    b = pixels.shape[0]
    scale = 1 + 0.25 * (torch.rand(b, 1, 1, 1, generator=generator) - 0.5)
    offset = 0.2 * (torch.rand(b, 1, 1, 1, generator=generator) - 0.5)
    noise = torch.randn(pixels.shape, generator=generator) * 0.1 * torch.rand(b, 1, 1, 1, generator=generator)
    out = pixels * scale + offset + noise
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=generator))
    return torch.roll(out, shifts=(dy, dx), dims=(2, 3)).clamp(-1.5, 1.5)


@torch.no_grad()
def predict(model: AttributeClassifier, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images -> (features [B, 128] float64, predicted attribute indices [B, 4])."""
    feats, preds = [], []
    device = next(model.parameters()).device
    for start in range(0, len(images), batch_size):
        f, logits = model(to_pixels(images[start:start + batch_size].to(device)))
        feats.append(f.double().cpu())
        preds.append(torch.stack([logits[a].argmax(dim=1) for a in ATTRIBUTES], dim=1).cpu())
    return torch.cat(feats), torch.cat(preds)


def save_evaluator(folder: str | Path, model: AttributeClassifier, info: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps({**model.config, **info}, indent=2) + "\n")


def load_evaluator(folder: str | Path, device: str | torch.device = "cpu") -> AttributeClassifier:
    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"no shapes-world evaluator in '{folder}' ({WEIGHTS_NAME} missing). Pass the evaluator "
                                "folder beside the model, or train one with `python -m dice.shapes_world pretrain`")
    config = json.loads((folder / CONFIG_NAME).read_text())
    model = AttributeClassifier(config["width"], config["feature_dim"])
    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    return model.to(device).eval().requires_grad_(False)


def bootstrap_interval(values: np.ndarray, num_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one entry per prompt)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(num_resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))

