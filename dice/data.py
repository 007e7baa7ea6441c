"""Training data: MS-COCO 2017 captions, or a plain image folder with ``metadata.jsonl``.

Every random choice (which image, which caption) is a pure function of (seed, position), so a run
resumed at step N reads exactly the batches an uninterrupted run reads, on any number of processes.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .errors import UserError

logger = logging.getLogger("dice")

EXPECTED_LAYOUTS = (
    "Pass MS-COCO 2017 (DIR/train2017/*.jpg and DIR/annotations/captions_train2017.json) or an image folder with "
    'DIR/metadata.jsonl (lines {"file_name": "a.jpg", "text": "a caption"}; "text" may be a list of captions)'
)


class DataLayoutError(UserError, FileNotFoundError):
    pass


@dataclass
class ImageRecord:
    path: Path
    captions: list[str]


def _load_coco(root: Path) -> list[ImageRecord]:
    annotations = json.loads(_read_utf8(root / "annotations" / "captions_train2017.json"))
    files = {img["id"]: _text(img["file_name"]) for img in annotations["images"]}
    captions: dict[int, list[str]] = {}
    for ann in annotations["annotations"]:
        captions.setdefault(ann["image_id"], []).append(_text(ann["caption"]).strip())
    return [ImageRecord(root / "train2017" / files[i], caps) for i, caps in sorted(captions.items()) if i in files]


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, found {type(value).__name__} {value!r:.60}")
    return value


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataLayoutError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}). Save it as UTF-8") from None


def _load_imagefolder(root: Path) -> list[ImageRecord]:
    by_file: dict[str, list[str]] = {}
    for lineno, line in enumerate(_read_utf8(root / "metadata.jsonl").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = row["text"]
            texts = [text] if isinstance(text, str) else list(text)
            if not texts:  # training draws one caption per image: an empty list has none to draw
                raise ValueError("\"text\" is an empty list")
            by_file.setdefault(_text(row["file_name"]), []).extend(_text(t) for t in texts)
        except (ValueError, KeyError, TypeError) as err:  # ValueError covers json.JSONDecodeError
            raise DataLayoutError(
                f"{root / 'metadata.jsonl'} line {lineno} is not a JSON object with \"file_name\" and \"text\" "
                f"({type(err).__name__}: {err}). {EXPECTED_LAYOUTS}"
            ) from err
    return [ImageRecord(root / name, caps) for name, caps in by_file.items()]


def load_records(train_data_dir: str | Path) -> tuple[str, list[ImageRecord]]:
    """Recognise the layout of ``train_data_dir``; returns (layout name, records)."""
    root = Path(train_data_dir)
    if not root.is_dir():
        raise DataLayoutError(f"--train_data_dir '{root}' does not exist or is not a folder. {EXPECTED_LAYOUTS}")
    coco_json = root / "annotations" / "captions_train2017.json"
    if coco_json.is_file() or (root / "train2017").is_dir():
        if not (coco_json.is_file() and (root / "train2017").is_dir()):
            raise DataLayoutError(f"'{root}' looks like MS-COCO but is incomplete. {EXPECTED_LAYOUTS}")
        try:
            layout, records = "coco2017", _load_coco(root)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise DataLayoutError(
                f"{coco_json} is not a COCO captions file ({type(err).__name__}: {err}). {EXPECTED_LAYOUTS}"
            ) from err
    elif (root / "metadata.jsonl").is_file():
        layout, records = "imagefolder", _load_imagefolder(root)
    else:
        raise DataLayoutError(f"'{root}' has neither a COCO layout nor metadata.jsonl. {EXPECTED_LAYOUTS}")
    if not records:
        raise DataLayoutError(f"'{root}' ({layout}) lists no captioned images. {EXPECTED_LAYOUTS}")
    first = records[:100]  # unreadable images are skipped in training; none at all is a wrong folder
    if not any(record.path.is_file() for record in first):
        raise DataLayoutError(
            f"'{root}' ({layout}) lists images that do not exist (none of the first {len(first)}, e.g. "
            f"'{first[0].path}'). Put the image files where the captions file says, or pass the right --train_data_dir"
        )
    return layout, records


def _mix(*numbers: int) -> int:
    """A 63-bit seed from several integers (stable across runs and platforms)."""
    value = 0x9E3779B97F4A7C15
    for n in numbers:
        value = (value ^ (n & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def step_generator(*keys: int) -> torch.Generator:
    """A CPU generator keyed by e.g. (seed, step, micro_step, rank): resumable by construction."""
    return torch.Generator().manual_seed(_mix(*keys))


class CaptionedImages(torch.utils.data.Dataset):
    """Items are addressed by ``(index, caption_seed)``; returns pixels in [-1, 1] and one caption,
    or with a ``latent_cache`` (:mod:`dice.latent_cache`) the image's cached VAE latents instead.

    An unreadable image is replaced by the next readable one and counted in ``skipped``.
    """

    def __init__(self, records: list[ImageRecord], resolution: int, max_skip: int = 50, latent_cache=None):
        from torchvision import transforms

        self.records = records
        self.resolution = resolution
        self.max_skip = max_skip
        self.latent_cache = latent_cache
        # SPEC section 4: centre crop, resize, no flip.
        self.resize = transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True)
        self.crop = transforms.CenterCrop(resolution)
        self.to_tensor = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.records)

    def load_pixels(self, index: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """Image ``index`` decoded, resized, centre-cropped; with (original h, w, crop top, left)."""
        with Image.open(self.records[index].path) as img:
            img = img.convert("RGB")
        original = (img.height, img.width)
        img = self.resize(img)
        top, left = max(0, (img.height - self.resolution) // 2), max(0, (img.width - self.resolution) // 2)
        img = self.crop(img)
        return self.to_tensor(img) * 2.0 - 1.0, (*original, top, left)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, caption_seed = key
        for skipped in range(self.max_skip):
            candidate = (index + skipped) % len(self.records)
            try:
                if self.latent_cache is None:
                    pixels, sizes = self.load_pixels(candidate)
                    item = {"pixels": pixels, "sizes": torch.tensor(sizes)}
                else:
                    latents, sizes = self.latent_cache.get(candidate)
                    item = {"latents": latents, "sizes": sizes}
            except (OSError, ValueError) as err:
                logger.warning("skipping unreadable image %s (%s)", self.records[candidate].path, err)
                continue
            caption = random.Random(caption_seed).choice(self.records[candidate].captions)
            return {**item, "caption": caption, "skipped": skipped}
        raise RuntimeError(f"{self.max_skip} consecutive unreadable images from {self.records[index].path}; "
                           "check the data folder")


def collate(items: list[dict]) -> dict:
    name = "latents" if "latents" in items[0] else "pixels"
    return {
        name: torch.stack([x[name] for x in items]),
        "captions": [x["caption"] for x in items],
        "sizes": torch.stack([x["sizes"] for x in items]),
        "skipped": sum(x["skipped"] for x in items),
    }


class ShardBatches(torch.utils.data.Sampler):
    """Infinite per-process batches of dataset keys, starting at micro-batch ``start``.

    Process ``rank`` owns indices ``rank::world``; each pass over its shard uses a fresh
    permutation keyed by (seed, epoch, rank), and each caption choice by (seed, epoch, index).
    """

    def __init__(self, num_items: int, batch_size: int, rank: int, world: int, seed: int, start: int = 0):
        self.shard = list(range(rank, num_items, world)) or list(range(num_items))
        self.batch_size, self.rank, self.seed, self.start = batch_size, rank, seed, start

    def _permutation(self, epoch: int) -> list[int]:
        order = torch.randperm(len(self.shard), generator=step_generator(self.seed, epoch, self.rank)).tolist()
        return [self.shard[i] for i in order]

    def __iter__(self):
        position = self.start * self.batch_size
        epoch, perm = -1, []
        while True:
            batch = []
            for _ in range(self.batch_size):
                e, offset = divmod(position, len(self.shard))
                if e != epoch:
                    epoch, perm = e, self._permutation(e)
                batch.append((perm[offset], _mix(self.seed, epoch, perm[offset])))
                position += 1
            yield batch


def make_loader(records, resolution, batch_size, rank, world, seed, start_batch=0, num_workers=0, latent_cache=None):
    dataset = CaptionedImages(records, resolution, latent_cache=latent_cache)
    sampler = ShardBatches(len(dataset), batch_size, rank, world, seed, start_batch)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),  # pinned batches reach the GPU without a host synchronisation
    )
