"""Speed options of training: losses read back once per log window, torch.compile and channels-last
of the frozen denoiser. (How much they buy is measured in benchmarks/, never here.)"""
from __future__ import annotations

import json

import pytest
import torch

from dice.adapters import Conditioning, adapter_class
from dice.adapters.base import Adapter
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


@pytest.mark.slow  # TorchDynamo tracing: ~10 s on 2 cores for an option used on GPUs
def test_compiled_channels_last_denoiser_trains(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    """--compile / --channels_last reach the denoiser; a compiled denoiser gives the eager results.

    The TorchDynamo graphs run with the "eager" backend here: Inductor's code generation takes
    minutes on this CPU even for the tiny UNet."""
    eager = adapter_class("sd15").from_pretrained(str(tiny_model("sd15")))
    compiled = adapter_class("sd15").from_pretrained(str(tiny_model("sd15")))
    assert compiled.compile_denoiser("regional", backend="eager") == 12  # 8 ResnetBlock2D + 4 BasicTransformerBlock
    x_t, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900])
    outputs = []
    for adapter in (eager, compiled):
        cond = adapter.encode_prompts(["a red ball", "a cat"])
        embeds = cond.embeds.clone().requires_grad_(True)
        eps = adapter.predict_noise(x_t, t, Conditioning(embeds))
        eps.square().mean().backward()
        outputs.append((eps.detach(), embeds.grad))
    assert all(torch.equal(a, b) for a, b in zip(*outputs))

    calls = []
    compile_denoiser = Adapter.compile_denoiser
    def compile_eagerly(self, how):
        calls.append((how, self.denoiser.conv_in.weight.is_contiguous(memory_format=torch.channels_last)))
        return compile_denoiser(self, how, backend="eager")

    monkeypatch.setattr(Adapter, "compile_denoiser", compile_eagerly)
    from dice.training import main

    run = main("sd15", ["--pretrained_model_name_or_path", str(tiny_model("sd15")), "--train_data_dir", str(tiny_dataset),
                        "--preset", "demo", "--train_batch_size", "2", "--resolution", "32", "--max_train_steps", "2",
                        "--checkpointing_steps", "2", "--validation_prompts", "--dataloader_num_workers", "0",
                        "--mixed_precision", "no", "--output_dir", str(tmp_path), "--compile", "--channels_last"])
    assert calls == [("full", True)]  # the bare flag compiles the whole model, already channels-last
    log = (run / "log.txt").read_text()
    assert "torch.compile (full): 1 module(s)" in log and "step 2/2" in log
    options = json.loads((run / "training_options.json").read_text())
    assert options["compile"] == "full" and options["channels_last"] is True
