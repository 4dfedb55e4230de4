"""Generated samples in the layout of ADM's evaluator (openai/guided-diffusion `evaluations/`).

The evaluator reads `np.load(path)["arr_0"]`: uint8 (N, H, W, 3), RGB, channels last. Like ADM's
class-conditional sampler we add the labels as `arr_1` (int64 (N,)), which the evaluator ignores. Large sample
sets (50k x 256 x 256 x 3 = 9.8 GB) are written through a memory-mapped temporary `.npy` by
`NpzSampleWriter`, so they never have to fit in memory.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from tcae.util import atomic_path


def _check_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"samples must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")


def _labels(labels: np.ndarray | torch.Tensor | None, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    return labels


def save_samples_npz(
    images_uint8: np.ndarray | torch.Tensor, path: str | os.PathLike, labels: np.ndarray | torch.Tensor | None = None,
    compress: bool = False,
) -> None:
    """Write uint8 (N, H, W, 3) samples as `arr_0` (and labels (N,) as `arr_1`) of a .npz, atomically;
    uncompressed unless `compress` (`np.load` and ADM's evaluator read both)."""
    images = images_uint8.numpy() if isinstance(images_uint8, torch.Tensor) else np.asarray(images_uint8)
    _check_images(images)
    labels = _labels(labels, images.shape[0])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        save = np.savez_compressed if compress else np.savez
        save(f, arr_0=images, **({} if labels is None else {"arr_1": labels}))


def load_samples_npz(path: str | os.PathLike) -> np.ndarray:
    """`arr_0` of an ADM-style sample file, checked to be uint8 (N, H, W, 3)."""
    with np.load(path) as data:
        if "arr_0" not in data:
            raise ValueError(f"{path}: no 'arr_0' array (keys: {list(data.keys())}); expected ADM's sample layout")
        images = data["arr_0"]
    _check_images(images)
    return images


def load_sample_labels(path: str | os.PathLike) -> np.ndarray | None:
    """`arr_1` (the class labels, int64 (N,)) of a sample file, or None when it has none."""
    with np.load(path) as data:
        return data["arr_1"].astype(np.int64) if "arr_1" in data else None


class NpzSampleWriter:
    """Fill an (N, H, W, 3) uint8 sample file batch by batch, then `close()` to write `path` (.npz).

    Batches go into a memory-mapped `.npy` next to `path`; `close()` stores it as `arr_0.npy` in an
    uncompressed zip (what `np.savez` writes), with the labels as `arr_1.npy`, and removes it.
    """

    def __init__(self, path: str | os.PathLike, num: int, height: int, width: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._npy = self.path.with_name(self.path.name + ".arr_0.npy")
        self._array = np.lib.format.open_memmap(self._npy, mode="w+", dtype=np.uint8, shape=(num, height, width, 3))
        self.count = 0

    def write(self, images_uint8: np.ndarray | torch.Tensor) -> None:
        images = images_uint8.numpy() if isinstance(images_uint8, torch.Tensor) else np.asarray(images_uint8)
        _check_images(images)
        n = images.shape[0]
        if self.count + n > self._array.shape[0]:
            raise ValueError(f"writing {n} more samples would exceed the {self._array.shape[0]} allocated")
        self._array[self.count:self.count + n] = images
        self.count += n

    def close(self, labels: np.ndarray | torch.Tensor | None = None) -> None:
        """Write the .npz (with `labels` (N,) as `arr_1` when given) and remove the temporary file."""
        n = self._array.shape[0]
        if self.count != n:
            raise ValueError(f"only {self.count} of {n} samples were written")
        labels = _labels(labels, n)
        self._array.flush()
        del self._array
        with atomic_path(self.path) as tmp, \
                zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.write(self._npy, "arr_0.npy")
            if labels is not None:
                with zf.open("arr_1.npy", "w") as f:
                    np.lib.format.write_array(f, labels)
        self._npy.unlink()
