"""Throughput, peak memory and MFU of a DICE training update: ours against the authors' step.

Several steps are timed in one run, on the same frozen model, batch and resolution (``--step``):

* ``authors``: the operations and precision of the authors' training loop (benchmarks/authors_step.py):
  JPEGs decoded in the main process, VAE ``latent_dist.sample()`` and the text encoder at every step,
  fp16 autocast over bf16 weights, three ``.item()`` per step.
* ``ours``: dice.training's update (``_micro_step`` + backward + AdamW under accelerate) with latents
  from ``--latent_cache`` (built here, timed) and losses kept on the device (``StepLog``).
* ``ours-live``: ours with the VAE encoding decoded JPEGs at every step (no latent cache).
* ``ours-sync``: ours reading the loss with ``.item()`` after every update (the loop before issue 13).

``--compile``, ``--channels_last`` and ``--gradient_checkpointing`` apply to ours only (the authors'
step runs the same modules eagerly, channels-first, without checkpointing). Steps are timed in
blocks of ``--block`` consecutive updates with the device synchronised only around a block, blocks of
the different steps interleaved (a drift in machine load hits all alike). The FLOPs of one update of
each step are counted with torch.utils.flop_counter.FlopCounterMode on an untimed update.

    python benchmarks/train_step.py --setup tiny                 # CPU, batch 16, 32 px, fp32
    python benchmarks/train_step.py --setup sd15-full            # GPU, batch 16, 512 px, bf16
    python benchmarks/train_step.py --setup sd15-full --compile --channels_last --tag compile-cl
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402

STEPS = ("authors", "ours", "ours-live", "ours-sync")
DEFAULTS = {
    "tiny": dict(batch=16, resolution=32, mixed_precision="no", device="cpu"),
    "sd15-full": dict(batch=16, resolution=512, mixed_precision="bf16", device=None),
    "sdxl-full": dict(batch=8, resolution=1024, mixed_precision="bf16", device=None),
    "pixart-full": dict(batch=16, resolution=512, mixed_precision="bf16", device=None),
}


class OursStep:
    """One update of dice.training (gradient accumulation 1), its loss left on the device."""

    def __init__(self, name, adapter, accelerator, sharpener, optimizer, records, resolution, batch_size, seed,
                 num_workers, latent_cache, stats_path):
        from dice.data import make_loader
        from dice.step_log import StepLog
        from dice.negatives import NegativePrompts
        from dice.training import NegativeBank

        self.name, self.adapter, self.accelerator = name, adapter, accelerator
        self.sharpener, self.optimizer = sharpener, optimizer
        self.loader = iter(make_loader(records, resolution, batch_size, 0, 1, seed, num_workers=num_workers,
                                       latent_cache=latent_cache))
        self.negative_bank = NegativeBank(adapter, NegativePrompts())  # u = the empty prompt
        # The paper preset: one timestep per sample, squared error, mean over elements.
        self.args = SimpleNamespace(seed=seed, guidance_scale=5.0, shared_timestep=False, loss_type="mse",
                                    loss_reduction="mean")
        self.step_log = StepLog(stats_path)
        self.read_every_step = name == "ours-sync"
        self.updates = 0

    def __call__(self):
        from dice.data import step_generator
        from dice.distillation import distillation_step
        from dice.methods.dice import DiceMethod
        from dice.runtime import to_device

        batch = next(self.loader)
        device = self.accelerator.device
        latents = (to_device(batch["latents"], device, self.adapter.dtype) if "latents" in batch
                   else self.adapter.encode_images(batch["pixels"]))
        with self.accelerator.accumulate(self.sharpener):
            loss = distillation_step(self.adapter, DiceMethod(self.args.guidance_scale), self.sharpener, latents,
                                     batch["captions"], to_device(batch["sizes"], device), self.negative_bank,
                                     step_generator(self.args.seed, self.updates, 0, 0), loss_type=self.args.loss_type,
                                     reduction=self.args.loss_reduction, autocast=self.accelerator.autocast)
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        if self.read_every_step:
            return loss.detach().item()
        self.step_log.add(self.updates, loss, 2e-4, len(batch["captions"]))
        return None

    def end_block(self) -> list[float]:
        """What the training loop does at the end of a log window: read the losses back, once."""
        return [record["loss"] for record in self.step_log.flush()]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.common_arguments(p)
    p.add_argument("--step", nargs="+", choices=STEPS, default=["authors", "ours"], help="steps timed side by side")
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="default: the setup's (tiny: no, full: bf16)")
    p.add_argument("--warmup", type=int, default=None, help="untimed updates per step first (default 2; 3 with --compile)")
    p.add_argument("--block", type=int, default=None, help="updates per timed block (default: 5 on a GPU, 2 on the CPU)")
    p.add_argument("--rounds", type=int, default=None, help="timed blocks per step (default: 3 on a GPU, 2 on the CPU)")
    p.add_argument("--images", type=int, default=None, help="JPEGs written for the data loaders (default: 4 x batch)")
    p.add_argument("--workers", type=int, default=2, help="data-loader workers of ours (training's default)")
    p.add_argument("--compile", nargs="?", const="full", choices=["full", "regional"], default=None, help="ours: as the training option")
    p.add_argument("--channels_last", action="store_true", help="ours: as the training option")
    p.add_argument("--gradient_checkpointing", action="store_true", help="ours: as the training option")
    p.add_argument("--no_flops", action="store_true", help="skip the FLOP count (one extra untimed update per step)")
    args = p.parse_args(argv)
    d = DEFAULTS[args.setup]
    batch_size, resolution = args.batch or d["batch"], args.resolution or d["resolution"]
    mixed_precision = args.mixed_precision or d["mixed_precision"]
    device = common.pick_device(args.device or d["device"])
    on_gpu = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (3 if args.compile else 2)
    block = args.block or (5 if on_gpu else 2)
    rounds = args.rounds or (3 if on_gpu else 2)
    num_images = args.images or 4 * batch_size
    common.set_threads(args.threads, device)
    if "authors" in args.step and common.FAMILIES[args.setup] == "pixart":
        p.error("the authors released no PixArt-alpha training script: use --step ours ours-live ...")

    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    from dice.data import load_records
    from dice.latent_cache import build_latent_cache
    from dice.sharpener import Sharpener

    from authors_step import AuthorsStep

    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu")
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    workdir = Path(tempfile.mkdtemp(prefix="dice-train-step-"))

    t0 = time.perf_counter()
    adapter = common.build_adapter(args.setup, device, weight_dtype, seed=args.seed, **(
        {"text_encoder_dtype": weight_dtype} if args.setup == "pixart-full" else {}))
    build_seconds = time.perf_counter() - t0
    parameters = common.parameter_counts(adapter)  # before PixArt's T5 is unloaded
    data = common.write_jpeg_dataset(workdir / "images", num_images, seed=args.seed)
    _, records = load_records(data)
    jpeg_kib = statistics.fmean(path.stat().st_size for path in data.glob("*.jpg")) / 1024
    if common.FAMILIES[args.setup] == "pixart":  # T5 once for every caption, then unloaded (train_pixart.py's option)
        adapter.text_cache_dir = str(workdir / "text_cache")
        adapter.prepare_text_cache([c for r in records for c in r.captions], [""])

    latent_cache, cache_seconds = None, None
    if {"ours", "ours-sync"} & set(args.step):
        common.sync(device)
        t0 = time.perf_counter()
        latent_cache = build_latent_cache(workdir / "latents", records, data, adapter, resolution,
                                          batch_size=batch_size, num_workers=args.workers)
        common.sync(device)
        cache_seconds = time.perf_counter() - t0

    def new_optimizer():
        set_seed(args.seed)
        sharpener = Sharpener(adapter.text_dim)
        optimizer = torch.optim.AdamW(sharpener.parameters(), lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        return sharpener, optimizer

    steps = {}
    for name in args.step:
        sharpener, optimizer = new_optimizer()
        if name == "authors":
            scheduler = get_scheduler("constant", optimizer)
            sharpener, optimizer, scheduler = accelerator.prepare(sharpener, optimizer, scheduler)
            steps[name] = AuthorsStep(adapter, accelerator, sharpener, optimizer, scheduler, records, resolution, batch_size,
                                      seed=args.seed)
        else:
            sharpener, optimizer = accelerator.prepare(sharpener, optimizer)
            steps[name] = OursStep(name, adapter, accelerator, sharpener, optimizer, records, resolution, batch_size,
                                   args.seed, args.workers, None if name == "ours-live" else latent_cache,
                                   workdir / f"stats-{name}.jsonl")

    # The frozen denoiser is shared: each step runs with its own settings of it.
    denoiser = adapter.denoiser
    if args.compile:
        adapter.compile_denoiser(args.compile)

    @contextlib.contextmanager
    def settings_of(name: str):
        ours = name != "authors"
        memory_format = torch.channels_last if ours and args.channels_last else torch.contiguous_format
        denoiser.to(memory_format=memory_format)
        if ours and args.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        elif denoiser.is_gradient_checkpointing:
            denoiser.disable_gradient_checkpointing()
        stance = torch.compiler.set_stance("force_eager") if (not ours or not args.compile) else contextlib.nullcontext()
        with stance:
            yield

    def run_block(name: str, updates: int) -> list:
        step = steps[name]
        losses = [step() for _ in range(updates)]
        if isinstance(step, OursStep) and not step.read_every_step:
            losses = step.end_block()
        return losses

    flops = {}
    if not args.no_flops:
        for name in args.step:
            with settings_of(name), torch.compiler.set_stance("force_eager"):
                flops[name] = common.count_flops(lambda name=name: run_block(name, 1))

    losses = {name: [] for name in args.step}
    warmup_seconds = {}  # with --compile: mostly compilation
    for name in args.step:
        with settings_of(name):
            losses[name], warmup_seconds[name] = common.timed(lambda name=name: run_block(name, warmup), device)
    seconds, peak, syncs = {name: [] for name in args.step}, {}, {}
    for _ in range(rounds):
        for name in args.step:
            with settings_of(name):
                common.reset_peak_memory(device)
                block_losses, dt = common.timed(lambda name=name: run_block(name, block), device)
                losses[name] += block_losses
                seconds[name].append(dt / block)
                memory = common.peak_memory(device)
                if name not in peak or list(memory.values())[0] > list(peak[name].values())[0]:
                    peak[name] = memory
    if on_gpu:  # host synchronisations inside one update (ours: plus one read-back per log window)
        for name in args.step:
            with settings_of(name):
                syncs[name] = count_host_syncs(steps[name], device)

    precision = accelerator.mixed_precision
    peak_tf = common.peak_tflops(device, precision)
    results = {}
    for name in args.step:
        median = statistics.median(seconds[name])
        entry = {
            "images_per_second": round(batch_size / median, 3),
            "seconds_per_update": common.summarize(seconds[name]),
            "warmup_seconds": round(warmup_seconds[name], 3),
            **peak[name],
            "losses_finite": bool(torch.isfinite(torch.tensor(losses[name])).all()),
        }
        if name in flops:
            total, by_module = flops[name]
            entry["flops_per_update"] = total
            entry["flops_by_module"] = by_module
            entry["achieved_tflops"] = round(total / median / 1e12, 3)
            if peak_tf:
                entry["mfu"] = round(total / median / 1e12 / peak_tf, 4)
        if name in syncs:
            entry["host_synchronisations_per_update"] = syncs[name]
        results[name] = entry
    ratios = {f"{name}_over_authors": round(results[name]["images_per_second"] / results["authors"]["images_per_second"], 3)
              for name in results if name != "authors" and "authors" in results}

    result = {
        "benchmark": "train_step",
        "setup": args.setup,
        "what": "DICE training updates timed side by side: the authors' operations and precision vs dice.training "
                "(see benchmarks/train_step.py and authors_step.py)",
        **common.environment(device),
        "mixed_precision": precision,
        "frozen_model_dtype": str(weight_dtype).replace("torch.", ""),
        "batch": batch_size,
        "resolution": resolution,
        "ours_options": {"compile": args.compile, "channels_last": args.channels_last,
                         "gradient_checkpointing": args.gradient_checkpointing, "loader_workers": args.workers,
                         "latent_cache": latent_cache is not None},
        "warmup_updates": warmup,
        "timed": f"{rounds} block(s) of {block} update(s) per step, interleaved",
        "steps": results,
        "ratios": ratios,
        "peak_tflops_16bit": peak_tf,
        "data": {"jpegs": num_images, "jpeg_size": "640x480", "mean_jpeg_kib": round(jpeg_kib, 1),
                 "latent_cache_build_seconds": round(cache_seconds, 3) if cache_seconds else None,
                 "latent_cache_images_per_second": round(num_images / cache_seconds, 2) if cache_seconds else None},
        "parameters": {**parameters,
                       "sharpener": sum(p.numel() for p in Sharpener(adapter.text_dim).parameters())},
        "build_seconds": round(build_seconds, 2),
        "notes": [
            "images_per_second = batch / median seconds per update, the device synchronised only around each block",
            "flops_per_update: FlopCounterMode on one untimed eager update (matmuls, convolutions, attention, forward "
            "and backward; 2 per multiply-add); mfu = flops / median seconds / the device's dense 16-bit peak",
            "random weights with the real architecture: speed and memory only, no quality",
            "both steps use PyTorch SDPA attention (the authors enable xformers)",
        ],
    }
    if device.type == "cpu":
        result["notes"].append(common.CPU_NOTE)
        result["notes"].append("peak_rss_gib is the process's peak resident set, model building included; no MFU on a CPU")
    common.write_result("train_step", args.setup, device, result, args.out, args.tag)
    return result


def count_host_syncs(fn, device) -> int:
    """How many times ``fn`` made the host wait for the GPU (torch.cuda.set_sync_debug_mode warnings)."""
    import warnings

    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


if __name__ == "__main__":
    main()
