"""Shared pieces of the benchmarks: the model setups, device facts, timers and the JSON writer.

Two setups:

* ``tiny``: :func:`dice.tiny.build_tiny_pipeline` ("sd15"), a few thousand parameters, for a CPU
  smoke-level figure.
* ``sd15-full``: the real Stable Diffusion 1.5 architecture (UNet 860M, CLIP ViT-L/14 text encoder
  123M, VAE 84M) built from its configs in code with **random weights** (nothing can be downloaded).
  Speed and memory depend on the architecture, not on the weight values, so the figures stand for
  SD1.5; image quality obviously does not.

Both are wrapped in the real :class:`dice.adapters.sd15.SD15Adapter`, so the benchmarks drive the
same code the training loop and ``sample.py`` run.
"""
from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SETUPS = ("tiny", "sd15-full")

# ---- the real SD1.5 architecture, random weights ---------------------------------------------
# Configs as in runwayml/stable-diffusion-v1-5 (unet/, vae/, text_encoder/, scheduler/ config.json).
SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SD15_TEXT_CONFIG = dict(  # CLIP ViT-L/14 text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
)
SD15_SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="epsilon",
)


def build_sd15_full_pipeline(device: str | torch.device = "cpu", seed: int = 0):
    """A ``StableDiffusionPipeline`` with the SD1.5 architecture and random weights (fp32).

    The modules are constructed directly on ``device`` (random init on a GPU takes a second instead
    of a minute on the CPU). The tokenizer is dice's tiny CLIP BPE tokenizer with
    ``model_max_length=77``: its content does not change the cost, every sequence is padded to 77.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dice.tiny import tiny_clip_tokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny_clip_tokenizer(Path(tmp) / "tokenizer")
    assert tokenizer.model_max_length == 77 and len(tokenizer) < SD15_TEXT_CONFIG["vocab_size"]
    with torch.device(device):
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **SD15_TEXT_CONFIG, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_adapter(setup: str, device: str | torch.device, dtype: torch.dtype, seed: int = 0):
    """The setup's pipeline inside the real SD1.5 adapter, frozen, on ``device`` in ``dtype``."""
    from dice.adapters.sd15 import SD15Adapter

    if setup == "tiny":
        from dice.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline("sd15", seed=seed)
        pipe.set_progress_bar_config(disable=True)
        name = "tiny-sd15"
    elif setup == "sd15-full":
        pipe = build_sd15_full_pipeline(device, seed=seed)
        name = "random-sd15"
    else:
        raise ValueError(f"unknown setup {setup!r}; choose one of {SETUPS}")
    adapter = SD15Adapter(pipe, name)
    adapter.freeze(device, dtype)
    return adapter


def parameter_counts(adapter) -> dict[str, int]:
    pipe = adapter.pipe
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "text_encoder", "vae")}


# Captions from the tiny vocabulary (every word is one token of dice's tiny tokenizer).
_CAPTION_WORDS = ("a photo of a {} {} {} next to a {} {}",)
_COLORS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple")
_THINGS = ("cat", "dog", "bird", "car", "house", "tree", "boat", "flower", "ball", "cup", "chair", "apple")


def captions(n: int) -> list[str]:
    out = []
    for i in range(n):
        out.append(_CAPTION_WORDS[0].format(
            ("small", "large", "bright", "dark")[i % 4], _COLORS[i % 8], _THINGS[i % 12],
            _COLORS[(i + 3) % 8], _THINGS[(i + 5) % 12]))
    return out


# ---- device facts, timing, memory --------------------------------------------------------------
def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})"


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def set_threads(requested: int | None, device: torch.device) -> None:
    """On the CPU use ``requested`` threads, 1 by default.

    On a shared 2-core machine with other jobs running, torch's OpenMP threads spin-wait against each
    other: a tiny 20-step generation took 5-20 s with 2 threads and 0.5 s with 1 (measured here).
    """
    if requested:
        torch.set_num_threads(requested)
    elif device.type == "cpu":
        torch.set_num_threads(1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(result, seconds) of ``fn()``, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak GPU memory since the last reset, or the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return {
            "peak_gpu_memory_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "peak_gpu_memory_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
        }
    # ru_maxrss is in KiB on Linux; it is the peak of the whole process (model building included).
    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def summarize(seconds: list[float]) -> dict:
    return {
        "median_s": round(statistics.median(seconds), 6),
        "mean_s": round(statistics.fmean(seconds), 6),
        "min_s": round(min(seconds), 6),
        "max_s": round(max(seconds), 6),
        "all_s": [round(s, 6) for s in seconds],
    }


def environment(device: torch.device) -> dict:
    import accelerate
    import diffusers
    import transformers

    env = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu_memory_total_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 2)
    return env


CPU_NOTE = ("CPU figures are from a shared 2-core development machine while other jobs (test suites, demos) "
            "were running: they are noisy, order-of-magnitude only, and say nothing about GPU speed. torch used 1 "
            "CPU thread (--threads): with 2 threads on the loaded machine OpenMP threads contended and a tiny "
            "generation took 10x longer.")


def write_result(kind: str, setup: str, device: torch.device, result: dict, out_dir: str | None = None,
                 tag: str | None = None) -> list[Path]:
    """Write ``<kind>-<setup>-<device-slug>[-<tag>].json`` to benchmarks/results/ (and ``out_dir``); print it."""
    text = json.dumps(result, indent=2) + "\n"
    name = f"{kind}-{setup}-{device_slug(device)}{'-' + tag if tag else ''}.json"
    paths = []
    for folder in [RESULTS_DIR] + ([Path(out_dir)] if out_dir else []):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        paths.append(path)
    print(text, end="")
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return paths


def common_arguments(parser) -> None:
    a = parser.add_argument
    a("--setup", choices=SETUPS, required=True, help="tiny: tiny SD1.5 pipeline (CPU); sd15-full: real SD1.5 architecture, random weights")
    a("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a("--batch", type=int, default=None, help="images per batch (default: the setup's)")
    a("--resolution", type=int, default=None, help="image side in pixels (default: the setup's)")
    a("--seed", type=int, default=0)
    a("--out", default=os.environ.get("OUT"), help="extra folder for the JSON (default: $OUT when set)")
    a("--threads", type=int, default=None, help="torch CPU threads (default on the CPU: 1, see CPU_NOTE; unchanged on a GPU)")
    a("--tag", default=None, help="suffix of the result file name, for a run off the setup's defaults (e.g. batch1)")
