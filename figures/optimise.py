"""Optimising one prompt's embedding against CFG (paper Fig. 3, the preliminary study behind DICE).

A free residual fitted with DICE's loss (dice.residuals). The figure: unguided, CFG and optimised-unguided images from the same noise, the loss
curve, and how much of the unguided-to-CFG latent distance the optimised embedding closes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dice.adapters import adapter_class
from dice.adapters.registry import detect_family
from dice.checkpoint import read_config, resolve_sharpener_files
from dice.errors import ArgumentParser, check_output_dir, guidance_scale, positive_float, positive_int
from dice.presets import MODELS
from dice.residuals import PromptResiduals, fit_prompt_residuals
from dice.runtime import quiet_threads
from dice.sampling import generate, image_grid, use_scheduler
from evaluation.metrics.guidance_gap import cfg_gap_closed
from evaluation.plotting import pyplot, save_figure, write_figure


def prompt_optimisation(adapter, prompt: str, out: Path, guidance_scale: float = 5.0, fit_steps: int = 300,
                        lr: float = 1e-2, seeds: int = 4, steps: int = 20, resolution: int | None = None,
                        train_data_dir: str | None = None) -> dict:
    use_scheduler(adapter, "dpmsolver++")
    resolution = resolution or adapter.default_resolution
    history: list[float] = []
    residuals = fit_prompt_residuals(adapter, [prompt], train_data_dir, guidance_scale, resolution, fit_steps, lr, history=history)
    prompts, seed_list = [prompt] * seeds, list(range(100, 100 + seeds))  # not the seeds the CFG targets used
    many = PromptResiduals(seeds, *residuals.residual.shape[1:]).to(adapter.device)
    many.residual.data[:] = residuals.residual.data  # the one fitted residual for every seed of the prompt
    common = dict(steps=steps, resolution=resolution)
    latents = {name: generate(adapter, prompts, seed_list, output_type="latent", **common, **kw) for name, kw in (
        ("unguided", {}), ("cfg", {"cfg_scale": guidance_scale}), ("optimised", {"sharpener": many}))}
    images = [adapter.pipe.image_processor.postprocess(adapter.pipe.vae.decode(z / adapter.pipe.vae.config.scaling_factor).sample)
              for z in latents.values()]
    grid = out / "prompt_optimisation_grid.png"
    out.mkdir(parents=True, exist_ok=True)
    image_grid(images, ["unguided", f"CFG w={guidance_scale:g}", "optimised, unguided"], [prompt] * seeds,
               scale=max(1, 128 // images[0][0].size[0])).save(grid)
    data = {"figure": "Fig. 3: single-prompt embedding optimisation", "prompt": prompt, "fit_steps": fit_steps, "lr": lr,
            "targets": "training images" if train_data_dir else "the prompt's own CFG samples", "guidance_scale": guidance_scale,
            "loss_first10": sum(history[:10]) / max(1, len(history[:10])), "loss_last10": sum(history[-10:]) / max(1, len(history[-10:])),
            "cfg_gap_closed": cfg_gap_closed(latents["unguided"], latents["cfg"], latents["optimised"]), "grid": str(grid),
            "residual_norm": residuals.residual.norm().item()}

    def plot(png):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        ax.plot(history, linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("optimisation step")
        ax.set_ylabel("DICE loss (vs CFG)")
        ax.set_title(f"one prompt's embedding; gap closed {data['cfg_gap_closed']:.2f}", fontsize=9)
        return save_figure(fig, png)
    return write_figure(out, "prompt_optimisation", data, plot)


def cli(argv=None):
    p = ArgumentParser(prog="figures/prompt_optimisation.py", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--pretrained_model_name_or_path", help="base model (hub id, folder, file) or a short name of sample.py")
    model.add_argument("--sharpener_path", help="...or the base model a sharpener was trained on (experiment id, folder, Hub id)")
    p.add_argument("--exps_root", default="exps", help="where experiment ids are looked up")
    p.add_argument("--prompt", default="a photo of an astronaut riding a horse")
    p.add_argument("--out", default="results/figures")
    p.add_argument("--guidance_scale", type=guidance_scale, default=5.0, help="CFG's w, the target")
    p.add_argument("--fit_steps", type=positive_int, default=300)
    p.add_argument("--lr", type=positive_float, default=1e-2)
    p.add_argument("--seeds", type=positive_int, default=4, help="images per row")
    p.add_argument("--steps", type=positive_int, default=20, help="sampling steps")
    p.add_argument("--resolution", type=positive_int, default=None)
    p.add_argument("--train_data_dir", default=None, help="noised latents of these images (default: the prompt's own CFG samples)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    args = p.parse_args(argv)
    check_output_dir(args.out, "--out")
    quiet_threads()

    name = args.pretrained_model_name_or_path
    if args.sharpener_path:
        name = read_config(resolve_sharpener_files(args.sharpener_path, args.exps_root)[1]).base_model
    family, model = MODELS.get(name, (None, name))
    family = family or detect_family(model) or "sd15"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    adapter = adapter_class(family).from_pretrained(model).freeze(device, torch.float32)
    return prompt_optimisation(adapter, args.prompt, Path(args.out), args.guidance_scale, args.fit_steps, args.lr,
                               args.seeds, args.steps, args.resolution, args.train_data_dir)
