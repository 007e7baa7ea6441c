"""FID (SPEC §5): Inception-v3 2015-12-05 pool features, float64 statistics, Fréchet distance.

Features come from torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF graph's weights and its
TensorFlow-1 bilinear resize to 299, so values match the EDM/StyleGAN3 code). Any callable
``uint8 [B, 3, H, W] -> float [B, D]`` can replace it (tests use a tiny one).
Reference statistics are EDM-format ``.npz`` files: ``mu`` (D,), ``sigma`` (D, D), float64.
"""
from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dice.errors import UserError, one_line
from evaluation.metrics.images import ImageCollection, Processes, ToUint8Tensor, iterate_batches, open_image_collection
from evaluation.metrics.weights import resolve_weights_file
from evaluation.record import MetricResult

INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_WEIGHTS_ENV = "DICE_INCEPTION_WEIGHTS"
FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


class InceptionFeatures(torch.nn.Module):
    """torch-fidelity's Inception-v3 ('inception-v3-compat'), returning the 2048-d pool features."""

    def __init__(self, weights_path: str):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        # torch-fidelity loads the file with weights_only=False; loading it once with
        # weights_only=True first proves it holds tensors only (no pickled code runs).
        torch.load(weights_path, map_location="cpu", weights_only=True)
        self.network = FeatureExtractorInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights_path
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)[0]


def load_inception(weights: str | None = None, device: str | torch.device = "cpu") -> InceptionFeatures:
    """The FID network. ``weights``: a local .pth or URL; else $DICE_INCEPTION_WEIGHTS, the cache, a download."""
    filename = os.path.basename(INCEPTION_WEIGHTS_URL)
    path = resolve_weights_file(
        weights,
        INCEPTION_WEIGHTS_ENV,
        INCEPTION_WEIGHTS_URL,
        missing_message=(
            f"FID needs the Inception-v3 weights {filename}: download {INCEPTION_WEIGHTS_URL} and pass "
            f"--inception_weights PATH (or set {INCEPTION_WEIGHTS_ENV}=PATH)."
        ),
    )
    return InceptionFeatures(path).to(device)


class FeatureStats:
    """Streaming float64 mean and covariance: running count, sum and XᵀX (as EDM computes them)."""

    def __init__(self, dim: int, device: str | torch.device = "cpu"):
        self.dim = dim
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> None:
        features = torch.as_tensor(features).to(self.sum.device, torch.float64)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"Expected features of shape [batch, {self.dim}], got {tuple(features.shape)}")
        self.count += features.shape[0]
        self.sum += features.sum(dim=0)
        self.sum_outer += features.T @ features

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Add another shard's statistics into these (same result as one pass over both shards)."""
        if other.dim != self.dim:
            raise ValueError(f"Cannot merge feature statistics of dimension {other.dim} into {self.dim}")
        self.count += other.count
        self.sum += other.sum.to(self.sum.device)
        self.sum_outer += other.sum_outer.to(self.sum.device)
        return self

    def reduce(self, processes: Processes) -> "FeatureStats":
        """Sum the statistics of all processes into every process's copy."""
        flat = torch.cat([torch.tensor([float(self.count)], dtype=torch.float64), self.sum.cpu(), self.sum_outer.cpu().flatten()])
        flat = processes.sum(flat)
        self.count = int(round(flat[0].item()))
        self.sum = flat[1 : 1 + self.dim].to(self.sum.device)
        self.sum_outer = flat[1 + self.dim :].view(self.dim, self.dim).to(self.sum.device)
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) in float64; sigma is the unbiased (n-1) covariance."""
        if self.count < 2:
            raise ValueError(f"FID needs at least 2 images to estimate a covariance; got {self.count}")
        mu = (self.sum / self.count).cpu().numpy()
        sigma = (self.sum_outer.cpu().numpy() - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, sigma


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix via eigh (tiny negative eigenvalues → 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1-mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½), all in float64.

    Tr (S1 S2)^½ = Σ √eig(√S1 S2 √S1): √S1 S2 √S1 is symmetric PSD and similar to S1 S2, so its
    eigenvalues are real and eigvalsh is stable. The usual ``scipy.linalg.sqrtm(S1 @ S2)`` works on a
    non-symmetric product, returns float32 for float32 input, and FID is a small difference of
    large traces, so that route was measured 2-50% off (and can go negative; see tests/test_fid.py);
    this one agrees with exact values to ~1e-7 and is faster at d=2048.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"Feature dimensions differ: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}"
        )
    sqrt_sigma1 = _psd_sqrt((sigma1 + sigma1.T) / 2)
    product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    trace_sqrt_product = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    mean_term = np.square(mu1 - mu2).sum()
    return float(mean_term + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product)


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """EDM-format reference statistics: an .npz with ``mu`` and ``sigma`` (float64)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


class StatsFileError(UserError, ValueError):
    """A statistics file that is not an FID statistics file, or that does not fit the other one."""


