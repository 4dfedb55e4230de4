"""Training checkpoints that never execute code, written atomically.

A checkpoint holds only tensors, numbers, strings, None and plain containers (dict/list/tuple): RNG states
are tensors or lists, the config is YAML text. It is read with `torch.load(weights_only=True)`, so a file
that holds any other object (a pickled callable could run code) is refused with an error naming it.
Writes go to a temp file in the same directory, then `os.replace`: a kill never leaves half a file, and a
failed write (disk full) removes its temp file and keeps every earlier checkpoint.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from tcae.util import atomic_path

_NAME = re.compile(r"step-(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or holds something other than tensors and plain data."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. disk full); earlier checkpoints are intact."""


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to `path` via a temp file in the same directory + os.replace (atomic on POSIX).
    On failure the temp file is removed and CheckpointWriteError names the file and the cause."""
    try:
        with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        raise CheckpointWriteError(f"could not write checkpoint {path}: {e}") from e


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
    """Write `step-N.pt` atomically, then delete all but the newest `keep_last`.

    If the write fails, nothing is deleted and CheckpointWriteError says which checkpoint is the last good one."""
    path = Path(directory) / f"step-{step:08d}.pt"
    try:
        save_atomic(state, path)
    except CheckpointWriteError as e:
        last = latest_checkpoint(directory)
        raise CheckpointWriteError(f"{e}. Stopped; the last good checkpoint is {last or 'none'} "
                                   "(free disk space, then resume=auto)") from e.__cause__
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint with weights_only=True; anything but tensors and plain data is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise CheckpointError(
            f"refused checkpoint {path}: it holds objects other than tensors and plain data, which could run "
            f"code when loaded ({first[:200]}). tcae checkpoints never do: was it written by another program "
            "or an older tcae?") from None
    except Exception as e:  # a truncated or foreign file is named, not a bare trace
        raise CheckpointError(f"could not read checkpoint {path}: {e}") from None
