"""What the sharpener does to the embedding (paper §4.3, Fig. 7 and A.2, Fig. 11).

* ``semantic_padding``: each embedding is split at its first end-of-text token into a *semantic* part
  (the prompt's own tokens, after the BOS token that DICE leaves unchanged) and a *padding* part (the
  end-of-text token and every padding token after it). Over N prompts: the cosine similarity of the
  flattened part, original vs sharpened, mean ± std (paper, SD1.5, 1,000 prompts: semantic 0.75 ± 0.05,
  padding 0.23 ± 0.02). The image panel swaps the halves: original semantic + sharpened padding and
  sharpened semantic + original padding, beside unguided and DICE, from the same noise.
* ``pca``: PCA of N flattened embeddings (tokens × width), original and sharpened separately: the
  variance share of the top 3 components (paper 8% vs 34%) and the number of components that reach
  80% (paper ~300 vs ~60); a scatter of the first two components and the cumulative curves.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dice.errors import ArgumentParser, positive_int
from dice.methods.dice import keeps_first_token, sharpen_for_pipeline
from dice.prompts import prompt_texts
from dice.runtime import quiet_threads
from dice.sampling import generate_from_conditioning, image_grid
from evaluation.plotting import pyplot, save_figure, write_figure

from .common import load_model_and_sharpener, model_arguments

PAPER_COSINE = {"semantic": (0.75, 0.05), "padding": (0.23, 0.02)}
PAPER_PCA = {"original": {"top3": 0.08, "components_80": 300}, "sharpened": {"top3": 0.34, "components_80": 60}}


@torch.no_grad()
def embeddings(adapter, sharpener, prompts: list[str], batch_size: int = 64):
    """(original, sharpened, end-of-text position) for every prompt, u = the empty prompt, alpha = 1."""
    originals, sharpened = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        cond, uncond = adapter.encode_prompts(chunk), adapter.encode_negative([""] * len(chunk))
        sharp, _ = sharpen_for_pipeline(adapter, cond, uncond, sharpener, 1.0)
        originals.append(cond.embeds.float().cpu())
        sharpened.append(sharp.embeds.float().cpu())
    return torch.cat(originals), torch.cat(sharpened), end_of_text_positions(adapter, prompts)


def end_of_text_positions(adapter, prompts: list[str]) -> torch.Tensor:
    """Index of each prompt's first end-of-text token, under the pipeline's own tokenizer and length."""
    tokenizer = adapter.pipe.tokenizer
    ids = tokenizer(prompts, padding="max_length", max_length=adapter.num_tokens, truncation=True, return_tensors="pt").input_ids
    is_end = ids == tokenizer.eos_token_id
    return torch.where(is_end.any(dim=1), is_end.int().argmax(dim=1), torch.full((len(prompts),), ids.shape[1] - 1))


def part_masks(end: torch.Tensor, num_tokens: int, first_semantic: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, T] masks: semantic = first_semantic .. end-1, padding = end .. T-1."""
    positions = torch.arange(num_tokens)[None]
    return (positions >= first_semantic) & (positions < end[:, None]), positions >= end[:, None]


