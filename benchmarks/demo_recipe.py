"""The shapes-world demo's training recipe at equal wall-clock (issue 30): how many samples per second each batch
size / thread count / memory format buys on this CPU, and the share of CFG's accuracy gain each candidate recipe
recovers on the **validation** prompts (512, prompt seed 1, image seeds 500000+), never on the demo's 256.

    python benchmarks/demo_recipe.py hashes [--pinned]          # bits of one forward pass and one training step
    python benchmarks/demo_recipe.py throughput --out benchmarks/results/demo_throughput-cpu.json
    python benchmarks/demo_recipe.py validate --out benchmarks/results/demo_recipe-validation.json \
        --candidate 'toy-600x16' '{}' --candidate 'b64-lr2e-3' '{"train_batch_size": 64, "max_train_steps": 210, ...}'

Throughput runs the demo's real training update (VAE encode, CFG teacher, student forward and backward, AdamW) on
the shipped model, candidates interleaved round by round in one process, so that other jobs on a shared machine
slow every candidate alike. ``validate`` trains each candidate exactly as the demo does (its preset with the
overrides), samples the validation prompts with the sharpener and scores them; unguided and CFG w=5 are sampled
once on the same prompts and seeds, so every share of the gain comes with a paired bootstrap interval. Results are
written after each candidate, and a rerun skips candidates already in the file.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VALIDATION_PROMPTS, VALIDATION_PROMPT_SEED, VALIDATION_IMAGE_SEED = 512, 1, 500000


def throughput(configs: list[dict], seconds: float, rounds: int) -> dict:
    import torch

    from dice.adapters import adapter_class
    from dice.distillation import distillation_step
    from dice.methods import build_method
    from dice.negatives import NegativePrompts
    from dice.shapes_world.scoring import DEFAULT_PIPELINE
    from dice.training import NegativeBank

    adapter = adapter_class("sd15").from_pretrained(str(DEFAULT_PIPELINE))
    adapter.freeze(torch.device("cpu"), torch.float32)
    method = build_method("dice", guidance_scale=5.0)
    negatives = NegativeBank(adapter, NegativePrompts([], 0.0))
    captions = ["a red circle next to a blue square", "a white cross and a green triangle"]

    def samples_per_second(batch: int, threads: int, channels_last: bool = False) -> float:
        torch.set_num_threads(threads)
        adapter.denoiser.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        torch.manual_seed(0)
        model = method.build(adapter)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        pixels = torch.rand(batch, 3, 32, 32) * 2 - 1
        steps, started = 0, None
        while started is None or time.perf_counter() - started < seconds:
            if steps == 2:  # the first updates build kernels and caches
                started = time.perf_counter()
            latents = adapter.encode_images(pixels)
            loss = distillation_step(adapter, method, model, latents, captions * (batch // 2), None, negatives,
                                     torch.Generator().manual_seed(steps))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
        return (steps - 2) * batch / (time.perf_counter() - started)

    measured = {json.dumps(c, sort_keys=True): [] for c in configs}
    for _ in range(rounds):
        for config in configs:
            measured[json.dumps(config, sort_keys=True)].append(round(samples_per_second(**config), 2))
            print(json.dumps(config), measured[json.dumps(config, sort_keys=True)][-1], flush=True)
    return {"configs": [{**json.loads(key), "samples_per_second": values} for key, values in measured.items()],
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "load_average_at_end": os.getloadavg()}


def hashes(threads: int) -> dict:
    """sha256 (12 hex digits) of one forward pass of the world's UNet and of the gradients of one DICE training step
    (batch 16, fixed inputs): equal hashes, equal bits. Kernels as the environment (or --pinned) chooses them."""
    import hashlib

    import torch

    from dice.adapters import adapter_class
    from dice.distillation import distillation_step
    from dice.methods import build_method
    from dice.negatives import NegativePrompts
    from dice.shapes_world.scoring import DEFAULT_PIPELINE
    from dice.training import NegativeBank

    torch.set_num_threads(threads)

    def digest(*tensors) -> str:
        sha = hashlib.sha256()
        for tensor in tensors:
            sha.update(tensor.detach().contiguous().numpy().tobytes())
        return sha.hexdigest()[:12]

    adapter = adapter_class("sd15").from_pretrained(str(DEFAULT_PIPELINE))
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(16, 4, 16, 16, generator=generator)
    t = torch.randint(0, 1000, (16,), generator=generator)
    captions = ["a red circle next to a blue square"] * 8 + ["a white cross and a green triangle"] * 8
    with torch.no_grad():
        forward = adapter.predict_noise(x_t, t, adapter.encode_prompts(captions))
    method = build_method("dice", guidance_scale=5.0)
    torch.manual_seed(0)
    sharpener = method.build(adapter)
    latents = torch.randn(16, 4, 16, 16, generator=generator)
    distillation_step(adapter, method, sharpener, latents, captions, None, NegativeBank(adapter, NegativePrompts([], 0.0)),
                      torch.Generator().manual_seed(1)).backward()
    return {"forward": digest(forward), "training_step_gradients": digest(*[p.grad for p in sharpener.parameters()]),
            "aten_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            **{name: os.environ.get(name) for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")}}


def validation_sampling(work: Path) -> list[str]:
    """sample.py's options for the validation prompts and their image seeds (the prompt file is written into ``work``)."""
    from dice.shapes_world.world import write_prompt_file

    prompts = write_prompt_file(work / "validation-prompts.jsonl", VALIDATION_PROMPTS, seed=VALIDATION_PROMPT_SEED)
    return ["--prompts", str(prompts), "--seed", str(VALIDATION_IMAGE_SEED), "--batch_gpu", "64"]


