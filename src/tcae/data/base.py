"""Shared machinery of the datasets: the epoch counter and per-sample seeded transforms.

Exact resume of training needs every random crop to be a function of ``(seed, epoch, index)``
only, not of the global RNG state, the number of DataLoader workers or which worker served a
sample. So each dataset derives one seed per sample (:func:`sample_seed`) and applies its
transform inside :func:`seeded_rng`, which seeds torch's global CPU generator (and Python's
``random``) for the duration of the call and restores them afterwards; device (CUDA...)
generators are left alone. Any torchvision transform, including a
user-supplied one, therefore becomes reproducible without being rewritten.

The epoch lives in a shared-memory tensor (:class:`EpochMixin`), so ``dataset.set_epoch(e)``
in the main process is seen by persistent DataLoader workers too.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

Transform = Callable[[Image.Image], Any]
SPLITS = ("train", "val")  # the split names a data spec may end in (`builtin:digits:val`, `folder:train`)
FASHION_SPLITS = ("train", "val", "test")  # Fashion-MNIST: val is carved from the official train split
_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int | str) -> int:
    """A well-mixed 63-bit seed for one sample, a pure function of its arguments.

    ``index`` may be a string (the key of a WebDataset sample); it is hashed stably (not with
    Python's randomised ``hash``).
    """
    if isinstance(index, str):
        # Tag 1 keeps string keys apart from integer indices.
        words = [1, int.from_bytes(hashlib.blake2b(index.encode("utf-8"), digest_size=8).digest(), "little")]
    else:
        words = [0, index & _MASK64]
    words += [seed & _MASK64, epoch & _MASK64]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator and Python's ``random`` for the block, then restore both.

    Only the CPU generator is seeded: ``torch.manual_seed`` would also re-seed every CUDA (MPS,
    XPU...) generator, which ``fork_rng(devices=[])`` does not restore.
    """
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)


def make_sample(image: Image.Image, label: int, transform: Transform, seed: int) -> dict[str, Any]:
    """Apply ``transform`` under ``seed`` and build the sample dict.

    Returns ``{"image": FloatTensor (3, H, W) in [-1, 1], "label": int, "seed": int, ...}``.
    A transform returning a dict (e.g. :class:`~tcae.data.transforms.MultiCropTransform`) has
    its keys merged in; without an ``"image"`` key, ``"image"`` is its first global crop (the
    reconstruction input). ``"seed"`` lets collate functions derive reproducible masks.
    """
    with seeded_rng(seed):
        out = transform(image)
    sample: dict[str, Any] = {}
    if isinstance(out, dict):
        sample.update(out)
        if "image" not in sample and out.get("global_crops"):
            sample["image"] = out["global_crops"][0]
    else:
        sample["image"] = out
    sample["label"] = int(label)
    sample["seed"] = seed
    return sample


class EpochMixin:
    """Adds ``set_epoch`` / ``epoch`` backed by shared memory (visible to DataLoader workers)."""

    def _init_epoch(self) -> None:
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops (and shard order) are served next."""
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])


def class_names_of(dataset: Any) -> list[str]:
    """The class names of `dataset`, indexed by label (``names[label]``): a folder's sub-folder names, a
    built-in's class names; [] when unlabelled or unknown. Wrappers (``.dataset``) are looked through."""
    names = getattr(dataset, "class_names", None)
    if names is None and getattr(dataset, "dataset", None) is not None:
        return class_names_of(dataset.dataset)
    return [str(n) for n in names or []]
