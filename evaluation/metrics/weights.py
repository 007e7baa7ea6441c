"""Finding metric network weights: an explicit path, an environment variable, a cache, or a download.

Offline (``HF_HUB_OFFLINE=1``) nothing is downloaded; a missing file is one clear error that names
what to download and which option / environment variable points at it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from dice.errors import UserError, one_line


class MissingWeightsError(UserError, RuntimeError):
    """Metric weights are neither given, cached, nor downloadable."""


class WrongWeightsError(UserError, ValueError):
    """A metric weights file is not the expected one."""


def is_offline() -> bool:
    # Read at call time (not huggingface_hub.constants, frozen at import) so tests can toggle it.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def weights_cache_dir() -> Path:
    """Where downloaded metric weights live: torch hub's checkpoint folder, as torch-fidelity uses."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights_file(
    explicit: str | None,
    env_var: str,
    url: str,
    missing_message: str,
) -> str:
    """Return a local file for a metric's weights.

    Order: ``explicit`` (a path or an http(s) URL), then ``$env_var``, then the cache, then
    downloading ``url`` into the cache (unless offline). ``missing_message`` is the whole error
    text when nothing works.
    """
    source = explicit or os.environ.get(env_var) or None
    if source and not source.startswith(("http://", "https://")):
        if not Path(source).is_file():
            raise MissingWeightsError(f"Weights file not found: {source}. {missing_message}")
        return str(source)
    url = source or url
    cached = weights_cache_dir() / os.path.basename(url)
    if cached.is_file():
        return str(cached)
    if is_offline():
        raise MissingWeightsError(missing_message)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), progress=True)
    except Exception as error:  # no network, 404, ...: the fix is the same, so say it once
        raise MissingWeightsError(f"{missing_message} (Download of {url} failed: {one_line(error)})") from error
    return str(cached)