def score(folder) -> dict:
    """A sample folder's world accuracy and every image's 0/1, for paired intervals."""
    from dice.shapes_world.folder_scores import calc_shapes_world

    accuracy = calc_shapes_world(folder)[0]
    return {"accuracy": accuracy.value, "per_image": [int(v) for v in accuracy.per_image]}


def validate(name: str, overrides: dict, out: Path, work: Path, seed: int = 0) -> dict:
    from dice.sample_cli import main as sample_main
    from dice.shapes_world.demo import TOY_TRAIN_IMAGES, demo_training_argv
    from dice.shapes_world.scoring import DEFAULT_PIPELINE
    from dice.shapes_world.world import write_imagefolder
    from dice.training import main as train_main
    from evaluation.metrics.guidance_gap import gain_recovered, gain_recovered_interval

    results = json.loads(out.read_text()) if out.is_file() else {"validation": {}, "candidates": {}}
    sampling = validation_sampling(work)

    for baseline, options in (("unguided", []), ("cfg", ["--cfg_scale", "5"])):
        if baseline not in results["validation"]:
            folder = sample_main(["--pretrained_model_name_or_path", str(DEFAULT_PIPELINE), *options, *sampling,
                                  "--outdir", str(work / "samples")])
            results["validation"][baseline] = score(folder)
            out.write_text(json.dumps(results) + "\n")
    key = f"{name} seed {seed}"
    if key in results["candidates"]:
        return results["candidates"][key]
    data = write_imagefolder(work / f"shapes-world-train-{TOY_TRAIN_IMAGES}", TOY_TRAIN_IMAGES, "train")
    argv = demo_training_argv(data, str(work / "exps"), seed=seed)
    for option, value in overrides.items():
        argv += [f"--{option}", str(value)]
    started = time.time()
    run_dir = train_main("sd15", argv)
    train_seconds = time.time() - started
    folder = sample_main(["--sharpener_path", str(run_dir), *sampling, "--outdir", str(run_dir / "samples")])
    scored = score(folder)
    unguided, cfg = (results["validation"][m] for m in ("unguided", "cfg"))
    low, high = gain_recovered_interval(unguided["per_image"], cfg["per_image"], scored["per_image"])
    results["candidates"][key] = {
        "overrides": overrides, "seed": seed, "accuracy": scored["accuracy"],
        "cfg_gain_recovered": gain_recovered(unguided["accuracy"], cfg["accuracy"], scored["accuracy"]),
        "cfg_gain_recovered_ci95": [low, high], "train_seconds": round(train_seconds, 1),
        "load_average": os.getloadavg(), "per_image": scored["per_image"]}
    out.write_text(json.dumps(results) + "\n")
    print(f"{key}: accuracy {scored['accuracy']:.3f}, CFG gain recovered "
          f"{results['candidates'][key]['cfg_gain_recovered']:.1%} [{low:.1%}, {high:.1%}]", flush=True)
    return results["candidates"][key]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["hashes", "throughput", "validate"])
    parser.add_argument("--out", type=Path, default=None, help="throughput, validate: the JSON results file")
    parser.add_argument("--pinned", action="store_true", help="hashes: with the demo's pinned CPU kernels and threads")
    parser.add_argument("--configs", default='[{"batch": 16, "threads": 2}, {"batch": 32, "threads": 2}, '
                        '{"batch": 64, "threads": 2}, {"batch": 64, "threads": 2, "channels_last": true}]',
                        help="throughput: JSON list of {batch, threads, channels_last}")
    parser.add_argument("--seconds", type=float, default=8.0, help="throughput: timed seconds per candidate and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--candidate", nargs=2, action="append", metavar=("NAME", "OVERRIDES_JSON"), default=[],
                        help="validate: a name and the training options it changes in the demo's preset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="validate: training seeds of each candidate")
    parser.add_argument("--threads", type=int, default=None, help="hashes, validate: torch threads (default: the demo's 2)")
    parser.add_argument("--work", type=Path, default=None, help="validate: scratch folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    if args.what == "hashes":
        from dice.shapes_world.demo import pinned_cpu_kernels

        with pinned_cpu_kernels() if args.pinned else contextlib.nullcontext():
            print(json.dumps(hashes(args.threads or 2)))
        return
    if args.out is None:
        parser.error(f"{args.what} needs --out")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.what == "throughput":
        args.out.write_text(json.dumps(throughput(json.loads(args.configs), args.seconds, args.rounds), indent=2) + "\n")
        return
    from dice.shapes_world.demo import pinned_cpu_kernels

    work = args.work or Path(tempfile.mkdtemp(prefix="demo-recipe-"))
    with pinned_cpu_kernels() as unpinned:  # the kernels the demo runs with
        if unpinned:
            print(unpinned)
        if args.threads:  # fewer threads on a busy machine (measured: 1 and 2 give the same bits, pinned)
            import torch

            torch.set_num_threads(args.threads)
        for name, overrides in args.candidate:
            for seed in args.seeds:
                validate(name, json.loads(overrides), args.out, work, seed)


if __name__ == "__main__":
    main()
