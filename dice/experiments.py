"""Numbered experiment folders ``exps/00003-<desc>/`` and resolving "3" / a path to a run or checkpoint."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

DEFAULT_ROOT = "exps"
_RUN_RE = re.compile(r"^(\d{5})-")
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


class ExperimentNotFound(FileNotFoundError):
    pass


def _runs(root: Path) -> dict[int, Path]:
    found = {}
    if root.is_dir():
        for entry in root.iterdir():
            match = _RUN_RE.match(entry.name)
            if match and entry.is_dir():
                found[int(match.group(1))] = entry
    return found


def create_run_dir(root: str | os.PathLike, desc: str) -> Path:
    """Make ``root/NNNNN-desc`` with NNNNN = highest existing id + 1 (0 for the first run)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    desc = re.sub(r"[^A-Za-z0-9._-]+", "-", desc).strip("-") or "run"
    while True:  # exist_ok=False makes concurrent launches take different ids
        run_id = max(_runs(root), default=-1) + 1
        path = root / f"{run_id:05d}-{desc}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def resolve_run(spec: str | int | os.PathLike, root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    """A run folder from an experiment id ("3", "00003", 3) or a path."""
    text = str(spec)
    if os.path.isdir(text):
        return Path(text)
    if text.isdigit():
        runs = _runs(Path(root))
        if int(text) in runs:
            return runs[int(text)]
        known = ", ".join(p.name for _, p in sorted(runs.items())[-5:]) or "none"
        raise ExperimentNotFound(
            f"no experiment number {int(text)} under '{root}/' (latest there: {known}). "
            "Pass an existing id, a run folder, a checkpoint folder or a .safetensors file; "
            "use --exps_root if your runs live elsewhere."
        )
    raise ExperimentNotFound(f"'{text}' is neither an experiment id under '{root}/' nor an existing folder.")


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (half-written ``.tmp`` folders are ignored)."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CKPT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | os.PathLike) -> int:
    match = _CKPT_RE.match(Path(path).name)
    if not match:
        raise ValueError(f"'{path}' is not a checkpoint-<step> folder")
    return int(match.group(1))


def validation_grid_path(run_dir: str | os.PathLike, step: int) -> Path:
    """Where a run keeps the unguided / CFG / DICE grid of the checkpoint at ``step``."""
    return Path(run_dir) / "validation" / f"step-{step:06d}.png"


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete the oldest checkpoints so at most ``keep`` remain; returns what was removed."""
    if not keep or keep <= 0:
        return []
    ckpts = list_checkpoints(run_dir)
    removed = ckpts[: max(0, len(ckpts) - keep)]
    for path in removed:
        shutil.rmtree(path)
    return removed


def remove_incomplete_checkpoints(run_dir: str | os.PathLike) -> None:
    for path in Path(run_dir).glob(".checkpoint-*.tmp"):
        shutil.rmtree(path, ignore_errors=True)
