"""The embedding-only ceiling on the shapes world: paper Fig. 3's study across many prompts.

A sharpener can only rewrite the prompt embedding. How far can *any* rewrite take unguided sampling
towards CFG? Fit a free residual per prompt (no sharpener, nothing shared between prompts, no
generalisation needed) with DICE's loss and guidance scale (:func:`dice.residuals.fit_prompt_residuals`,
targets: the prompt's own CFG samples), then sample each prompt on seeds the fit never saw, unguided
with the fitted embedding, and score prompt accuracy with the world's evaluator. Unguided and CFG
sampling of the same prompts and seeds are the references. The fit is scored at several lengths, so
the figure shows where it stops improving: that level is the line a sharpener cannot be expected to cross.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from evaluation.metrics.guidance_gap import gain_recovered, gain_recovered_interval
from evaluation.plotting import pyplot, save_figure, write_figure

from ..adapters import adapter_class
from ..errors import ArgumentParser, check_output_dir, guidance_scale, positive_float, positive_int
from ..prompts import prompt_texts
from ..residuals import fit_prompt_residuals
from ..runtime import quiet_threads
from ..sampling import generate, use_scheduler
from .evaluator import bootstrap_interval, load_evaluator
from .scoring import (
    DEFAULT_EVALUATOR,
    DEFAULT_PIPELINE,
    per_image_scores,
    prompt_combinations,
    to_uint8,
)

SAMPLE_SEED_OFFSET = 100_000  # the fit's CFG targets use seeds below this: scoring uses new noise


def embedding_ceiling(adapter, prompts: list[str], out: Path, fit_steps: list[int], seeds_per_prompt: int = 16,
                      guidance_scale: float = 5.0, lr: float = 1e-2, steps: int = 20, evaluator=None) -> dict:
    """Fit free residuals for ``max(fit_steps)`` steps, scoring after each length in ``fit_steps``."""
    use_scheduler(adapter, "dpmsolver++")
    evaluator = evaluator or load_evaluator(DEFAULT_EVALUATOR)
    combos = prompt_combinations(prompts)
    resolution = adapter.default_resolution
    seed_rows = [[SAMPLE_SEED_OFFSET + k * len(prompts) + i for i in range(len(prompts))] for k in range(seeds_per_prompt)]

    def correct(**kwargs) -> np.ndarray:
        """Per-prompt accuracy over the new seeds [num_prompts]."""
        hits = []
        for seeds in seed_rows:  # one batch holds every prompt: a PromptResiduals needs them all, in order
            images = generate(adapter, prompts, seeds, steps=steps, resolution=resolution, **kwargs)
            hits.append(per_image_scores(evaluator, to_uint8(images), combos)[0].all(dim=1).double().numpy())
        return np.mean(hits, axis=0)

    with torch.no_grad():
        unguided, cfg = correct(), correct(cfg_scale=guidance_scale)
    history: list[float] = []
    points = []

    def score(done: int, residuals) -> None:
        if done not in fit_steps:
            return
        with torch.no_grad():
            fitted = correct(sharpener=residuals)
        lo, hi = gain_recovered_interval(unguided, cfg, fitted)
        points.append({"fit_steps": done, "accuracy": float(fitted.mean()), "accuracy_ci95": list(bootstrap_interval(fitted)),
                       "cfg_gain_recovered": gain_recovered(unguided.mean(), cfg.mean(), fitted.mean()),
                       "cfg_gain_recovered_ci95": [lo, hi], "loss_last100": float(np.mean(history[-100:]))})
        print(f"fit {done} steps: accuracy {points[-1]['accuracy']:.3f}, CFG gain recovered "
              f"{points[-1]['cfg_gain_recovered']:.0%} [{lo:.0%}, {hi:.0%}]", flush=True)

    fit_prompt_residuals(adapter, prompts, None, guidance_scale, resolution, max(fit_steps), lr, history=history, after_step=score)
    data = {
        "figure": "embedding-only ceiling: free per-prompt residuals (paper Fig. 3 across prompts)",
        "num_prompts": len(prompts), "seeds_per_prompt": seeds_per_prompt, "guidance_scale": guidance_scale, "lr": lr,
        "sampling_steps": steps, "targets": "each prompt's own CFG samples (4 seeds); scored on new seeds",
        "unguided": {"accuracy": float(unguided.mean()), "accuracy_ci95": list(bootstrap_interval(unguided))},
        "cfg": {"accuracy": float(cfg.mean()), "accuracy_ci95": list(bootstrap_interval(cfg))},
        "points": points, "loss": history, "prompts": prompts,
    }
    return write_figure(out, "embedding_ceiling", data, lambda png: plot_ceiling(png, data))


def plot_ceiling(png: Path, data: dict) -> Path:
    plt = pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    loss = np.asarray(data["loss"])
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    loss_ax.plot(np.arange(len(loss)), loss, color="0.8", linewidth=0.5, label="per step")
    loss_ax.plot(np.arange(len(smooth)) + window - 1, smooth, color="C0", label=f"mean of {window}")
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("fit step")
    loss_ax.set_ylabel("DICE loss (vs CFG)")
    loss_ax.legend(fontsize=8)
    loss_ax.grid(alpha=0.3)
    xs = [p["fit_steps"] for p in data["points"]]
    ys = [p["accuracy"] for p in data["points"]]
    errors = np.array([[p["accuracy"] - p["accuracy_ci95"][0], p["accuracy_ci95"][1] - p["accuracy"]] for p in data["points"]]).T
    acc_ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label="free residuals, unguided")
    for name, colour in (("cfg", "C2"), ("unguided", "C3")):
        acc_ax.axhline(data[name]["accuracy"], linestyle="--", color=colour,
                       label=f"{'CFG w=%g' % data['guidance_scale'] if name == 'cfg' else 'unguided'} {data[name]['accuracy']:.3f}")
    for x, point in zip(xs, data["points"]):
        acc_ax.annotate(f"{point['cfg_gain_recovered']:.0%}", (x, point["accuracy"]), textcoords="offset points",
                        xytext=(0, 7), ha="center", fontsize=7)
    acc_ax.set_xlabel("fit steps")
    acc_ax.set_ylabel("prompt accuracy (new seeds)")
    acc_ax.legend(fontsize=7, loc="lower right")
    acc_ax.grid(alpha=0.3)
    title = (f"Embedding-only ceiling, shapes world: {data['num_prompts']} prompts x {data['seeds_per_prompt']} new seeds "
             "(labels: share of CFG's gain)")
    return save_figure(fig, png, title)


def cli(argv=None) -> dict:
    p = ArgumentParser(prog="figures/embedding_ceiling.py", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompts", required=True, help="a shapes-world prompt file (python -m dice.shapes_world prompts)")
    p.add_argument("--num_prompts", type=positive_int, default=32, help="the first N prompts of the file")
    p.add_argument("--fit_steps", type=positive_int, nargs="+", default=[250, 500, 1000, 2000, 3000], help="fit lengths scored")
    p.add_argument("--seeds_per_prompt", type=positive_int, default=16, help="new seeds sampled per prompt")
    p.add_argument("--guidance_scale", type=guidance_scale, default=5.0, help="CFG's w, the target")
    p.add_argument("--lr", type=positive_float, default=1e-2, help="Adam's learning rate for the residuals")
    p.add_argument("--pretrained_model_name_or_path", default=str(DEFAULT_PIPELINE), help="the shapes-world model")
    p.add_argument("--out", default="results/figures/toy", help="output folder")
    args = p.parse_args(argv)
    check_output_dir(args.out, "--out")
    prompts = prompt_texts(args.prompts, args.num_prompts)
    quiet_threads()
    adapter = adapter_class("sd15").from_pretrained(args.pretrained_model_name_or_path).freeze("cpu", torch.float32)
    return embedding_ceiling(adapter, prompts, Path(args.out), args.fit_steps, args.seeds_per_prompt,
                             args.guidance_scale, args.lr)
