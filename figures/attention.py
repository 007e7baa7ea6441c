"""Cross-attention maps of the UNet decoder (paper Fig. 9, and the trajectory of Fig. 20).

The stock UNet is sampled as usual; a recording attention processor, set on the decoder's
cross-attention layers (``up_blocks.*.attn2``) with diffusers' ``set_attn_processor``, computes each
layer's softmax(QKᵀ/√d) over the text tokens before handing the call to the layer's own processor,
so the images are exactly the stock pipeline's. Maps are averaged over heads and over the layers at
one resolution (paper: 32×32 at 512 px, i.e. half the latent size; ``--map_size``), and for CFG the
conditional half is kept. Rows: unguided, CFG, DICE from the same noise; columns: the image, then a
map per prompt token, then the mean over the padding tokens (where DICE changes most, §4.3).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dice.errors import ArgumentParser, guidance_scale, positive_int
from dice.methods.dice import keeps_first_token, sharpen_for_pipeline
from dice.runtime import quiet_threads
from dice.sampling import generate_from_conditioning
from evaluation.plotting import pyplot, save_figure, write_figure

from .common import load_model_and_sharpener, model_arguments
from .embeddings import end_of_text_positions


class AttentionRecorder:
    """Collects [steps][tokens, size, size] maps from the processors it installs (one sampling call)."""

    def __init__(self, map_size: int, conditional_half: bool):
        self.map_size, self.conditional_half = map_size, conditional_half
        self.steps: list[torch.Tensor] = []
        self._current: list[torch.Tensor] = []

    def record(self, probs: torch.Tensor, batch: int) -> None:
        heads = probs.shape[0] // batch
        probs = probs.float().reshape(batch, heads, *probs.shape[1:]).mean(dim=1)  # [B, HW, T]
        if self.conditional_half:
            probs = probs[batch // 2:]  # CFG batches are [uncond, cond]
        side = int(round(probs.shape[1] ** 0.5))
        if side == self.map_size:
            self._current.append(probs[0].T.reshape(-1, side, side).cpu())

    def end_step(self, pipe, step, timestep, kwargs):
        if self._current:
            self.steps.append(torch.stack(self._current).mean(dim=0))
        self._current = []
        return kwargs


class RecordingProcessor:
    """Wraps a layer's processor: records the cross-attention probabilities, then runs it unchanged."""

    def __init__(self, inner, recorder: AttentionRecorder):
        self.inner, self.recorder = inner, recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            with torch.no_grad():
                query = attn.head_to_batch_dim(attn.to_q(hidden_states))
                key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
                self.recorder.record(attn.get_attention_scores(query, key, None), hidden_states.shape[0])
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


def decoder_map_sizes(unet, latent_size: int) -> list[int]:
    """Side lengths of the decoder's cross-attention levels for a latent of ``latent_size``."""
    sizes, side = [], latent_size // 2 ** (len(unet.config.block_out_channels) - 1)
    for block in unet.up_blocks:
        if getattr(block, "has_cross_attention", False):
            sizes.append(side)
        side *= 2 if block.upsamplers else 1
    return sizes


@torch.no_grad()
def sample_with_maps(adapter, cond, uncond, seed: int, cfg_scale: float, steps: int, resolution: int, map_size: int):
    unet = adapter.pipe.unet
    saved = unet.attn_processors
    recorder = AttentionRecorder(map_size, conditional_half=cfg_scale > 1)
    unet.set_attn_processor({name: RecordingProcessor(proc, recorder) if name.startswith("up_blocks") and ".attn2." in name else proc
                             for name, proc in saved.items()})
    try:
        image = generate_from_conditioning(adapter, cond, uncond, [seed], cfg_scale=cfg_scale, steps=steps,
                                           resolution=resolution, callback=recorder.end_step)[0]
    finally:
        unet.set_attn_processor(saved)
    return image, torch.stack(recorder.steps)  # [steps, tokens, size, size]


def token_labels(adapter, prompt: str) -> tuple[list[str], int]:
    """The prompt's tokens (without BOS/EOS) and the end-of-text position."""
    end = int(end_of_text_positions(adapter, [prompt])[0])
    ids = adapter.pipe.tokenizer(prompt, truncation=True, max_length=adapter.num_tokens).input_ids
    first = 1 if keeps_first_token(adapter) else 0
    tokens = adapter.pipe.tokenizer.convert_ids_to_tokens(ids[first:end])
    return [t.replace("</w>", "") for t in tokens], end


