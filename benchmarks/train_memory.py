"""Peak memory (and time) of one DICE training update on a full-size random-weight model, on any device.

One update as dice.training runs it: ``dice.distillation.distillation_step`` (the CFG teacher without gradients at
twice the batch, the student with gradients through the frozen denoiser to the sharpener) + backward + AdamW, the
frozen model in ``--dtype``, the sharpener in fp32, latents as the latent cache gives them (random, the right shape),
prompts encoded by the adapter. ``--gradient_checkpointing`` recomputes the denoiser's activations in the backward.

    python benchmarks/train_memory.py --setup sd3.5-medium-full --device cpu --batch 1 --resolution 512 --gradient_checkpointing

Memory: on a GPU ``max_memory_allocated`` / reserved over the update; on the CPU the peak resident set of the
process during the update (Linux VmHWM, reset before it through /proc/self/clear_refs), and the resident set before
it (the loaded model). Measured, never estimated: a batch that does not fit is an out-of-memory error.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resident_gib(field: str) -> float:
    """VmRSS / VmHWM of this process, GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 2**20, 3)
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_cpu_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.common_arguments(p)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="frozen model dtype")
    p.add_argument("--gradient_checkpointing", action="store_true", help="recompute the denoiser's activations in the backward")
    p.add_argument("--updates", type=int, default=1, help="updates measured (the first one included: AdamW's state appears there)")
    args = p.parse_args(argv)
    batch, resolution = args.batch or 1, args.resolution or 512
    device = common.pick_device(args.device)
    common.set_threads(args.threads, device)

    from dice.distillation import distillation_step
    from dice.methods.dice import DiceMethod
    from dice.negatives import NegativePrompts
    from dice.training import NegativeBank

    t0 = time.perf_counter()
    dtype = DTYPES[args.dtype]
    family = common.FAMILIES[args.setup]
    adapter = common.build_adapter(args.setup, device, dtype, seed=args.seed,
                                   **({"text_encoder_dtype": dtype} if family in ("pixart", "sd3") else {}))
    method = DiceMethod()
    torch.manual_seed(args.seed)
    sharpener = method.build(adapter)
    if args.gradient_checkpointing:
        method.enable_gradient_checkpointing(adapter, sharpener)
    optimizer = torch.optim.AdamW(sharpener.parameters(), lr=2e-4)
    negatives = NegativeBank(adapter, NegativePrompts())
    build_seconds = time.perf_counter() - t0
    size = resolution // adapter.vae_scale_factor
    prompts = common.captions(batch)
    # What accelerate's mixed precision does around the student: autocast to the frozen model's dtype.
    autocast = contextlib.nullcontext if dtype == torch.float32 else (lambda: torch.autocast(device.type, dtype=dtype))

    loaded = resident_gib("VmRSS") if device.type == "cpu" else None
    seconds, peaks = [], []
    for update in range(args.updates):
        latents = torch.randn(batch, adapter.latent_channels, size, size, generator=torch.Generator().manual_seed(update))
        common.reset_peak_memory(device)
        if device.type == "cpu":
            reset_cpu_peak()
        start = time.perf_counter()
        loss = distillation_step(adapter, method, sharpener, latents.to(device, dtype), prompts, None, negatives,
                                 torch.Generator().manual_seed(update), autocast=autocast)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        common.sync(device)
        seconds.append(round(time.perf_counter() - start, 3))
        peaks.append({"peak_rss_gib": resident_gib("VmHWM")} if device.type == "cpu" else common.peak_memory(device))

    result = {
        "benchmark": "train_memory",
        "setup": args.setup,
        "what": "one DICE update: distillation_step (CFG teacher at 2x batch without gradients, student with gradients "
                "through the frozen denoiser) + backward + AdamW; frozen model in model_dtype, sharpener fp32",
        **common.environment(device),
        "model_dtype": args.dtype,
        "batch": batch,
        "resolution": resolution,
        "latent_shape": [adapter.latent_channels, size, size],
        "text_tokens": adapter.num_tokens,
        "gradient_checkpointing": args.gradient_checkpointing,
        "seconds_per_update": seconds,
        "memory_per_update": peaks,
        "resident_before_updates_gib": loaded,
        "parameters": {**common.parameter_counts(adapter), "sharpener": sum(q.numel() for q in sharpener.parameters())},
        "build_seconds": round(build_seconds, 2),
        "notes": [
            "latents are random tensors of the VAE latents' shape (training reads them from the latent cache); the "
            "prompts are encoded by the adapter every update, as in training",
            "on the CPU, peak_rss_gib is the process's peak resident set during the update (VmHWM after resetting it); "
            "resident_before_updates_gib is the loaded model",
            "random weights with the real architecture: memory and speed only",
        ],
    }
    if family == "sd3":
        result["notes"].append(
            "SD3.5 Medium without T5-XXL (text_encoder_3=None, the stock pipeline's zeros in T5's 256 tokens): the "
            "transformer and the sharpener see the real 333 x 4096 embeddings; a run that encodes prompts with T5-XXL "
            "holds its 4.76B parameters besides (9.5 GB in bf16)")
    if device.type == "cpu":
        result["notes"].append(common.CPU_NOTE)
    tag = args.tag or f"b{batch}-{resolution}px-{args.dtype}{'-gc' if args.gradient_checkpointing else ''}"
    common.write_result("train_memory", args.setup, device, result, args.out, tag)
    return result


if __name__ == "__main__":
    main()
