"""Reading what sample.py wrote (or any image folder / zip), and splitting the work over processes.

A sample folder holds ``00000.png ...``, ``manifest.jsonl`` (one line per finished image:
``{"index", "prompt", "seed", "file"}``) and ``sampling_options.json`` (with ``num_images``).
Images are paired with prompts through the manifest, never by file order. A folder or zip without
a manifest is read as all its images sorted by name (e.g. COCO val2017 for FID reference stats).
"""
from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from dice.errors import UserError
from dice.runtime import process_state

logger = logging.getLogger("dice")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST = "manifest.jsonl"
SAMPLING_OPTIONS = "sampling_options.json"


class IncompleteSamplesError(UserError, RuntimeError):
    """A sample folder has fewer finished images than its sampling_options.json promises."""


class ImagesNotFound(UserError, FileNotFoundError):
    pass


class SampleFolderError(UserError, ValueError):
    """A sample folder's own files cannot be read."""


@dataclass(frozen=True)
class ImageRecord:
    index: int  # prompt index (from the manifest) or position in name order
    name: str  # file name relative to the folder / zip root
    prompt: str | None = None


class _FolderReader:
    def __init__(self, root: Path):
        self.root = root

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def read_bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def image_names(self) -> list[str]:
        names = []
        for directory, _, files in os.walk(self.root):
            for file in files:
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    names.append(os.path.relpath(os.path.join(directory, file), self.root).replace(os.sep, "/"))
        return sorted(names)


class _ZipReader:
    def __init__(self, path: Path):
        self.path = path
        self._zip, self._pid = None, None
        with zipfile.ZipFile(path) as file:
            self._names = set(file.namelist())

    def _file(self) -> zipfile.ZipFile:
        # One handle per process: a ZipFile shared across forked DataLoader workers is not safe.
        if self._zip is None or self._pid != os.getpid():
            self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip

    def __getstate__(self):
        return {**self.__dict__, "_zip": None, "_pid": None}

    def exists(self, name: str) -> bool:
        return name in self._names

    def read_bytes(self, name: str) -> bytes:
        return self._file().read(name)

    def image_names(self) -> list[str]:
        return sorted(n for n in self._names if n.lower().endswith(IMAGE_EXTENSIONS))


@dataclass
class ImageCollection:
    """The images to score, in scoring order, with their prompts when a manifest gives them."""

    path: str
    records: list[ImageRecord]
    sampling_options: dict | None = None
    has_manifest: bool = False
    reader: _FolderReader | _ZipReader = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    def open_image(self, name: str) -> PIL.Image.Image:
        with PIL.Image.open(io.BytesIO(self.reader.read_bytes(name))) as image:
            return image.convert("RGB")


def _read_manifest(reader, path: str) -> dict[int, dict]:
    entries: dict[int, dict] = {}
    text = reader.read_bytes(MANIFEST).decode("utf-8")
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entries[int(entry["index"])] = entry  # a resumed sampler may repeat an index: last wins
        except (ValueError, KeyError, TypeError) as error:
            raise SampleFolderError(
                f"{path}/{MANIFEST} line {line_number} is not a manifest entry ({error}): {line[:200]}. "
                "Delete the manifest and run sample.py again into this folder (it rewrites it)"
            ) from None
    return entries


def _no_prompts(path: str) -> SampleFolderError:
    return SampleFolderError(
        f"{path} has no {MANIFEST} pairing each image with its prompt (lines with 'index', 'prompt', 'file'). "
        "Score a folder written by sample.py (running sample.py again with the same options finishes a "
        "folder and writes its manifest)"
    )


