"""Atomic training checkpoints: written to a temp file then renamed, so a kill never leaves half a file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

_NAME = re.compile(r"step-(\d+)\.pt$")


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to `path` via a temp file in the same directory + os.replace (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints `step-N.pt` in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: Path) -> Path | None:
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def save_checkpoint(state: dict, directory: Path, step: int, keep_last: int) -> Path:
    """Write `step-N.pt` atomically, then delete all but the newest `keep_last`."""
    path = Path(directory) / f"step-{step:08d}.pt"
    save_atomic(state, path)
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a checkpoint that does not load is named, not a bare unpickling trace
        raise RuntimeError(f"could not read checkpoint {path}: {e}") from e
