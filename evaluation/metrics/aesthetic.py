"""Aesthetic score (SPEC §5): the LAION improved aesthetic predictor on CLIP ViT-L/14 image features.

score_i = MLP(f_i / |f_i|) with f_i = ``CLIPModel.get_image_features`` of openai/clip-vit-large-patch14;
the reported value is the mean over images. The MLP is ``sac+logos+ava1-l14-linearMSE.pth``:
768→1024→128→64→16→1 linear layers with dropout between and no activations.
"""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from dice.errors import one_line
from evaluation.metrics.images import Processes, iterate_batches, open_image_collection
from evaluation.metrics.weights import MissingWeightsError, WrongWeightsError, is_offline, resolve_weights_file, sha256_of_file
from evaluation.record import MetricResult

AESTHETIC_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"
)
AESTHETIC_SIZE = 3_714_759
AESTHETIC_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
AESTHETIC_WEIGHTS_ENV = "DICE_AESTHETIC_WEIGHTS"
CLIP_L_MODEL = "openai/clip-vit-large-patch14"
CLIP_L_ENV = "DICE_CLIP_L_MODEL"


class AestheticMLP(torch.nn.Module):
    """The LAION head; module indices match the released file's keys layers.{0,2,4,6,7}."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def load_aesthetic_head(weights: str | None = None, verify_sha256: bool = True) -> AestheticMLP:
    """The LAION head from a path or URL (else $DICE_AESTHETIC_WEIGHTS, the cache, a download).

    With ``verify_sha256`` the file must be the released one (size and sha256); key names and
    shapes are always checked.
    """
    path = resolve_weights_file(
        weights,
        AESTHETIC_WEIGHTS_ENV,
        AESTHETIC_URL,
        missing_message=(
            f"Aesthetic score needs the LAION predictor sac+logos+ava1-l14-linearMSE.pth: download {AESTHETIC_URL} "
            f"and pass --aesthetic_weights PATH (or set {AESTHETIC_WEIGHTS_ENV}=PATH)."
        ),
    )
    if verify_sha256:
        size, digest = os.path.getsize(path), sha256_of_file(path)
        if (size, digest) != (AESTHETIC_SIZE, AESTHETIC_SHA256):
            raise WrongWeightsError(
                f"{path} is not the LAION aesthetic predictor sac+logos+ava1-l14-linearMSE.pth "
                f"({size} bytes, sha256 {digest}; expected {AESTHETIC_SIZE} bytes, sha256 {AESTHETIC_SHA256}). "
                f"Download it again from {AESTHETIC_URL}."
            )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - not a torch file, or one holding more than tensors
        raise WrongWeightsError(f"{path} is not a readable weights file ({one_line(error)[:300]}). Download it again from {AESTHETIC_URL}") from None
    head = AestheticMLP()
    expected = {name: tuple(tensor.shape) for name, tensor in head.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in state_dict.items()} if isinstance(state_dict, dict) else {}
    if found != expected:
        raise WrongWeightsError(
            f"{path} does not hold the aesthetic predictor's weights: expected {expected}, found {found or type(state_dict).__name__}. "
            f"Download it again from {AESTHETIC_URL}"
        )
    head.load_state_dict(state_dict)
    return head.eval().requires_grad_(False)


def load_clip_l(model: str | None = None, device: str | torch.device = "cpu"):
    """(CLIPModel, CLIPImageProcessor) from a hub id or a local folder (default openai/clip-vit-large-patch14)."""
    from transformers import CLIPImageProcessor, CLIPModel

    model = model or os.environ.get(CLIP_L_ENV) or CLIP_L_MODEL
    local_only = is_offline() or os.path.isdir(model)
    try:
        clip = CLIPModel.from_pretrained(model, local_files_only=local_only)
        processor = CLIPImageProcessor.from_pretrained(model, local_files_only=local_only)
    except OSError as error:  # transformers' error for "not found locally / not downloadable"
        raise MissingWeightsError(
            f"Aesthetic score needs CLIP ViT-L/14 ({CLIP_L_MODEL}), which could not be loaded from '{model}'"
            f"{' (offline: HF_HUB_OFFLINE=1)' if is_offline() else ''}: download it "
            f"(`hf download {CLIP_L_MODEL}`) or save it to a folder and pass --clip_l_model FOLDER "
            f"(or set {CLIP_L_ENV}=FOLDER)."
        ) from error
    return clip.to(device).eval().requires_grad_(False), processor


def aesthetic_scores(image_features: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    """Per-image scores: the head applied to L2-normalised CLIP image features."""
    parameter = next(head.parameters())
    features = F.normalize(image_features.to(parameter.device, parameter.dtype), dim=-1)
    return head(features).squeeze(-1)


def clip_image_features(clip_model, pixel_values: torch.Tensor) -> torch.Tensor:
    output = clip_model.get_image_features(pixel_values=pixel_values)
    # transformers 5 returns a model output whose pooler_output is the projected embedding.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _ClipPreprocess:
    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image):
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


def aesthetic_options(clip_l_model: str | None = None, *, head: bool = False, clip: bool = False) -> dict:
    """What a result records about the LAION head and the CLIP ViT-L/14 it was scored with."""
    options = {"head": os.path.basename(AESTHETIC_URL)} if head else {}
    if clip:
        options["clip_model"] = clip_l_model or os.environ.get(CLIP_L_ENV) or CLIP_L_MODEL
    return options


def calc_aesthetic(
    images: str | os.PathLike,
    *,
    head: torch.nn.Module | None = None,
    clip_model=None,
    image_processor=None,
    aesthetic_weights: str | None = None,
    clip_l_model: str | None = None,
    verify_sha256: bool = True,
    batch_size: int = 32,
    num_workers: int = 0,
    allow_incomplete: bool = False,
    processes: Processes | None = None,
    options: dict | None = None,
) -> MetricResult:
    """Mean aesthetic score of an image folder / sample folder, over all processes. ``options``: what
    injected networks are, recorded with the result (networks loaded here describe themselves)."""
    started = time.time()
    processes = processes or Processes()
    collection = open_image_collection(images, allow_incomplete=allow_incomplete)
    options = dict(options or {})
    if head is None:
        head = load_aesthetic_head(aesthetic_weights, verify_sha256=verify_sha256)
        options.update(aesthetic_options(clip_l_model, head=True))
    if clip_model is None:
        clip_model, image_processor = load_clip_l(clip_l_model, processes.device)
        options.update(aesthetic_options(clip_l_model, clip=True))
    head = head.to(processes.device)
    totals = torch.zeros(2, dtype=torch.float64)  # [sum of scores, count]
    for _, pixels in iterate_batches(
        collection,
        processes.shard(collection.records),
        _ClipPreprocess(image_processor),
        batch_size=batch_size,
        num_workers=num_workers,
        progress=processes.is_main,
        description="aesthetic score",
    ):
        with torch.no_grad():
            features = clip_image_features(clip_model, torch.stack(pixels).to(processes.device))
            scores = aesthetic_scores(features, head).to(torch.float64).cpu()
        totals += torch.tensor([scores.sum().item(), len(scores)], dtype=torch.float64)
    return MetricResult.mean_over_processes("aesthetic", totals, processes, collection, options, allow_incomplete, started)