def open_image_collection(path: str | os.PathLike, allow_incomplete: bool = False, need_prompts: bool = False) -> ImageCollection:
    """List the images of a sample folder (through its manifest), a plain folder, or a zip.

    A sample folder must hold every image ``0 .. num_images-1`` of its sampling_options.json, with
    the file present; otherwise IncompleteSamplesError, unless ``allow_incomplete`` (then the
    images present are scored and a warning says how many are missing). A sample folder whose
    sampler was killed before it wrote a manifest is read from its ``NNNNN.png`` files (without prompts).
    ``need_prompts``: refuse a folder without a manifest that gives every image its prompt.
    """
    path = os.path.normpath(str(path))
    if os.path.isdir(path):
        reader = _FolderReader(Path(path))
    elif os.path.isfile(path) and zipfile.is_zipfile(path):
        reader = _ZipReader(Path(path))
    else:
        raise ImagesNotFound(f"image folder or zip not found: {path}. Pass a sample folder, an image folder or a zip")

    sampling_options = None
    if reader.exists(SAMPLING_OPTIONS):
        try:
            sampling_options = json.loads(reader.read_bytes(SAMPLING_OPTIONS).decode("utf-8"))
        except ValueError as error:
            raise SampleFolderError(f"{path}/{SAMPLING_OPTIONS} is not JSON ({error}). Run sample.py again into this folder") from error

    if not reader.exists(MANIFEST):
        names = reader.image_names()
        if sampling_options is not None:  # a sample folder killed before its first manifest: derive one
            entries = {int(n[:-4]): {"file": n} for n in names if n.endswith(".png") and n[:-4].isdigit()}
        elif not names:
            raise ImagesNotFound(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}. Pass a folder or zip of images")
        elif need_prompts:
            raise _no_prompts(path)
        else:
            records = [ImageRecord(index=i, name=name) for i, name in enumerate(names)]
            return ImageCollection(path, records, sampling_options, has_manifest=False, reader=reader)
    else:
        entries = _read_manifest(reader, path)
    expected = sampling_options.get("num_images") if sampling_options else None
    if expected is not None:
        entries = {i: e for i, e in entries.items() if i < expected}  # score exactly the requested images
    present = {i: e for i, e in entries.items() if reader.exists(e["file"])}
    missing_files = [e["file"] for i, e in entries.items() if i not in present]
    problems = []
    if expected is not None and len(entries) < expected:
        listed = f"{MANIFEST} lists" if reader.exists(MANIFEST) else f"there is no {MANIFEST} yet and the folder holds"
        problems.append(f"{listed} {len(entries)} of the {expected} images that {SAMPLING_OPTIONS} expects (num_images)")
    if missing_files:
        problems.append(f"{len(missing_files)} image files listed in {MANIFEST} are missing (e.g. {missing_files[0]})")
    if problems:
        message = f"{path}: " + "; ".join(problems)
        if not allow_incomplete:
            raise IncompleteSamplesError(
                f"{message}. Finish sampling (sample.py resumes where it stopped) or pass --allow_incomplete "
                f"to score the {len(present)} images present."
            )
    if need_prompts and not reader.exists(MANIFEST):
        raise _no_prompts(path)
    if problems:
        logger.warning("%s; scoring the %d images present (--allow_incomplete).", message, len(present))
    if not present:
        raise ImagesNotFound(f"no finished images in {path}. Run sample.py (it resumes where it stopped)")
    records = [ImageRecord(index=i, name=present[i]["file"], prompt=present[i].get("prompt")) for i in sorted(present)]
    return ImageCollection(path, records, sampling_options, has_manifest=reader.exists(MANIFEST), reader=reader)


def center_crop_resize(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """Centre square crop, then Lanczos resize to size×size (EDM dataset_tool's 'center-crop')."""
    width, height = image.size
    crop = min(width, height)
    left, top = (width - crop) // 2, (height - crop) // 2
    return image.crop((left, top, left + crop, top + crop)).resize((size, size), PIL.Image.LANCZOS)


class ToUint8Tensor:
    """PIL image → uint8 [3, H, W] tensor, optionally centre-cropped and resized first."""

    def __init__(self, center_crop_resize: int | None = None):
        self.size = center_crop_resize

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        if self.size:
            image = center_crop_resize(image, self.size)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, collection: ImageCollection, records: list[ImageRecord], transform: Callable):
        self.collection, self.records, self.transform = collection, records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, position: int):
        record = self.records[position]
        return position, self.transform(self.collection.open_image(record.name))


def _collate_as_list(items):
    return [position for position, _ in items], [tensor for _, tensor in items]


def iterate_batches(
    collection: ImageCollection,
    records: list[ImageRecord],
    transform: Callable[[PIL.Image.Image], torch.Tensor],
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "images",
) -> Iterator[tuple[list[ImageRecord], list[torch.Tensor]]]:
    """Yield (records, transformed images) in order; images stay a list (sizes may differ)."""
    loader = torch.utils.data.DataLoader(
        _ImageDataset(collection, records, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate_as_list,
    )
    with tqdm(total=len(records), desc=description, unit="img", disable=not progress) as bar:
        for positions, tensors in loader:
            yield [records[p] for p in positions], tensors
            bar.update(len(positions))


@dataclass
class Processes:
    """Where this process stands among the processes sharing the work (accelerate / torch.distributed)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_accelerate(cls) -> "Processes":
        """Join the processes `accelerate launch` started (a single process when run plainly)."""
        state = process_state(cpu=not torch.cuda.is_available())  # without it, CPU processes never join a group
        return cls(rank=state.process_index, world_size=state.num_processes, device=state.device)

    def shard(self, records: list) -> list:
        """This process's share: every world_size-th item, so shards differ by at most one."""
        return records[self.rank :: self.world_size]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (identity for one process)."""
        return self._all_reduce(tensor, "SUM")

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(tensor, "MAX")

    def _all_reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        reduced = tensor.to(self.device).clone()  # NCCL reduces CUDA tensors only; gloo takes CPU ones
        torch.distributed.all_reduce(reduced, op=getattr(torch.distributed.ReduceOp, op))
        return reduced.to(tensor.device)
