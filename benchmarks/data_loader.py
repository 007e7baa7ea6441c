"""Images per second of the training data loader, per worker process, and how many workers a GPU needs.

What one worker does per image without a latent cache (dice.data.CaptionedImages): decode a JPEG,
convert to RGB, resize (bilinear, antialiased) so the short side is the training resolution,
centre-crop, convert to a tensor in [-1, 1]. Measured on COCO-like JPEGs written here (640x480,
~140 KB; benchmarks/common.write_jpeg_dataset): in the main process (= one worker's rate), and
through torch's DataLoader with 1..N workers. With ``--latent_cache`` a worker only reads latents
from memory-mapped shards; that rate is measured too (the shards are written with dice's tiny
VAE at the resolution that gives the real latent size, 4 x res/8 x res/8).

    python benchmarks/data_loader.py                        # 512 px (SD1.5, PixArt-alpha 512)
    python benchmarks/data_loader.py --resolution 1024      # SDXL
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402

# Per-GPU training rates (images/s) the loader must keep up with. 7.9: the paper's SD1.5 run (8,000
# updates x 128 images in 4.5 h on 8 A100s); 15.8: twice that (issue 13's target); 38 and 121: 40%
# MFU of an A100 / H100 (312 / 989 dense bf16 TFLOP/s) at 3.28 TFLOP per image, the FLOPs of our
# SD1.5 update at 512 px per image (benchmarks/README.md). Derived, not measured.
DEFAULT_GPU_RATES = (7.9, 15.8, 38.0, 121.0)


def rate(count: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--images", type=int, default=128, help="JPEGs written (each is read once per measurement)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts to time")
    p.add_argument("--gpus_per_node", type=int, default=8)
    p.add_argument("--gpu_images_per_second", type=float, nargs="+", default=list(DEFAULT_GPU_RATES),
                   help="per-GPU training rates to size the workers for")
    p.add_argument("--out", default=None, help="extra folder for the JSON")
    p.add_argument("--tag", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as inside a DataLoader worker

    from dice.adapters.sd15 import SD15Adapter
    from dice.data import CaptionedImages, load_records, make_loader
    from dice.latent_cache import build_latent_cache
    from dice.testkit.tiny import build_tiny_pipeline

    workdir = Path(tempfile.mkdtemp(prefix="dice-loader-"))
    data = common.write_jpeg_dataset(workdir / "images", args.images)
    _, records = load_records(data)
    n = len(records)
    dataset = CaptionedImages(records, args.resolution)

    def decode_all():
        from PIL import Image

        for record in records:
            with Image.open(record.path) as img:
                img.convert("RGB")

    def items_all():
        for i in range(n):
            dataset[(i, i)]

    def loader_rate(workers: int, latent_cache=None) -> float:
        batches = n // args.batch
        loader = iter(make_loader(records, args.resolution, args.batch, 0, 1, seed=0, num_workers=workers,
                                  latent_cache=latent_cache))
        next(loader)  # workers started and warm
        return rate((batches - 1) * args.batch, lambda: [next(loader) for _ in range(batches - 1)])

    decode_all()  # page cache warm, as for a dataset read more than once
    decode_rate = rate(n, decode_all)
    per_worker = statistics.median(rate(n, items_all) for _ in range(3))
    loaders = {str(w): round(loader_rate(w), 2) for w in args.workers}

    tiny = SD15Adapter(build_tiny_pipeline("sd15"), "tiny").freeze("cpu", torch.float32)
    tiny_resolution = args.resolution // 8 * tiny.vae_scale_factor  # latents of the real size
    cache = build_latent_cache(workdir / "latents", records, data, tiny, tiny_resolution, batch_size=args.batch)
    latent_shape = list(cache.get(0)[0].shape)
    cache_rate = loader_rate(0, cache)

    # What one worker delivers to the training process, IPC of the float batches included, when measured.
    worker_rate = loaders.get("1", per_worker)
    workers_needed = {
        str(gpu_rate): {"workers_per_gpu": math.ceil(gpu_rate / worker_rate),
                        f"workers_per_{args.gpus_per_node}_gpu_node": args.gpus_per_node * math.ceil(gpu_rate / worker_rate)}
        for gpu_rate in args.gpu_images_per_second
    }
    result = {
        "benchmark": "data_loader",
        "what": "dice.data.CaptionedImages: JPEG decode + RGB + resize + centre crop + to tensor, per worker; "
                "DataLoader throughput with N workers; latent-cache loader throughput",
        **common.environment(torch.device("cpu")),
        "resolution": args.resolution,
        "jpegs": n,
        "jpeg_size": "640x480",
        "mean_jpeg_kib": round(statistics.fmean(r.path.stat().st_size for r in records) / 1024, 1),
        "decode_only_images_per_second": round(decode_rate, 2),
        "per_worker_images_per_second": round(per_worker, 2),
        "dataloader_images_per_second": loaders,
        "latent_cache_loader": {"latent_shape": latent_shape, "dtype": "float32", "workers": 0,
                                "images_per_second": round(cache_rate, 1)},
        "workers_needed_without_latent_cache": workers_needed,
        "notes": [
            "per_worker: the dataset's __getitem__ in this process with 1 torch thread (what one worker does), median of 3 passes",
            "workers_needed = ceil(per-GPU training rate / images per second of a DataLoader with 1 worker (or "
            "per_worker when not measured)); the rates are derived targets, not measured GPU speeds (DEFAULT_GPU_RATES)",
            "files were read before (page cache warm); a cold network file system adds its own latency",
            common.CPU_NOTE,
        ],
    }
    common.write_result("data_loader", f"{args.resolution}px", torch.device("cpu"), result, args.out, args.tag)
    return result


if __name__ == "__main__":
    main()
