"""Shared pieces of the benchmarks: the model setups, device facts, timers and the JSON writer.

Setups:

* ``tiny``: :func:`dice.testkit.tiny.build_tiny_pipeline` ("sd15"), a few thousand parameters, for a CPU
  smoke-level figure.
* ``sd15-full``: the real Stable Diffusion 1.5 architecture (UNet 860M, CLIP ViT-L/14 text encoder
  123M, VAE 84M) built from its configs in code with **random weights** (nothing can be downloaded).
* ``sdxl-full``: SDXL base 1.0 (UNet 2.57B, CLIP ViT-L + OpenCLIP ViT-bigG text encoders, VAE).
* ``pixart-full``: PixArt-alpha 512 (DiT 611M, Flan-T5-XXL encoder 4.76B, VAE).
* ``sd3.5-medium-full``: Stable Diffusion 3.5 Medium (MMDiT-X transformer, CLIP-L and CLIP-G text encoders, the 16-channel
  VAE, flow matching at shift 3) **without T5-XXL**: ``text_encoder_3=None``, a stock configuration in which the pipeline
  fills T5's 256 tokens with zeros, so the transformer and the sharpener see the real shapes (77 + 256 tokens x 4096);
  T5-XXL (4.76B parameters, 9.5 GB in bf16) does not fit beside the transformer in this machine's memory.

Speed and memory depend on the architecture, not on the weight values, so the figures stand for
the real models; image quality obviously does not. Each setup is wrapped in the real adapter of
its family, so the benchmarks drive the same code the training loop and ``sample.py`` run.
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
SETUPS = ("tiny", "sd15-full", "sdxl-full", "pixart-full", "sd3.5-medium-full")
FAMILIES = {"tiny": "sd15", "sd15-full": "sd15", "sdxl-full": "sdxl", "pixart-full": "pixart", "sd3.5-medium-full": "sd3"}

# The real architectures' configs, shared with the ComfyUI tests: dice/testkit/full_size.py.
from dice.testkit.full_size import (  # noqa: E402
    PIXART_SCHEDULER_CONFIG, PIXART_T5_CONFIG, PIXART_TRANSFORMER_CONFIG, SD15_SCHEDULER_CONFIG, SD15_TEXT_CONFIG,
    SD3_CLIP_G_CONFIG, SD3_CLIP_L_CONFIG, SD3_SCHEDULER_CONFIG, SD3_VAE_CONFIG, SD15_SCHEDULER_CONFIG, SD15_TEXT_CONFIG,
    SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD35_MEDIUM_TRANSFORMER_CONFIG, SDXL_SCHEDULER_CONFIG, SDXL_TEXT_2_CONFIG,
    SDXL_UNET_CONFIG, SDXL_VAE_CONFIG,
)


def _clip_tokenizer(folder: Path):
    """dice's tiny CLIP BPE tokenizer (``model_max_length`` 77): its content does not change the cost,
    every sequence is padded to 77 tokens."""
    from dice.testkit.tiny import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer(folder)
    assert tokenizer.model_max_length == 77 and len(tokenizer) < SD15_TEXT_CONFIG["vocab_size"]
    return tokenizer


def _clip_text(config_class, config: dict, tokenizer):
    from transformers import CLIPTextConfig

    return config_class(CLIPTextConfig(**config, bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def build_full_pipeline(setup: str, device: str | torch.device = "cpu", seed: int = 0,
                        text_encoder_dtype: torch.dtype | None = None):
    """The setup's stock pipeline with the real architecture and random weights (fp32).

    The modules are constructed directly on ``device`` (random init on a GPU takes seconds instead
    of minutes on the CPU). ``text_encoder_dtype`` builds PixArt's T5 in that dtype (the adapter
    never casts T5; fp32 T5-XXL is 19 GB).
    """
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        if setup == "sd15-full":
            return build_sd15_full_pipeline(device, Path(tmp))
        if setup == "sdxl-full":
            return build_sdxl_full_pipeline(device, Path(tmp))
        if setup == "pixart-full":
            return build_pixart_full_pipeline(device, text_encoder_dtype)
        if setup == "sd3.5-medium-full":
            return build_sd35_medium_full_pipeline(device, Path(tmp), text_encoder_dtype)
    raise ValueError(f"unknown full-size setup {setup!r}")


def build_sd15_full_pipeline(device, tmp: Path):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = _clip_tokenizer(tmp / "tokenizer")
    with torch.device(device):
        text_encoder = _clip_text(CLIPTextModel, SD15_TEXT_CONFIG, tokenizer)
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sdxl_full_pipeline(device, tmp: Path):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = _clip_tokenizer(tmp / "tokenizer"), _clip_tokenizer(tmp / "tokenizer_2")
    with torch.device(device):
        text_encoder = _clip_text(CLIPTextModel, SD15_TEXT_CONFIG, tokenizer)
        text_encoder_2 = _clip_text(CLIPTextModelWithProjection, SDXL_TEXT_2_CONFIG, tokenizer_2)
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        vae = AutoencoderKL(**SDXL_VAE_CONFIG)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pixart_full_pipeline(device, text_encoder_dtype: torch.dtype | None = None):
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from dice.testkit.tiny import tiny_t5_tokenizer

    tokenizer = tiny_t5_tokenizer()  # pads every prompt to PixArt's 120 tokens, like the real one
    with torch.device(device):
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(text_encoder_dtype or default_dtype)
        try:
            text_encoder = T5EncoderModel(T5Config(**PIXART_T5_CONFIG, pad_token_id=tokenizer.pad_token_id,
                                                   eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0))
        finally:
            torch.set_default_dtype(default_dtype)
        transformer = PixArtTransformer2DModel(**PIXART_TRANSFORMER_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                               scheduler=DPMSolverMultistepScheduler(**PIXART_SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sd35_medium_full_pipeline(device, tmp: Path, dtype: torch.dtype | None = None):
    """SD3.5 Medium without T5 (module docstring), every module built directly in ``dtype``: a 2.5B-parameter fp32
    transformer (10 GB) would set the process's peak memory before any work is measured."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = _clip_tokenizer(tmp / "tokenizer"), _clip_tokenizer(tmp / "tokenizer_2")
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype or default_dtype)
    try:
        with torch.device(device):
            text_encoder = _clip_text(CLIPTextModelWithProjection, SD3_CLIP_L_CONFIG, tokenizer)
            text_encoder_2 = _clip_text(CLIPTextModelWithProjection, SD3_CLIP_G_CONFIG, tokenizer_2)
            transformer = SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER_CONFIG)
            vae = AutoencoderKL(**SD3_VAE_CONFIG)
    finally:
        torch.set_default_dtype(default_dtype)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=None, tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_adapter(setup: str, device: str | torch.device, dtype: torch.dtype, seed: int = 0, **pipeline_options):
    """The setup's pipeline inside the real adapter of its family, frozen, on ``device`` in ``dtype``."""
    from dice.adapters import adapter_class

    if setup == "tiny":
        from dice.testkit.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline("sd15", seed=seed)
        pipe.set_progress_bar_config(disable=True)
    elif setup in SETUPS:
        pipe = build_full_pipeline(setup, device, seed=seed, **pipeline_options)
    else:
        raise ValueError(f"unknown setup {setup!r}; choose one of {SETUPS}")
    adapter = adapter_class(FAMILIES[setup])(pipe, f"random-{setup}")
    adapter.freeze(device, dtype)
    return adapter


