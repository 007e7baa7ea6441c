"""Shared fixtures: tiny pipelines are built once per test session and saved like real models."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never contact the hub
# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads
# spinning against other processes made each op 10-40x slower (measured). Override: DICE_TEST_THREADS.
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("DICE_TEST_THREADS", "1")))
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@pytest.fixture(autouse=True)
def _restore_dice_logger():
    """An in-process training run points the "dice" logger at that test's captured stdout; give the
    next test the logger as it was."""
    import logging

    dice_logger = logging.getLogger("dice")
    saved = (list(dice_logger.handlers), dice_logger.propagate, dice_logger.level)
    yield
    dice_logger.handlers[:] = saved[0]
    dice_logger.propagate, dice_logger.level = saved[1], saved[2]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model("sd15")`` -> path of a saved tiny diffusers pipeline of that family."""
    from dice.testkit.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny_models")
    cache: dict[str, Path] = {}

    def get(family: str = "sd15") -> Path:
        if family not in cache:
            cache[family] = save_tiny_pipeline(root / family, family)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small captioned image folder (imagefolder layout)."""
    from dice.testkit.data import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", num_images=24, size=40)


def free_port() -> str:
    """A free TCP port for one multi-process launch: back-to-back launches on the default port
    (29500) can collide while the previous rendezvous socket is still closing."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])
