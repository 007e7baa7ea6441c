"""Training statistics read back from the device once per log window, not once per update.

Reading a loss with ``.item()`` makes the host wait until the GPU has finished the update, so the
next update cannot be queued while this one runs and the GPU idles in between. The loop hands each
update's loss over as a device tensor; :meth:`StepLog.flush` (every ``--log_every`` updates and at
each checkpoint) reads the whole window back in one transfer and writes ``stats.jsonl``: one line
per update (``step``, ``loss``, ``lr``); the window's last line adds ``seconds`` since the start and
``images_per_second`` averaged over the window (only a window's end is a moment the host knows the
device has caught up).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch


class StepLog:
    """Collects (step, loss, lr, images) per update; ``path=None`` (processes other than the main
    one) keeps nothing and never touches the device."""

    def __init__(self, path: str | Path | None):
        self.file = open(path, "a") if path is not None else None  # noqa: SIM115 - closed by close()
        self.pending: list[tuple[int, torch.Tensor, float]] = []
        self.start = self.window_start = time.time()
        self.window_images = 0

    def add(self, step: int, loss: torch.Tensor, lr: float, images: int) -> None:
        """Record an update; ``loss`` stays where it is (no host synchronisation)."""
        if self.file is not None:
            self.pending.append((step, loss.detach().reshape(()), lr))
            self.window_images += images

    def flush(self) -> list[dict]:
        """Read the window's losses back (one transfer), write their lines; returns the records."""
        if not self.pending:
            return []
        losses = torch.stack([loss.float() for _, loss, _ in self.pending]).tolist()
        now = time.time()
        records = [{"step": step, "loss": value, "lr": lr} for (step, _, lr), value in zip(self.pending, losses)]
        records[-1].update(seconds=round(now - self.start, 3),
                           images_per_second=round(self.window_images / max(now - self.window_start, 1e-9), 3))
        self.file.write("".join(json.dumps(record) + "\n" for record in records))
        self.file.flush()
        self.pending, self.window_start, self.window_images = [], now, 0
        return records

    def close(self) -> None:
        if self.file is not None:
            try:
                self.flush()  # after a crash too: the updates that finished keep their lines
            finally:
                self.file.close()
                self.file = None
