"""The shapes-world demo: ``python -m dice.demo`` (= ``bash launch.sh demo``), the paper in miniature on CPU.
``python -m dice.demo shapes-flow`` (= ``bash launch.sh demo shapes-flow``) runs the same demo on the flow-matching
world (an SD3-architecture model; its own preset, w=3 and sampler, DEMO_WORLDS), printing the same table and lines.

``train_sd15.py`` fits a sharpener now (``--preset toy-demo``, dice/presets.py); ``sample.py`` samples held-out
prompts (half of them attribute combinations never seen in training) unguided, with CFG (w=5), with the converged
sharpener shipped beside the model and with the one just trained, all from identical noise;
``evaluation/shapes_world.py`` scores them: prompt accuracy (every attribute of the prompt right) and a Fréchet
distance on the world evaluator's features. It ends with the table, a grid PNG, and

    accuracy_unguided=… accuracy_cfg=… accuracy_dice=… (shipped) accuracy_dice_now=… (trained now)
    cfg_gain_recovered = (accuracy_dice - accuracy_unguided) / (accuracy_cfg - accuracy_unguided)   (and _now)
    cfg_gap_closed = 1 - mean||z_dice - z_cfg|| / mean||z_uncond - z_cfg||   (final latents, shipped sharpener)

A world without a shipped sharpener (DemoWorld.shipped absent) gets no shipped row, no ``accuracy_dice`` and no
shipped ``cfg_gain_recovered``; its cfg_gap_closed is then the trained-now sharpener's.

The numbers depend on the bits of every CPU kernel, and those on the instruction set each library picks and on the
thread count (measured: a forward pass of the world's UNet gives other bits under each of them). The demo pins them
(PINNED_KERNELS, DEMO_THREADS) for its run, so that neither the environment nor the core count changes them; which
CPUs print the README's numbers, and how far others land: docs/shapes_world.md, the demo.
``python -m dice.shapes_world.demo RESULTS.json`` writes the table of a demo_result.json into README.md and
docs/shapes_world.md (the committed one: docs/shapes_world/demo_result.json, written by ``--results_out``).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dice.adapters import adapter_class
from dice.checkpoint import load_sharpener
from dice.presets import preset
from dice.sample_cli import main as sample_main
from dice.sampling import image_grid
from dice.training import main as train_main
from evaluation.metrics import append_result
from evaluation.metrics.guidance_gap import cfg_gap_closed, gain_recovered, gain_recovered_interval
from evaluation.metrics.images import open_image_collection

from .folder_scores import calc_shapes_world
from .scoring import DEFAULT_FLOW_PIPELINE, DEFAULT_FLOW_SHARPENER, DEFAULT_PIPELINE, DEFAULT_SHARPENER
from .world import evaluation_prompts, write_imagefolder, write_prompt_file

REPO_ROOT = Path(__file__).resolve().parents[2]

TOY_TRAIN_IMAGES = 4000
TOY_PRESET = "toy-demo"
# What each library reads to choose its CPU kernels: ATen's vectorised ops, oneDNN's convolutions, MKL's matrix
# products. Each is read when first used, so they are set before the first op. Measured (docs/shapes_world.md, the
# demo): this makes the demo's bits independent of the environment's settings and of the core count; MKL's
# COMPATIBLE branch would also match a forward pass across CPU vendors, but costs 65% more time per training update
# and still leaves a training step's gradients CPU-dependent, so MKL keeps its own choice (on AMD it takes AVX2 as AUTO).
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
DEMO_THREADS = 2  # the bits change with the thread count too (measured: pinned, 4 threads differ from 2)
TOY_VALIDATION_PROMPTS = [
    "a red circle and a blue square", "a yellow triangle next to a green cross",
    "a white square on the left and a purple circle on the right", "a blue cross and a red triangle",
]
TOY_GRID_COLUMNS = 8
# name -> (sample.py options, NFE per step); alpha 0 is the base model itself. {run}: the sharpener trained
# now; {shipped}: the converged one in dice/assets/shapes_world/sharpener.
TOY_METHODS = {
    "unguided": (["--sharpener_path", "{run}", "--alpha", "0"], 1),
    "cfg": (["--sharpener_path", "{run}", "--alpha", "0", "--cfg_scale", "{w}"], 2),
    "dice": (["--sharpener_path", "{shipped}"], 1),
    "dice_now": (["--sharpener_path", "{run}"], 1),
}



@dataclass(frozen=True)
class DemoWorld:
    """A shapes-world model the demo runs on: its family, files, demo preset and sampler."""

    name: str  # demo_result.json's "world"
    family: str  # the adapter family: train_<family>.py and the preset's family
    pipeline: Path
    shipped: Path  # its converged sharpener
    preset: str
    desc: str  # the run folder's suffix
    sampler: str  # the family's default sampler (sample.py), as the report names it


DEMO_WORLDS = {
    "toy": DemoWorld("shapes", "sd15", DEFAULT_PIPELINE, DEFAULT_SHARPENER, TOY_PRESET, "demo-toy", "DPM-Solver++ 20 steps"),
    "shapes-flow": DemoWorld("shapes-flow", "sd3", DEFAULT_FLOW_PIPELINE, DEFAULT_FLOW_SHARPENER, "toy-demo", "demo-shapes-flow",
                             "flow-matching Euler 20 steps"),
}


def folder_latents(adapter, folder: Path) -> torch.Tensor:
    """The VAE latents (posterior mean) of a sample folder's PNGs, in prompt order."""
    collection = open_image_collection(folder)
    pixels = torch.stack([torch.from_numpy(np.array(collection.open_image(r.name))).permute(2, 0, 1) for r in collection.records])
    return adapter.encode_images(pixels.float() / 127.5 - 1.0)