def parameter_counts(adapter) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in adapter.pipe.components.items()
            if isinstance(module, torch.nn.Module)}


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


def write_jpeg_dataset(folder: str | Path, num_images: int, size: tuple[int, int] = (640, 480), seed: int = 0,
                       quality: int = 90) -> Path:
    """COCO-like training images: ``num_images`` JPEGs of 640x480 (COCO's most common size) with
    photo-like detail (colour fields at three scales plus sensor-like noise; ~150 KB each, COCO
    train2017 averages ~155 KB), captions in ``metadata.jsonl`` (the imagefolder layout)."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    lines = []
    for i, caption in enumerate(captions(num_images)):
        pixels = 128 + rng.normal(0, 16, size=(height, width, 3))
        for cells, amplitude in ((4, 90), (16, 50), (64, 25)):
            grid = rng.uniform(-amplitude, amplitude, size=(cells * height // width + 1, cells + 1, 3)).astype(np.float32)
            pixels += np.stack([np.asarray(Image.fromarray(grid[..., c]).resize(size, Image.BICUBIC)) for c in range(3)], -1)
        name = f"{i:06d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name, quality=quality)
        lines.append(json.dumps({"file_name": name, "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


# ---- FLOPs and model FLOPs utilisation ---------------------------------------------------------
def count_flops(fn) -> tuple[int, dict[str, int]]:
    """FLOPs of one call of ``fn`` as torch.utils.flop_counter.FlopCounterMode counts them: matrix
    multiplications, convolutions and attention (forward and backward) at the shapes actually run,
    2 FLOPs per multiply-add; element-wise work is not counted. Returns (total, per top-level module)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, depth=1) as counter:
        fn()
    counts = counter.get_flop_counts()
    by_module = {name: sum(ops.values()) for name, ops in counts.items() if name != "Global" and "." not in name}
    return sum(counts.get("Global", {}).values()), by_module


# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' datasheets, TFLOP/s; the first
# name contained in torch.cuda.get_device_name wins.
PEAK_TFLOPS_16BIT = (("H200 NVL", 835.5), ("H100 NVL", 835.5), ("H100 PCIe", 756.5), ("H100", 989.4),
                     ("H200", 989.4), ("A100", 312.0))


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """The device's peak for ``precision`` ("bf16"/"fp16"), or None where we know none (CPUs, fp32)."""
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS_16BIT if key in name), None)


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