def attention_maps(adapter, sharpener, prompt: str, out, cfg_scale: float = 5.0, steps: int = 20, seed: int = 0,
                   resolution: int | None = None, map_size: int | None = None) -> dict:
    resolution = resolution or adapter.default_resolution
    latent = resolution // adapter.vae_scale_factor
    sizes = decoder_map_sizes(adapter.pipe.unet, latent)
    wanted = map_size or latent // 2
    map_size = wanted if wanted in sizes else max((s for s in sizes if s <= wanted), default=max(sizes))
    cond, uncond = adapter.encode_prompts([prompt]), adapter.encode_negative([""])
    sharp, uncond = sharpen_for_pipeline(adapter, cond, uncond, sharpener, 1.0)
    methods = {"unguided": (cond, 1.0), f"CFG w={cfg_scale:g}": (cond, cfg_scale), "DICE": (sharp, 1.0)}
    tokens, end = token_labels(adapter, prompt)
    first = 1 if keeps_first_token(adapter) else 0
    rows = {}
    for name, (c, w) in methods.items():
        image, maps = sample_with_maps(adapter, c, uncond, seed, w, steps, resolution, map_size)
        rows[name] = (image, maps)
    columns = tokens + ["padding (mean)"]

    def per_token(maps: torch.Tensor) -> torch.Tensor:  # [steps, T, s, s] -> [len(columns), s, s], mean over steps
        mean = maps.mean(dim=0)
        return torch.cat([mean[first:end], mean[end:].mean(dim=0, keepdim=True)])

    stats = {name: {"padding_attention_share": maps.mean(dim=(0, 2, 3))[end:].sum().item() / maps.mean(dim=(0, 2, 3)).sum().item(),
                    "padding_map_change_over_steps": (maps[1:, end:].mean(dim=1) - maps[:-1, end:].mean(dim=1)).abs().mean().item()}
             for name, (_, maps) in rows.items()}
    data = {"figure": "Fig. 9 / 20: cross-attention maps", "prompt": prompt, "map_size": map_size, "available_sizes": sizes,
            "tokens": columns, "steps": steps, "seed": seed, "stats": stats, "trajectory": str(out / "attention_trajectory.png")}

    def plot(png):
        plt = pyplot()
        fig, axes = plt.subplots(len(rows), len(columns) + 1, figsize=(1.3 * (len(columns) + 1), 1.45 * len(rows)), squeeze=False)
        for r, (name, (image, maps)) in enumerate(rows.items()):
            axes[r][0].imshow(image)
            axes[r][0].set_ylabel(name, fontsize=8)
            for c, tile in enumerate(per_token(maps)):
                axes[r][c + 1].imshow(tile, cmap="inferno")
                if r == 0:
                    axes[r][c + 1].set_title(columns[c], fontsize=7)
            for ax in axes[r]:
                ax.set_xticks([])
                ax.set_yticks([])
        trajectory(rows, end, out / "attention_trajectory.png", steps)
        return save_figure(fig, png, f"decoder cross-attention {map_size}×{map_size}, mean over {steps} steps: '{prompt}'")
    return write_figure(out, "attention_maps", data, plot)


def trajectory(rows: dict, end: int, path, steps: int, columns: int = 6):
    """Fig. 20: the padding tokens' mean map along the sampling trajectory, per method."""
    plt = pyplot()
    picks = sorted({round(k * (steps - 1) / (columns - 1)) for k in range(columns)})
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(1.3 * len(picks), 1.45 * len(rows)), squeeze=False)
    for r, (name, (_, maps)) in enumerate(rows.items()):
        for c, step in enumerate(picks):
            axes[r][c].imshow(maps[step, end:].mean(dim=0), cmap="inferno")
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(f"step {step + 1}", fontsize=7)
        axes[r][0].set_ylabel(name, fontsize=8)
    return save_figure(fig, path, "padding tokens' attention along the trajectory (paper Fig. 20)")


def cli(argv=None):
    p = ArgumentParser(prog="figures/attention_maps.py", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model_arguments(p)
    p.add_argument("--prompt", default="a photo of an astronaut riding a horse", help="the prompt whose maps are drawn")
    p.add_argument("--cfg_scale", type=guidance_scale, default=5.0)
    p.add_argument("--steps", type=positive_int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=positive_int, default=None, help="image size (default: the sharpener's training size)")
    p.add_argument("--map_size", type=positive_int, default=None, help="side of the maps (default: half the latent, the paper's 32 at 512 px)")
    args = p.parse_args(argv)
    quiet_threads()
    adapter, sharpener, config = load_model_and_sharpener(args)
    resolution = args.resolution or config.training_options.get("resolution")
    return attention_maps(adapter, sharpener, args.prompt, Path(args.out), args.cfg_scale, args.steps, args.seed, resolution, args.map_size)
