"""Numbered experiment folders ``exps/00003-<desc>/`` and resolving "3" / a path to a run or checkpoint."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .errors import UserError

DEFAULT_ROOT = "exps"
_RUN_RE = re.compile(r"^(\d{5})-")
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


class ExperimentNotFound(UserError, FileNotFoundError):
    pass


_CLAIM_RE = re.compile(r"^\d{5}$")  # a number being claimed by a starting run (see create_run_dir)


def _runs_by_id(root: Path) -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = {}
    if root.is_dir():
        for entry in root.iterdir():
            match = _RUN_RE.match(entry.name)
            if match and entry.is_dir():
                found.setdefault(int(match.group(1)), []).append(entry)
    return found


def create_run_dir(root: str | os.PathLike, desc: str) -> Path:
    """Make ``root/NNNNN-desc`` with NNNNN = highest id in use + 1 (0 for the first run).

    Runs started at once never share a number: a process claims the number by ``mkdir root/NNNNN``
    (only one can), checks that no finished run took it meanwhile, and renames the claim to
    ``NNNNN-desc``; otherwise it lets go and tries the next number.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    desc = re.sub(r"[^A-Za-z0-9._-]+", "-", desc).strip("-") or "run"
    while True:
        claims = {int(p.name) for p in root.iterdir() if _CLAIM_RE.match(p.name)}
        run_id = max(set(_runs_by_id(root)) | claims, default=-1) + 1
        claim = root / f"{run_id:05d}"
        try:
            claim.mkdir()
        except FileExistsError:
            continue
        if run_id in _runs_by_id(root):  # another process finished its claim between our listing and mkdir
            claim.rmdir()
            continue
        path = root / f"{run_id:05d}-{desc}"
        os.rename(claim, path)
        return path


def resolve_run(spec: str | int | os.PathLike, root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    """A run folder from an experiment id ("3", "00003", 3) or a path."""
    text = str(spec)
    if os.path.isdir(text):
        return Path(text)
    if text.isdigit():
        runs = _runs_by_id(Path(root))
        matches = sorted(runs.get(int(text), []))
        if len(matches) > 1:
            raise ExperimentNotFound(
                f"experiment number {int(text)} is ambiguous under '{root}/': "
                f"{' and '.join(repr(str(p)) for p in matches)}. Pass the run folder itself, or rename one of them"
            )
        if matches:
            return matches[0]
        known = ", ".join(p.name for _, (p, *_) in sorted(runs.items())[-5:]) or "none"
        raise ExperimentNotFound(
            f"no experiment number {int(text)} under '{root}/' (latest there: {known}). "
            "Pass an existing id, a run folder, a checkpoint folder or a .safetensors file; "
            "use --exps_root if your runs live elsewhere."
        )
    raise ExperimentNotFound(
        f"'{text}' is neither an experiment id under '{root}/' nor an existing folder. Pass an experiment number or a path"
    )


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (half-written ``.tmp`` folders are ignored)."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CKPT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | os.PathLike) -> int:
    match = _CKPT_RE.match(Path(path).name)
    if not match:
        raise UserError(f"'{path}' is not a checkpoint-<step> folder. Pass a checkpoint folder of a run, or 'latest'")
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
