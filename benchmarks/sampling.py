"""Sampling throughput of DICE vs CFG vs unguided, and the sharpener's share of a DICE generation.

All three modes go through ``dice.sampling.generate`` with DPM-Solver++ (2M), the same steps, batch
and resolution:

* ``unguided``: cfg_scale 1, no sharpener: 1 UNet evaluation per step.
* ``cfg``: cfg_scale 5: 2 evaluations per step (the pipeline batches them into one call of 2x batch).
* ``dice``: cfg_scale 1 + a sharpener (random weights; 1.84M / 3.15M / 5.25M parameters for SD1.5 / SDXL /
  PixArt-alpha): 1 evaluation per step.

Each mode is timed with ``output_type="latent"`` (denoising only) and ``"pil"`` (VAE decode and
conversion included). The sharpener's share: ``adapter.sharpen`` timed on its own (device synchronised
around each call), and text encoding + sharpening, against one whole DICE generation.

    python benchmarks/sampling.py --setup tiny            # CPU, tiny SD1.5 pipeline, 32 px, batch 8
    python benchmarks/sampling.py --setup sd15-full       # GPU, SD1.5 architecture, 512 px, batch 8, fp16
    python benchmarks/sampling.py --setup sdxl-full       # GPU, SDXL, 1024 px
    python benchmarks/sampling.py --setup pixart-full     # GPU, PixArt-alpha 512 (T5-XXL encodes every prompt)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402
from dice.methods.dice import sharpen

DEFAULTS = {
    "tiny": dict(batch=8, resolution=32, dtype="fp32", warmup=1, repeats=3, device="cpu"),
    "sd15-full": dict(batch=8, resolution=512, dtype="fp16", warmup=2, repeats=5, device=None),
    "sdxl-full": dict(batch=8, resolution=1024, dtype="fp16", warmup=2, repeats=5, device=None),
    "pixart-full": dict(batch=8, resolution=512, dtype="fp16", warmup=2, repeats=5, device=None),
    "sd3.5-medium-full": dict(batch=8, resolution=1024, dtype="bf16", warmup=2, repeats=5, device=None),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.common_arguments(p)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="frozen model dtype (default: the setup's; the sharpener stays fp32 as in sample.py)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (the family's sampler: DPM-Solver++, SD3's flow Euler)")
    p.add_argument("--guidance_scale", type=float, default=5.0, help="w of the CFG mode")
    p.add_argument("--warmup", type=int, default=None, help="untimed generations per mode and output type")
    p.add_argument("--repeats", type=int, default=None, help="timed generations per mode and output type")
    p.add_argument("--sharpen_repeats", type=int, default=50, help="timed sharpener / text-encoding calls")
    p.add_argument("--output_types", nargs="+", default=["latent", "pil"], choices=["latent", "pil"])
    p.add_argument("--text_embedding_cache", action="store_true",
                   help="PixArt-alpha: encode the prompts once into dice's text-embedding cache and unload T5 before timing "
                   "(T5-XXL is then left out of every generation; for CPUs, where it takes minutes)")
    args = p.parse_args(argv)
    d = DEFAULTS[args.setup]
    batch, resolution = args.batch or d["batch"], args.resolution or d["resolution"]
    dtype_name = args.dtype or d["dtype"]
    warmup = d["warmup"] if args.warmup is None else args.warmup
    repeats = args.repeats or d["repeats"]
    device = common.pick_device(args.device or d["device"])
    common.set_threads(args.threads, device)

    from dice.sampling import generate, use_scheduler
    from dice.sharpener import Sharpener

    family = common.FAMILIES[args.setup]
    if args.text_embedding_cache and family != "pixart":
        p.error("--text_embedding_cache is PixArt-alpha's (pixart-full)")
    t0 = time.perf_counter()
    adapter = common.build_adapter(args.setup, device, DTYPES[dtype_name], seed=args.seed, **(
        {"text_encoder_dtype": DTYPES[dtype_name]} if family in ("pixart", "sd3") else {}))
    use_scheduler(adapter)  # the family's: DPM-Solver++ (2M) for SD1.5 / SDXL / PixArt, SD3's own flow-matching Euler
    torch.manual_seed(args.seed)
    sharpener = Sharpener(adapter.text_dim).to(device).eval().requires_grad_(False)  # as load_sharpener leaves it
    build_seconds = time.perf_counter() - t0
    parameters = common.parameter_counts(adapter)  # before PixArt's T5 is unloaded

    prompts = common.captions(batch)
    if args.text_embedding_cache:
        import tempfile

        adapter.text_cache_dir = tempfile.mkdtemp(prefix="dice-t5-cache-")
        adapter.prepare_text_cache(prompts, [""])
    seeds = list(range(batch))
    modes = {"unguided": (1.0, None), f"cfg_w{args.guidance_scale:g}": (args.guidance_scale, None), "dice": (1.0, sharpener)}

    common.reset_peak_memory(device)
    generation = {}
    for output_type in args.output_types:
        generation[output_type] = {}
        runs = {
            mode: (lambda cfg_scale=cfg_scale, sharp=sharp, output_type=output_type: generate(
                adapter, prompts, seeds, sharpener=sharp, cfg_scale=cfg_scale, steps=args.steps,
                resolution=resolution, output_type=output_type))
            for mode, (cfg_scale, sharp) in modes.items()
        }
        for _ in range(warmup):
            for run in runs.values():
                run()
        # Modes interleaved (u, c, d, u, c, d, ...): a drift in machine load hits all of them alike.
        seconds = {mode: [] for mode in modes}
        for _ in range(repeats):
            for mode, run in runs.items():
                seconds[mode].append(common.timed(run, device)[1])
        for mode, (cfg_scale, sharp) in modes.items():
            stats = common.summarize(seconds[mode])
            generation[output_type][mode] = {
                "cfg_scale": cfg_scale, "sharpener": sharp is not None,
                "unet_evaluations_per_step": 2 if cfg_scale > 1 else 1,
                "images_per_second": round(batch / stats["median_s"], 4),
                "seconds_per_generation": stats,
            }
    cfg_mode = f"cfg_w{args.guidance_scale:g}"
    ratios = {
        output_type: {
            "dice_over_cfg_throughput": round(g["dice"]["images_per_second"] / g[cfg_mode]["images_per_second"], 4),
            "dice_over_unguided_throughput": round(g["dice"]["images_per_second"] / g["unguided"]["images_per_second"], 4),
            "unguided_over_cfg_throughput": round(g["unguided"]["images_per_second"] / g[cfg_mode]["images_per_second"], 4),
        }
        for output_type, g in generation.items()
    }

    # The sharpener on its own, and text encoding + sharpening (what DICE adds before the pipeline runs).
    def encode():
        return adapter.encode_prompts(prompts), adapter.encode_negative([""] * batch)

    def sharpen_once(cond, uncond):
        return sharpen(adapter, sharpener, cond.to(dtype=torch.float32), uncond.to(dtype=torch.float32))

    with torch.no_grad():
        cond, uncond = encode()
        for _ in range(5):
            encode()
            sharpen_once(cond, uncond)
        sharpen_s = [common.timed(lambda: sharpen_once(cond, uncond), device)[1] for _ in range(args.sharpen_repeats)]
        encode_s = [common.timed(encode, device)[1] for _ in range(args.sharpen_repeats)]
        both_s = [common.timed(lambda: sharpen_once(*encode()), device)[1] for _ in range(args.sharpen_repeats)]
    def brief(seconds):
        return {k: v for k, v in common.summarize(seconds).items() if k != "all_s"} | {"n": len(seconds)}

    reference = args.output_types[0]
    dice_gen = generation[reference]["dice"]["seconds_per_generation"]["median_s"]
    share = {
        "reference_generation": f"dice, output_type={reference}, {args.steps} steps, batch {batch}",
        "dice_generation_median_s": dice_gen,
        "sharpen_call": brief(sharpen_s),
        "encode_prompts_and_negative": brief(encode_s),
        "encode_and_sharpen": brief(both_s),
        "sharpen_share_of_generation": round(statistics.median(sharpen_s) / dice_gen, 6),
        "encode_and_sharpen_share_of_generation": round(statistics.median(both_s) / dice_gen, 6),
    }

    result = {
        "benchmark": "sampling",
        "setup": args.setup,
        "what": "dice.sampling.generate: unguided vs CFG vs DICE (cfg 1 + sharpener), the family's sampler, same steps/batch/resolution",
        **common.environment(device),
        "model_dtype": dtype_name,
        "text_embeddings": "dice's text-embedding cache (T5 unloaded, not timed)" if args.text_embedding_cache else "encoded live in every generation",
        "sharpener_dtype": "float32",
        "batch": batch,
        "resolution": resolution,
        "steps": args.steps,
        "scheduler": type(adapter.pipe.scheduler).__name__,
        "warmup_generations": warmup,
        "timed_generations": repeats,
        "generation": generation,
        "ratios": ratios,
        "sharpener_share": share,
        **common.peak_memory(device),
        "parameters": {**parameters, "sharpener": sum(p.numel() for p in sharpener.parameters())},
        "build_seconds": round(build_seconds, 2),
        "notes": [
            "images_per_second = batch / median seconds per generation (device synchronised around each)",
            "a generation includes prompt + negative encoding, (sharpening), initial noise, the denoising loop, and "
            "for output_type=pil the VAE decode and PIL conversion",
            "CFG runs the conditional and unconditional halves as one UNet call of twice the batch, so its cost is "
            "2x the UNet work but may be under 2x the time when batch alone does not fill the device",
            "random weights with the real architecture: speed only",
        ],
    }
    if args.setup == "tiny":
        result["notes"].append(
            "tiny setup: the sharpener (inner width 512) is far larger than the tiny UNet, so the DICE/CFG ratio and "
            "the sharpener share here do not stand for SD1.5; they check that the benchmark runs")
    if family == "sd3":
        result["text_embeddings"] = "CLIP-L and CLIP-G encoded live; T5-XXL absent (the stock pipeline's zeros in its 256 tokens)"
        result["notes"].append(
            "SD3.5 Medium without T5-XXL (text_encoder_3=None): the transformer and the sharpener see the real 77 + 256 "
            "tokens x 4096; T5's encoding of the prompt (the same work in every mode) is left out of every generation")
    if device.type == "cpu":
        result["notes"].append(common.CPU_NOTE)
    common.write_result("sampling", args.setup, device, result, args.out, args.tag)
    return result


if __name__ == "__main__":
    main()