def toy_grid(folders: dict[str, Path], labels: list[str], entries: list[dict], path: Path) -> Path:
    """A row per method, the same prompts and seeds; half seen, half unseen combinations."""
    seen = [e for e in entries if e["split"] == "seen"][: TOY_GRID_COLUMNS // 2]
    unseen = [e for e in entries if e["split"] == "unseen"][: TOY_GRID_COLUMNS // 2]
    picks = seen + unseen
    rows = [[Image.open(folder / f"{e['index']:05d}.png").convert("RGB") for e in picks] for folder in folders.values()]
    captions = [f"{e['prompt']} ({e['split']})" for e in picks]
    image_grid(rows, labels, captions, scale=4).save(path)
    return path


def training_samples(config) -> int:
    """Training samples a sharpener has seen: updates x global batch."""
    return int(config.step) * int(config.training_options["global_batch_size"])


@contextlib.contextmanager
def pinned_cpu_kernels():
    """Run the block with PINNED_KERNELS and DEMO_THREADS; yields None when ATen took them, else why not (another
    instruction set, or kernels already chosen in this process). The environment is restored afterwards."""
    saved, threads = {name: os.environ.get(name) for name in PINNED_KERNELS}, torch.get_num_threads()
    os.environ.update(PINNED_KERNELS)
    torch.set_num_threads(DEMO_THREADS)
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        yield None if capability == "AVX2" else (
            f"CPU kernels: {capability}, not the AVX2 the README's numbers were computed with (a CPU without AVX2, or "
            "kernels already chosen in this process): the numbers may differ from the README's by a few points")
    finally:
        torch.set_num_threads(threads)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def demo_training_argv(data: Path, exps_root: str, seed: int = 0, world: DemoWorld = DEMO_WORLDS["toy"]) -> list[str]:
    """train_sd15.py's (the world's train_<family>.py's) options for the demo's sharpener (its preset, 4 validation
    prompts for the grid)."""
    return ["--pretrained_model_name_or_path", str(world.pipeline), "--train_data_dir", str(data), "--preset", world.preset,
            "--output_dir", exps_root, "--desc", world.desc, "--dataloader_num_workers", "0", "--seed", str(seed),
            "--validation_prompts", *TOY_VALIDATION_PROMPTS]


def run_toy(exps_root: str = "exps", max_train_steps: int | None = None, num_prompts: int = 256,
            train_batch_size: int | None = None, grid_out: str | None = None, seed: int = 0,
            results_out: str | None = None, world: str = "toy") -> dict:
    """The shapes-world demo (``world``: a key of DEMO_WORLDS) with the CPU kernels pinned; returns what it writes to
    demo_result.json."""
    with pinned_cpu_kernels() as unpinned:
        if unpinned:
            print(unpinned, flush=True)
        return _run_toy(exps_root, max_train_steps, num_prompts, train_batch_size, grid_out, seed, results_out, unpinned,
                        DEMO_WORLDS[world])


def _run_toy(exps_root, max_train_steps, num_prompts, train_batch_size, grid_out, seed, results_out, unpinned,
             world: DemoWorld) -> dict:
    start = time.time()
    assets = Path(exps_root) / "_demo_assets"
    data = write_imagefolder(assets / f"shapes-world-train-{TOY_TRAIN_IMAGES}", TOY_TRAIN_IMAGES, "train")
    prompt_file = write_prompt_file(assets / f"shapes-world-prompts-{num_prompts}.jsonl", num_prompts)
    settings = preset(world.family, world.preset)
    w = settings["guidance_scale"]
    argv = demo_training_argv(data, exps_root, seed, world)
    if max_train_steps:
        argv += ["--max_train_steps", str(max_train_steps), "--checkpointing_steps", str(max_train_steps)]
    if train_batch_size:
        argv += ["--train_batch_size", str(train_batch_size)]
    print(f"$ python train_{world.family}.py {shlex.join(argv)}", flush=True)
    run_dir = train_main(world.family, argv)
    trained_at = time.time()

    folders, nfe = {}, {}
    shipped = world.shipped.is_dir()  # a world's row of its converged sharpener, where one is shipped
    for name, (options, evaluations_per_step) in TOY_METHODS.items():
        if name == "dice" and not shipped:
            print(f"no shipped sharpener at {world.shipped}: its row is left out", flush=True)
            continue
        sample_argv = [a.format(w=f"{w:g}", run=run_dir, shipped=world.shipped) for a in options]
        sample_argv += ["--prompts", str(prompt_file), "--outdir", str(run_dir / "samples"), "--batch_gpu", "64"]
        print(f"$ python sample.py {shlex.join(sample_argv)}", flush=True)
        folders[name] = sample_main(sample_argv)
        nfe[name] = 20 * evaluations_per_step
    sampled_at = time.time()
    scores = {}
    for name, folder in folders.items():
        print(f"$ python evaluation/shapes_world.py calc --images {shlex.quote(str(folder))} --results {run_dir / 'results.jsonl'}", flush=True)
        scores[name] = calc_shapes_world(folder)
        for result in scores[name]:
            append_result(run_dir / "results.jsonl", result)

    adapter = adapter_class(world.family).from_pretrained(str(world.pipeline))
    latents = {name: folder_latents(adapter, folder) for name, folder in folders.items()}
    accuracy = {name: s[0] for name, s in scores.items()}
    samples = {"dice_now": training_samples(load_sharpener(run_dir)[1]),
               **({"dice": training_samples(load_sharpener(world.shipped)[1])} if shipped else {})}
    labels = {"unguided": "unguided", "cfg": f"CFG w={w:g}", "dice_now": f"DICE (trained now, {samples['dice_now']:,} samples)",
              **({"dice": f"DICE (shipped, {samples['dice']:,} samples)"} if shipped else {})}
    gains = {f"cfg_gain_recovered{suffix}": name for name, suffix in (("dice", ""), ("dice_now", "_now")) if name in folders}
    grid = toy_grid(folders, [f"{labels[m]} (NFE {nfe[m]})" for m in folders], evaluation_prompts(num_prompts),
                    run_dir / "demo_grid.png")
    if grid_out:  # e.g. the README's copy
        Path(grid_out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(grid, grid_out)
    baseline = [accuracy[m].value for m in ("unguided", "cfg")]
    per_image = [accuracy[m].per_image for m in ("unguided", "cfg")]
    result = {
        "world": world.name, "experiment": str(run_dir), "preset": world.preset, "seed": seed,
        "train_steps": max_train_steps or settings["max_train_steps"],
        "train_batch_size": train_batch_size or settings["train_batch_size"],
        "num_prompts": num_prompts, "guidance_scale": w, "sampler": world.sampler, "grid": str(grid),
        # relative to the clone: the same on every machine
        "shipped_sharpener": Path(world.shipped).resolve().relative_to(REPO_ROOT).as_posix() if shipped else None,
        "methods": {name: {"label": labels[name], "nfe": nfe[name], "folder": str(folders[name]),
                           "accuracy": accuracy[name].value,
                           **{k: accuracy[name].options[k] for k in ("accuracy_ci95", "accuracy_seen", "accuracy_unseen")},
                           "fd": scores[name][1].value, "fd_real_vs_real": scores[name][1].options["fd_real_vs_real"],
                           **({"training_samples": samples[name]} if name in samples else {})}
                    for name in folders},
        **{key: gain_recovered(*baseline, accuracy[name].value) for key, name in gains.items()},
        **{f"{key}_ci95": list(gain_recovered_interval(*per_image, accuracy[name].per_image)) for key, name in gains.items()},
        "cfg_gap_closed": cfg_gap_closed(latents["unguided"], latents["cfg"], latents["dice" if shipped else "dice_now"]),
        "seconds": round(time.time() - start, 1),
        "seconds_training": round(trained_at - start, 1), "seconds_sampling": round(sampled_at - trained_at, 1),
        "cpu_kernels": {"pinned": not unpinned, **PINNED_KERNELS, "aten_capability": torch.backends.cpu.get_cpu_capability(),
                        "threads": torch.get_num_threads()},
        "torch": torch.__version__,
    }
    (run_dir / "demo_result.json").write_text(json.dumps(result, indent=2) + "\n")
    if results_out:  # e.g. the committed docs/shapes_world/demo_result.json the README's table is rendered from
        Path(results_out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "demo_result.json", results_out)
    print_toy_report(result)
    return result


def print_toy_report(result: dict) -> None:
    print(f"\nDemo finished in {result['seconds']} s: {result['experiment']}")
    world = "Shapes world" if result["world"] == "shapes" else f"Shapes world ({result['world']})"
    print(f"{world}, {result['num_prompts']} held-out prompts (half unseen combinations), {result['sampler']}, "
          "the same seeds for every method. Prompt accuracy: all four attributes right (world evaluator).\n")
    print(f"Grid (a row per method, same prompts and seeds): {result['grid']}")
    print(toy_report(result))


def toy_report(result: dict) -> str:
    """The table and the key=value lines the demo ends with; the README shows them as rendered from its results file."""
    methods = result["methods"]
    lines = [f"| method | NFE | accuracy seen | unseen | pooled [95% CI] | FD (real vs real {methods['cfg']['fd_real_vs_real']:.1f}) |",
             "|---|---|---|---|---|---|"]
    for m in methods.values():
        lo, hi = m["accuracy_ci95"]
        lines.append(f"| {m['label']} | {m['nfe']} | {m['accuracy_seen']:.3f} | {m['accuracy_unseen']:.3f} | "
                     f"{m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {m['fd']:.1f} |")
    gains = [key for key in ("cfg_gain_recovered", "cfg_gain_recovered_now") if key in result]  # no shipped: no first
    for key in gains:
        lo, hi = result[f"{key}_ci95"]
        which = "trained now" if key.endswith("_now") else "shipped"
        lines.append(f"DICE ({which}) recovers {result[key]:.0%} of CFG's accuracy gain (paired bootstrap 95% CI "
                     f"{lo:.0%} to {hi:.0%}) at half CFG's network evaluations.")
    lines += [f"accuracy_{name}={methods[name]['accuracy']:.3f}" for name in ("unguided", "cfg", "dice", "dice_now") if name in methods]
    lines += [f"{key}={result[key]:.3f}" for key in (*gains, "cfg_gap_closed")]
    return "\n".join(lines)


# The README's and docs/shapes_world.md's copy of the demo's output, between these lines.
REPORT_BEGIN = "<!-- the demo's output, rendered from docs/shapes_world/demo_result.json by python -m dice.shapes_world.demo -->"
REPORT_END = "<!-- end of the demo's output -->"
# The flow world's demo (docs/shapes_world.md's copy): the same, with its own markers.
FLOW_REPORT_BEGIN = ("<!-- the flow demo's output, rendered from docs/shapes_world/demo_result_flow.json by "
                     "python -m dice.shapes_world.demo -->")
FLOW_REPORT_END = "<!-- end of the flow demo's output -->"
# A demo_result.json's "world" -> its block's markers and the pages that show it.
REPORT_BLOCKS = {"shapes": (REPORT_BEGIN, REPORT_END, ("README.md", "docs/shapes_world.md")),
                 "shapes-flow": (FLOW_REPORT_BEGIN, FLOW_REPORT_END, ("docs/shapes_world.md",))}


def render_report_block(text: str, result: dict) -> str:
    """``text`` with the block between the markers of ``result``'s world (REPORT_BEGIN and REPORT_END for the epsilon
    world) replaced by the demo's report of ``result``."""
    begin, end, _ = REPORT_BLOCKS[result["world"]]
    block = f"{begin}\n```\n{toy_report(result)}\n```\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), flags=re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError("expected one block of the demo's output")
    return pattern.sub(lambda _: block, text)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dice.shapes_world.demo",
                                     description="Write a demo_result.json's table into README.md and docs/shapes_world.md "
                                     "(the flow world's: docs/shapes_world.md)")
    parser.add_argument("results", nargs="?", default="docs/shapes_world/demo_result.json")
    args = parser.parse_args()
    demo_result = json.loads(Path(args.results).read_text())
    for markdown in map(Path, REPORT_BLOCKS[demo_result["world"]][2]):
        markdown.write_text(render_report_block(markdown.read_text(), demo_result))
        print(f"wrote the demo's table into {markdown}")
