"""Small helpers that several layers need: atomic writes, advisory file locks, image -> uint8, slugs.

The bottom of the package: imports nothing from tcae, so every layer may import it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["LockBusy", "atomic_path", "file_lock", "slug", "to_uint8", "to_uint8_hwc", "write_json_atomic",
           "write_text_atomic"]


# ------------------------------------------------------------------------------ atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path next to ``path``; when the block ends without an exception it replaces ``path``
    (``os.replace``: atomic on POSIX), otherwise it is removed. A reader sees the old file or the new one,
    never half of one. ``fsync`` flushes the temp file to disk before the rename (checkpoints).

    The temp name is hidden and carries the pid, so two processes writing the same file never share one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists() and not tmp.is_dir():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as indented JSON (numpy scalars as floats) to ``path`` atomically: two workers may write
    the same file."""
    write_text_atomic(path, json.dumps(obj, indent=indent, default=float))


# ------------------------------------------------------------------------------ advisory locks
class LockBusy(RuntimeError):
    """Another process holds the lock. ``holder`` is the pid it recorded, when it recorded one."""

    def __init__(self, path: Path, holder: int | None):
        self.path, self.holder = path, holder
        super().__init__(f"{path} is locked" + (f" by process {holder}" if holder else ""))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, wait: bool = True, record_pid: bool = False) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    wait: block until the holder is done; else raise :class:`LockBusy` at once.
    record_pid: write this process's pid into the file while holding it, so a refused process can name
    the holder. The kernel drops the lock when its holder dies (SIGKILL included), so a killed process
    never blocks the next one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            text = f.read().strip()
            raise LockBusy(path, int(text) if text.isdigit() else None) from None
        try:
            if record_pid:
                f.seek(0)
                f.truncate()
                f.write(str(os.getpid()))
                f.flush()
            yield
        finally:
            if record_pid:
                f.seek(0)
                f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------ images
def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (any shape, any device) -> uint8 [0, 255], same shape and device.

    clamp(127.5 x + 128, 0, 255) truncated = round(127.5 (x + 1)) with halves up, as DiT/LightningDiT's
    samplers do (ADM's own sampler truncates instead, i.e. 0.5 lower on average). Every image tcae writes
    (PNG, .npz) and every uint8 image a feature network sees goes through this one rounding.
    """
    return (x.detach().float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8)


def to_uint8_hwc(x: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) or (3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) or (H, W, 3) on the CPU (the
    layout of PNG files and ADM's .npz)."""
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected images (B, 3, H, W) or (3, H, W), got shape {tuple(x.shape)}")
    return to_uint8(x).movedim(-3, -1).contiguous().cpu()


# ------------------------------------------------------------------------------ names
def slug(text: str, keep: str = "-_.") -> str:
    """``text`` with every character that is not alphanumeric or in ``keep`` replaced by '-', no
    leading/trailing '-', and no '--' pairs: safe as a file or folder name."""
    out = "".join(ch if ch.isalnum() or ch in keep else "-" for ch in text).strip("-")
    return out.replace("--", "-")
