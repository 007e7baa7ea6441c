"""Throughput and peak memory of one DICE training step, through the real training code path.

One step = what ``dice.training.train`` does per update with gradient accumulation 1: VAE-encode the
batch, CLIP-encode the captions, draw ``u`` from the negative bank (the empty prompt), the CFG
teacher (w=5, no gradients, conditional and unconditional halves in one UNet call), the sharpened
student (gradients through the frozen UNet into the sharpener), ``accelerator.backward``, AdamW step,
``zero_grad`` and ``loss.item()``. It calls ``dice.training._micro_step`` itself, under an
``accelerate.Accelerator`` that prepared the sharpener and the optimizer, so the figure is our loop's.

    python benchmarks/train_step.py --setup tiny                 # CPU, batch 16, 32 px, fp32
    python benchmarks/train_step.py --setup sd15-full            # GPU, batch 16, 512 px, bf16

Images are random pixels and captions come from a fixed list: the data loader is left out (the real
loop overlaps it with the GPU work in worker processes).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402

DEFAULTS = {
    "tiny": dict(batch=16, resolution=32, mixed_precision="no", warmup=3, steps=10, device="cpu"),
    "sd15-full": dict(batch=16, resolution=512, mixed_precision="bf16", warmup=3, steps=10, device=None),
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.common_arguments(p)
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="default: the setup's (tiny: no, sd15-full: bf16)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    p.add_argument("--steps", type=int, default=None, help="timed steps")
    p.add_argument("--gradient_checkpointing", action="store_true", help="as the training option of the same name")
    args = p.parse_args(argv)
    d = DEFAULTS[args.setup]
    batch_size, resolution = args.batch or d["batch"], args.resolution or d["resolution"]
    mixed_precision = args.mixed_precision or d["mixed_precision"]
    warmup = d["warmup"] if args.warmup is None else args.warmup
    steps = args.steps or d["steps"]
    device = common.pick_device(args.device or d["device"])
    common.set_threads(args.threads, device)

    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from dice.negatives import NegativePrompts
    from dice.sharpener import Sharpener
    from dice.training import NegativeBank, _micro_step

    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu")
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    t0 = time.perf_counter()
    adapter = common.build_adapter(args.setup, device, weight_dtype, seed=args.seed)
    if args.gradient_checkpointing:
        adapter.denoiser.enable_gradient_checkpointing()
    build_seconds = time.perf_counter() - t0

    # What dice.training.train builds, minus data, checkpoints and the LR scheduler (constant LR).
    train_args = SimpleNamespace(seed=args.seed, guidance_scale=5.0, shared_timestep=False, loss_type="mse",
                                 loss_reduction="mean")
    set_seed(args.seed)
    sharpener = Sharpener(adapter.text_dim)
    optimizer = torch.optim.AdamW(sharpener.parameters(), lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    sharpener, optimizer = accelerator.prepare(sharpener, optimizer)
    negative_bank = NegativeBank(adapter, NegativePrompts())

    gen = torch.Generator().manual_seed(args.seed)
    batch = {
        "pixels": torch.rand(batch_size, 3, resolution, resolution, generator=gen) * 2 - 1,
        "captions": common.captions(batch_size),
        "sizes": torch.tensor([[resolution, resolution, 0, 0]] * batch_size),
        "skipped": 0,
    }

    def one_step(step: int) -> float:
        with accelerator.accumulate(sharpener):
            loss = _micro_step(adapter, sharpener, negative_bank, batch, train_args, step, 0, 0, accelerator)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()  # the loop reads the loss every step (a device sync)

    common.reset_peak_memory(device)
    losses = []
    for step in range(warmup):
        losses.append(one_step(step))
    seconds = []
    for step in range(warmup, warmup + steps):
        loss, dt = common.timed(lambda: one_step(step), device)
        losses.append(loss)
        seconds.append(dt)

    stats = common.summarize(seconds)
    result = {
        "benchmark": "train_step",
        "setup": args.setup,
        "what": "one DICE training update (VAE encode + CLIP encode + CFG teacher w=5 without grad + sharpened "
                "student with grad through the frozen UNet + backward + AdamW step), via dice.training._micro_step "
                "under accelerate",
        **common.environment(device),
        "mixed_precision": accelerator.mixed_precision,
        "frozen_model_dtype": str(weight_dtype).replace("torch.", ""),
        "batch": batch_size,
        "resolution": resolution,
        "gradient_checkpointing": args.gradient_checkpointing,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "images_per_second": round(batch_size / stats["median_s"], 3),
        "images_per_second_mean": round(batch_size * steps / sum(seconds), 3),
        "seconds_per_step": stats,
        **common.peak_memory(device),
        "parameters": {**common.parameter_counts(adapter),
                       "sharpener": sum(p.numel() for p in accelerator.unwrap_model(sharpener).parameters())},
        "build_seconds": round(build_seconds, 2),
        "losses_finite": bool(all(torch.isfinite(torch.tensor(losses)))),
        "notes": [
            "images_per_second = batch / median seconds per timed step; peak memory covers warm-up and timed steps",
            "random weights with the real architecture: speed and memory only, no quality",
            "input pipeline (image decoding) excluded: random pixels, fixed captions",
        ],
    }
    if device.type == "cpu":
        result["notes"].append(common.CPU_NOTE)
        result["notes"].append("peak_rss_gib is the process's peak resident set, model building included")
    common.write_result("train_step", args.setup, device, result, args.out, args.tag)
    return result


if __name__ == "__main__":
    main()