def part_cosines(original: torch.Tensor, sharpened: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per prompt: cosine of the flattened masked tokens, original vs sharpened (NaN for an empty part)."""
    keep = mask[..., None].float()
    a, b = (original * keep).flatten(1), (sharpened * keep).flatten(1)
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)
    return torch.where(mask.any(dim=1), cos, torch.full_like(cos, float("nan")))


def _summary(values: torch.Tensor) -> dict:
    values = values[~values.isnan()]
    return {"mean": values.mean().item(), "std": values.std().item() if len(values) > 1 else 0.0, "count": len(values)}


def semantic_padding(adapter, sharpener, prompts: list[str], out, panel_prompts: int = 4, steps: int = 20,
                     resolution: int | None = None) -> dict:
    original, sharpened, end = embeddings(adapter, sharpener, prompts)
    first = 1 if keeps_first_token(adapter) else 0  # DICE restores the BOS token: it would count as identical
    semantic, padding = part_masks(end, original.shape[1], first)
    stats = {"semantic": _summary(part_cosines(original, sharpened, semantic)),
             "padding": _summary(part_cosines(original, sharpened, padding))}
    panel = replacement_panel(adapter, sharpener, prompts[:panel_prompts], out / "semantic_padding_panel.png", steps, resolution)
    data = {"figure": "Fig. 7 / 4.3: semantic vs padding embedding", "num_prompts": len(prompts), "cosine": stats,
            "paper_sd15": {k: {"mean": m, "std": s} for k, (m, s) in PAPER_COSINE.items()}, "panel": str(panel),
            "split": f"semantic = tokens {first}..EOT-1, padding = EOT..{original.shape[1] - 1}"}

    def plot(png):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        for k, name in enumerate(("semantic", "padding")):
            ax.bar(k - 0.18, stats[name]["mean"], 0.35, yerr=stats[name]["std"], color="C0", label="this model" if k == 0 else None)
            ax.bar(k + 0.18, PAPER_COSINE[name][0], 0.35, yerr=PAPER_COSINE[name][1], color="C7", label="paper (SD1.5)" if k == 0 else None)
        ax.set_xticks([0, 1], ["semantic", "padding"])
        ax.set_ylabel("cosine(original, sharpened)")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
        ax.set_title(f"which part DICE changes ({len(prompts)} prompts)", fontsize=10)
        return save_figure(fig, png)
    return write_figure(out, "semantic_padding", data, plot)


@torch.no_grad()
def replacement_panel(adapter, sharpener, prompts: list[str], path, steps: int = 20, resolution: int | None = None):
    """Rows: unguided, original semantic + sharpened padding, sharpened semantic + original padding, DICE."""
    cond, uncond = adapter.encode_prompts(prompts), adapter.encode_negative([""] * len(prompts))
    sharp, uncond = sharpen_for_pipeline(adapter, cond, uncond, sharpener, 1.0)
    cond = cond.to(sharp.embeds.device, sharp.embeds.dtype)
    _, padding = part_masks(end_of_text_positions(adapter, prompts), cond.embeds.shape[1], 0)
    padding = padding[..., None].to(cond.embeds.device)
    rows = {"unguided": cond.embeds, "orig. semantic + sharp. padding": torch.where(padding, sharp.embeds, cond.embeds),
            "sharp. semantic + orig. padding": torch.where(padding, cond.embeds, sharp.embeds), "DICE": sharp.embeds}
    seeds = list(range(len(prompts)))
    images = [generate_from_conditioning(adapter, cond.replace(embeds=e), uncond, seeds, steps=steps, resolution=resolution)
              for e in rows.values()]
    scale = max(1, 128 // images[0][0].size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, list(rows), prompts, scale=scale).save(path)
    return path


def pca(original: torch.Tensor, sharpened: torch.Tensor, out, num_prompts: int) -> dict:
    results, curves, scatter = {}, {}, {}
    for name, x in (("original", original), ("sharpened", sharpened)):
        flat = x.flatten(1).double()
        flat = flat - flat.mean(dim=0)
        u, s, _ = torch.linalg.svd(flat, full_matrices=False)
        share = (s ** 2) / (s ** 2).sum()
        cumulative = share.cumsum(0)
        results[name] = {"top3": cumulative[min(2, len(cumulative) - 1)].item(), "components_80": int((cumulative < 0.8).sum().item()) + 1,
                         "dimension": flat.shape[1]}
        curves[name], scatter[name] = cumulative.tolist(), (u[:, :2] * s[:2]).tolist()
    data = {"figure": "Fig. 11 / A.2: PCA of embeddings", "num_prompts": num_prompts, "pca": results, "paper_sd15": PAPER_PCA,
            "scatter_pc12": scatter}

    def plot(png):
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for name, color in (("original", "C0"), ("sharpened", "C3")):
            points = torch.tensor(scatter[name])
            axes[0].scatter(points[:, 0], points[:, 1], s=4, alpha=0.5, color=color,
                            label=f"{name}: top-3 PCs {results[name]['top3']:.0%}")
            axes[1].plot(range(1, len(curves[name]) + 1), curves[name], color=color,
                         label=f"{name}: {results[name]['components_80']} PCs for 80%")
        axes[0].set_title("first two principal components (each set)", fontsize=10)
        axes[0].legend(fontsize=8)
        axes[1].axhline(0.8, linestyle="--", color="grey")
        axes[1].set_xscale("log")
        axes[1].set_xlabel("principal components")
        axes[1].set_ylabel("explained variance (cumulative)")
        axes[1].legend(fontsize=8)
        return save_figure(fig, png, f"PCA of {num_prompts} flattened embeddings (paper Fig. 11)")
    return write_figure(out, "embedding_pca", data, plot)


def _parser(prog: str, description: str) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model_arguments(p)
    p.add_argument("--prompts", default="coco5k", help="prompt set or file")
    p.add_argument("--num_prompts", type=positive_int, default=1000, help="the paper's 1,000")
    return p


def semantic_padding_cli(argv=None):
    p = _parser("figures/semantic_padding.py", __doc__)
    p.add_argument("--panel_prompts", type=positive_int, default=4, help="prompts in the image-replacement panel")
    p.add_argument("--steps", type=positive_int, default=20, help="sampling steps of the panel")
    p.add_argument("--resolution", type=positive_int, default=None, help="panel image size (default: the model's)")
    args = p.parse_args(argv)
    quiet_threads()
    prompts = prompt_texts(args.prompts, args.num_prompts)
    adapter, sharpener, config = load_model_and_sharpener(args)
    resolution = args.resolution or config.training_options.get("resolution")
    return semantic_padding(adapter, sharpener, prompts, Path(args.out), args.panel_prompts, args.steps, resolution)


def pca_cli(argv=None):
    args = _parser("figures/embedding_pca.py", __doc__).parse_args(argv)
    quiet_threads()
    prompts = prompt_texts(args.prompts, args.num_prompts)
    adapter, sharpener, _ = load_model_and_sharpener(args)
    original, sharpened, _ = embeddings(adapter, sharpener, prompts)
    return pca(original, sharpened, Path(args.out), len(prompts))
