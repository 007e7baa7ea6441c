"""Optimising one prompt's embedding against CFG (paper Fig. 3, the preliminary study behind DICE).

A free residual per prompt (no sharpener, nothing shared between prompts) is fitted with DICE's loss:
the unguided prediction on ``c + r`` against the CFG prediction at ``w`` on noised latents. The
latents are those of a training image folder when one is given, otherwise of the model's own CFG
samples of the prompt (what the optimised unguided sampling should reach). Runs on the model's
device. The figure: unguided, CFG and optimised-unguided images from the same noise, the loss
curve, and how much of the unguided-to-CFG latent distance the optimised embedding closes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..distillation import cfg_teacher
from ..methods.dice import sharpen
from ..errors import ArgumentParser, guidance_scale, positive_float, positive_int


class PromptResiduals(nn.Module):
    """A free residual per prompt, in place of a sharpener: ``forward`` returns it whatever ``c``.

    Only valid for the prompt list it was fitted on, in that order and all in one batch.
    """

    def __init__(self, num_prompts: int, num_tokens: int, dim: int):
        super().__init__()
        self.residual = nn.Parameter(torch.zeros(num_prompts, num_tokens, dim))

    def forward(self, c: torch.Tensor, u: torch.Tensor, u_mask: torch.Tensor | None = None) -> torch.Tensor:
        if c.shape != self.residual.shape:
            raise ValueError(f"fitted for embeddings {tuple(self.residual.shape)}, got {tuple(c.shape)}")
        return self.residual


def _latent_batches(adapter, prompts, train_data_dir, guidance_scale, resolution, seed, samples_per_prompt=4):
    """An endless supply of (x0 latents [len(prompts), ...], sizes) for the fit."""
    from ..data import load_records, make_loader

    if train_data_dir is not None:
        _, records = load_records(train_data_dir)
        loader = make_loader(records, resolution, len(prompts), 0, 1, seed)
        while True:
            for batch in loader:
                yield adapter.encode_images(batch["pixels"]), batch["sizes"]
    from ..sampling import generate

    # The prompt's own CFG images: samples_per_prompt seeds each, cycled through.
    pool = [generate(adapter, prompts, [seed * 1000 + k * len(prompts) + i for i in range(len(prompts))],
                     cfg_scale=guidance_scale, resolution=resolution, output_type="latent") for k in range(samples_per_prompt)]
    sizes = torch.tensor([[resolution, resolution, 0, 0]] * len(prompts))
    while True:
        yield from ((latents, sizes) for latents in pool)


def fit_prompt_residuals(adapter, prompts: list[str], train_data_dir: str | Path | None, guidance_scale: float,
                         resolution: int, steps: int, lr: float = 1e-2, seed: int = 0, history: list | None = None,
                         after_step=None) -> PromptResiduals:
    """Fit free per-prompt residuals with the DICE loss (squared error, uniform timesteps, CFG target at
    ``guidance_scale``) on noised latents (of ``train_data_dir``'s images, else of the prompts' own CFG
    samples), on the adapter's device; one batch holds every prompt. ``history`` collects the losses;
    ``after_step(steps_done, residuals)`` is called after every step (e.g. to score the fit so far)."""
    from tqdm.auto import tqdm

    from ..data import step_generator
    from ..distillation import distillation_loss

    adapter.freeze(adapter.device, adapter.dtype)  # no gradients into the model, wherever it lives
    device = adapter.device
    cond = adapter.encode_prompts(prompts)
    uncond = adapter.encode_negative([""] * len(prompts))
    residuals = PromptResiduals(len(prompts), *cond.embeds.shape[1:]).to(device)
    optimizer = torch.optim.Adam(residuals.parameters(), lr=lr)
    batches = _latent_batches(adapter, prompts, train_data_dir, guidance_scale, resolution, seed)
    for step in tqdm(range(steps), desc="fitting free per-prompt residuals", leave=False):
        latents, sizes = next(batches)
        gen = step_generator(seed, step)
        timesteps = torch.randint(0, adapter.num_train_timesteps, (len(prompts),), generator=gen).to(device)
        noise = torch.randn(latents.shape, generator=gen).to(device, latents.dtype)
        x_t = adapter.add_noise(latents, noise, timesteps)
        teacher = cfg_teacher(adapter, x_t, timesteps, cond, uncond, guidance_scale, sizes.to(device))
        sharpened = sharpen(adapter, residuals, cond.to(dtype=torch.float32), uncond.to(dtype=torch.float32))
        student = adapter.predict_noise(x_t, timesteps, sharpened.to(dtype=adapter.dtype), sizes.to(device))
        loss = distillation_loss(student.float(), teacher.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if history is not None:
            history.append(loss.item())
        if after_step is not None:
            after_step(step + 1, residuals)
    return residuals.requires_grad_(False)


def prompt_optimisation(adapter, prompt: str, out: Path, guidance_scale: float = 5.0, fit_steps: int = 300,
                        lr: float = 1e-2, seeds: int = 4, steps: int = 20, resolution: int | None = None,
                        train_data_dir: str | None = None) -> dict:
    from ..demo import cfg_gap_closed
    from ..sampling import generate, image_grid, use_scheduler
    from .common import finish, pyplot, save_figure

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
    return finish(out, "prompt_optimisation", data, plot)


def cli(argv=None):
    import argparse

    from ..adapters import adapter_class
    from ..errors import check_output_dir
    from .common import quiet_threads

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
    from ..adapters.registry import detect_family
    from ..presets import MODELS

    name = args.pretrained_model_name_or_path
    if args.sharpener_path:
        from ..checkpoint import read_config, resolve_sharpener_files

        name = read_config(resolve_sharpener_files(args.sharpener_path, args.exps_root)[1]).base_model
    family, model = MODELS.get(name, (None, name))
    family = family or detect_family(model) or "sd15"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    adapter = adapter_class(family).from_pretrained(model).freeze(device, torch.float32)
    return prompt_optimisation(adapter, args.prompt, Path(args.out), args.guidance_scale, args.fit_steps, args.lr,
                               args.seeds, args.steps, args.resolution, args.train_data_dir)
