"""VAE latents of every training image, encoded once (``--latent_cache DIR``).

With a cache, a training step reads latents instead of decoding a JPEG, cropping, resizing and
running the VAE encoder on it: at 512 px the SD1.5 VAE encoder costs 1.4x the FLOPs of a UNet forward
pass, a third of the rest of the step (benchmarks/README.md). The cache is built before the
first step, sharded over the processes, and reused by every later run on the same data, VAE and
resolution.

What is stored: the posterior **mean**, scaled (``Adapter.encode_images``, the live path), so a run
with the cache computes the losses it computes without one (to float32 rounding: a convolution's
result for one image varies in the last bits with the rest of its batch). The authors' script draws
``latent_dist.sample()`` afresh at every step; a cache can only freeze one such draw (the same
"random" offset at every epoch: neither their augmentation nor deterministic) or store mean and
standard deviation to redraw it (twice the disk). The posterior's spread enters the loss only
inside ``x_t``, next to the forward process's own noise; we keep the mean and the live path's numbers.

A folder holds ``latent_cache.json`` (what wrote it: VAE class, config digest, dtype, resolution,
the image list's digest, a probe image's latents) and ``latents-NNNNN.safetensors`` shards of
``SHARD_SIZE`` consecutive images with ``latents`` [n, C, h, w] (the VAE's dtype), ``sizes`` [n, 4]
(original height and width, crop top and left: SDXL's micro-conditioning) and ``readable`` [n].
Shard k is encoded by process k mod world and written under a temporary name, then renamed: an
interrupted build resumes with the missing shards, on any number of processes. A folder written
for another VAE, dtype, resolution or image list is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .cache_check import refuse_other_writer
from .data import CaptionedImages
from .errors import UserError, give_default_permissions

logger = logging.getLogger("dice")

INDEX_NAME = "latent_cache.json"
FORMAT_VERSION = 1
SHARD_SIZE = 1024


class LatentCacheError(UserError, RuntimeError):
    """The cache folder was written for something else; the message says what to do."""


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _probe_pixels() -> torch.Tensor:
    """A fixed 64x64 image in [-1, 1]: its latents tell one VAE's weights from another's."""
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1


def fingerprint(adapter, resolution: int, records, data_root: str | os.PathLike) -> dict:
    vae = adapter.pipe.vae
    size = resolution // adapter.vae_scale_factor
    return {
        "format_version": FORMAT_VERSION,
        "latents": "posterior mean, shifted and scaled as the denoiser reads them",
        "vae_class": type(vae).__name__,
        "vae_config": _digest({k: v for k, v in dict(vae.config).items() if not k.startswith("_")}),
        "dtype": str(vae.dtype).replace("torch.", ""),
        "resolution": resolution,
        "latent_shape": [adapter.latent_channels, size, size],
        "num_images": len(records),
        "images": _digest([os.path.relpath(r.path, data_root) for r in records]),
    }


def _shard_name(k: int) -> str:
    return f"latents-{k:05d}.safetensors"


class LatentCache:
    """Read access: ``get(index)`` -> (latents, sizes), from memory-mapped shards (worker-safe)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = json.loads((self.folder / INDEX_NAME).read_text())
        self.num_images = index["fingerprint"]["num_images"]
        self.shard_size = index["shard_size"]
        self._open: dict[int, tuple] = {}

    def __getstate__(self):  # DataLoader workers open their own handles
        return {**self.__dict__, "_open": {}}

    def _shard(self, k: int):
        if k not in self._open:
            handle = safe_open(str(self.folder / _shard_name(k)), framework="pt")
            self._open[k] = (handle, handle.get_tensor("readable"))
        return self._open[k]

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents [C, h, w] and sizes [4] of image ``index``; OSError if it was unreadable when cached."""
        k, row = divmod(index, self.shard_size)
        handle, readable = self._shard(k)
        if not readable[row]:
            raise OSError(f"image {index} was unreadable when the latent cache {self.folder} was built")
        return handle.get_slice("latents")[row], handle.get_slice("sizes")[row]


class _ShardImages(torch.utils.data.Dataset):
    """Pixels of the images of one shard, with a flag instead of an error for unreadable ones."""

    def __init__(self, images, indices: range):
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        try:
            pixels, sizes = self.images.load_pixels(self.indices[i])
            return pixels, torch.tensor(sizes), True
        except (OSError, ValueError) as err:
            logger.warning("latent cache: unreadable image %s (%s); training skips it", self.images.records[self.indices[i]].path, err)
            res = self.images.resolution
            return torch.zeros(3, res, res), torch.zeros(4, dtype=torch.long), False


def _barrier(accelerator) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


@torch.no_grad()
def build_latent_cache(
    folder: str | os.PathLike, records, data_root: str | os.PathLike, adapter, resolution: int, *,
    accelerator=None, batch_size: int = 16, num_workers: int = 0,
) -> LatentCache:
    """Encode every image not yet in ``folder`` (this process's share of the missing shards)."""
    folder = Path(folder)
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    wanted = fingerprint(adapter, resolution, records, data_root)
    probe = adapter.encode_images(_probe_pixels())[0].float().cpu()
    index_path = folder / INDEX_NAME
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        if not index_path.is_file():
            index = {"fingerprint": wanted, "shard_size": SHARD_SIZE, "probe": probe.tolist()}
            tmp = folder / f".{INDEX_NAME}.tmp"
            tmp.write_text(json.dumps(index, indent=1))
            os.replace(tmp, index_path)
    _barrier(accelerator)
    refuse_other_writer(folder, json.loads(index_path.read_text()), wanted, probe, error=LatentCacheError,
                        cache="latent cache", option="--latent_cache", writer="VAE")

    shard_size = json.loads(index_path.read_text())["shard_size"]
    num_shards = -(-len(records) // shard_size)
    missing = [k for k in range(num_shards) if not (folder / _shard_name(k)).is_file()]
    _barrier(accelerator)  # every process has listed the same missing shards before any is written
    mine = missing[rank::world]
    if rank == 0 and missing:
        logger.info("latent cache %s: encoding %d of %d shard(s) (%d images each) on %d process(es)",
                    folder, len(missing), num_shards, shard_size, world)
    images = CaptionedImages(records, resolution)
    todo = sum(min(shard_size, len(records) - k * shard_size) for k in mine)
    bar = tqdm(total=todo, desc="latent cache", unit="img", disable=rank != 0 or not todo)
    for k in mine:
        indices = range(k * shard_size, min((k + 1) * shard_size, len(records)))
        loader = torch.utils.data.DataLoader(_ShardImages(images, indices), batch_size=batch_size,
                                             num_workers=num_workers, pin_memory=torch.cuda.is_available())
        latents, sizes, readable = [], [], []
        for pixels, size, ok in loader:
            latents.append(adapter.encode_images(pixels).cpu())
            sizes.append(size)
            readable.append(ok)
            bar.update(len(ok))
        shard = {"latents": torch.cat(latents).contiguous(), "sizes": torch.cat(sizes),
                 "readable": torch.cat(readable).to(torch.uint8)}
        tmp = folder / f".{_shard_name(k)}.tmp-{rank}"
        save_file(shard, str(tmp))
        give_default_permissions(tmp)
        os.replace(tmp, folder / _shard_name(k))  # a killed build never leaves a half shard under the final name
    bar.close()
    _barrier(accelerator)
    return LatentCache(folder)
