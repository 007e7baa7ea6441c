"""Speed options of training: losses read back once per log window. (How much they buy is measured
in benchmarks/, never here.)"""
from __future__ import annotations

import json

import pytest
import torch

from dice.step_log import StepLog


def test_step_log_reads_losses_once_per_window(tmp_path, monkeypatch):
    log = StepLog(tmp_path / "stats.jsonl")
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("a loss was read at an update"))
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(self.shape) or tolist(self))
    for step in (1, 2, 3):
        log.add(step, torch.tensor(step / 10), lr=1e-4, images=4)
    assert reads == [] and not (tmp_path / "stats.jsonl").read_text()  # nothing read or written yet
    records = log.flush()
    assert reads == [(3,)]  # one transfer for the window
    log.add(4, torch.tensor([0.5]), lr=5e-5, images=4)
    log.close()  # flushes what is pending
    lines = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert lines[:3] == records and [x["step"] for x in lines] == [1, 2, 3, 4]
    assert [x["loss"] for x in lines] == pytest.approx([0.1, 0.2, 0.3, 0.5]) and lines[3]["lr"] == 5e-5
    assert ["images_per_second" in x for x in lines] == [False, False, True, True]  # last line of each window
    assert lines[2]["images_per_second"] > 0 and lines[3]["seconds"] >= lines[2]["seconds"]
    quiet = StepLog(None)  # other processes: keeps nothing
    quiet.add(1, torch.tensor(1.0), 1e-4, 4)
    assert quiet.flush() == [] and quiet.pending == []