class StatsNotFound(UserError, FileNotFoundError):
    pass


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    if not Path(path).is_file():
        raise StatsNotFound(
            f"Reference statistics not found: {path}. Build them from the COCO val2017 images with "
            f"`python evaluation/fid.py ref --data val2017/ --dest {path} --center_crop_resize 512`."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise StatsFileError(f"{path} is not an FID statistics file (needs arrays 'mu' and 'sigma'; has {list(data)}). "
                                     "Build one with `evaluation/fid.py ref`")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        if isinstance(error, StatsFileError):
            raise
        raise StatsFileError(f"{path} is not a readable .npz file ({one_line(error)}). Build one with `evaluation/fid.py ref`") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise StatsFileError(
            f"{path} has mu of shape {mu.shape} and sigma of shape {sigma.shape}; FID statistics need mu (D,) and "
            "sigma (D, D). Build the file with `evaluation/fid.py ref`"
        )
    return mu, sigma


def check_same_dimension(dim_a: int, dim_b: int, a, b) -> None:
    if dim_a != dim_b:
        raise StatsFileError(
            f"{a} has {dim_a}-d features but {b} has {dim_b}-d. Compare statistics of the same network "
            "(--smoke_test statistics only with --smoke_test ones)"
        )


def _extract(feature_extractor: FeatureExtractor, images: list[torch.Tensor], device) -> list[torch.Tensor]:
    """Run the extractor on runs of same-sized images (raw datasets such as COCO mix sizes)."""
    outputs, start = [], 0
    while start < len(images):
        end = start + 1
        while end < len(images) and images[end].shape == images[start].shape:
            end += 1
        with torch.no_grad():
            outputs.append(feature_extractor(torch.stack(images[start:end]).to(device)))
        start = end
    return outputs


def compute_feature_stats(
    path: str | os.PathLike | ImageCollection,
    feature_extractor: FeatureExtractor,
    *,
    center_crop_resize: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    allow_incomplete: bool = False,
    processes: Processes | None = None,
) -> tuple[FeatureStats, ImageCollection]:
    """Feature statistics of an image folder / zip / sample folder, summed over all processes."""
    processes = processes or Processes()
    collection = path if isinstance(path, ImageCollection) else open_image_collection(path, allow_incomplete=allow_incomplete)
    stats = None
    for _, images in iterate_batches(
        collection,
        processes.shard(collection.records),
        ToUint8Tensor(center_crop_resize),
        batch_size=batch_size,
        num_workers=num_workers,
        progress=processes.is_main,
        description="FID features",
    ):
        for features in _extract(feature_extractor, images, processes.device):
            if stats is None:
                stats = FeatureStats(features.shape[1], device=features.device)
            stats.update(features)
    # A process with an empty shard (fewer images than processes) still joins the reduction.
    dim = int(processes.max(torch.tensor([stats.dim if stats else 0], dtype=torch.float64)).item())
    if stats is None:
        stats = FeatureStats(dim, device=processes.device)
    return stats.reduce(processes), collection


def _describe(feature_extractor: FeatureExtractor) -> str:
    if isinstance(feature_extractor, InceptionFeatures):
        return "inception-v3-compat/2048"
    return getattr(feature_extractor, "__name__", type(feature_extractor).__name__)


def calc_fid(
    images: str | os.PathLike,
    ref: str | os.PathLike,
    *,
    feature_extractor: FeatureExtractor | None = None,
    inception_weights: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    allow_incomplete: bool = False,
    processes: Processes | None = None,
) -> MetricResult:
    """FID of an image folder against reference statistics (every process returns the same result)."""
    started = time.time()
    processes = processes or Processes()
    ref_mu, ref_sigma = load_stats(ref)  # fail before the slow part
    collection = open_image_collection(images, allow_incomplete=allow_incomplete)
    if feature_extractor is None:
        feature_extractor = load_inception(inception_weights, processes.device)
    stats, collection = compute_feature_stats(
        collection,
        feature_extractor,
        batch_size=batch_size,
        num_workers=num_workers,
        allow_incomplete=allow_incomplete,
        processes=processes,
    )
    check_same_dimension(stats.dim, ref_mu.shape[0], f"the images of {images}", ref)
    mu, sigma = stats.mean_cov()
    return MetricResult(
        metric="fid",
        value=frechet_distance(mu, sigma, ref_mu, ref_sigma),
        count=stats.count,
        images=collection.path,
        sampling_options=collection.sampling_options,
        options={
            "ref": str(ref),
            "feature_extractor": _describe(feature_extractor),
            "num_processes": processes.world_size,
            "allow_incomplete": allow_incomplete,
        },
        seconds=time.time() - started,
    )


def build_reference(
    data: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    center_crop_resize: int | None = None,
    feature_extractor: FeatureExtractor | None = None,
    inception_weights: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    processes: Processes | None = None,
) -> int:
    """Write reference statistics of an image folder / zip to ``dest`` (main process); return the count."""
    processes = processes or Processes()
    collection = open_image_collection(data)  # a wrong folder fails before the network loads
    if feature_extractor is None:
        feature_extractor = load_inception(inception_weights, processes.device)
    stats, _ = compute_feature_stats(
        collection,
        feature_extractor,
        center_crop_resize=center_crop_resize,
        batch_size=batch_size,
        num_workers=num_workers,
        processes=processes,
    )
    mu, sigma = stats.mean_cov()
    if processes.is_main:
        save_stats(dest, mu, sigma)
    return stats.count


def fid_from_files(stats_a: str | os.PathLike, stats_b: str | os.PathLike) -> float:
    """FID between two statistics files."""
    (mu_a, sigma_a), (mu_b, sigma_b) = load_stats(stats_a), load_stats(stats_b)
    check_same_dimension(mu_a.shape[0], mu_b.shape[0], stats_a, stats_b)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


