"""Data for TC-AE: datasets named by spec strings, transforms, iBOT multi-crop and block masking.

Typical use::

    from tcae.data import build_dataset, build_loader, set_loader_epoch

    ds = build_dataset("builtin:photos", image_size=256, train=True, seed=0)
    loader = build_loader(ds, batch_size=32, train=True, num_workers=4, seed=0)
    for epoch in range(start_epoch, epochs):
        set_loader_epoch(loader, epoch, start_batch=resume_batch if epoch == start_epoch else 0)
        for batch in loader:
            batch["image"]  # (B, 3, 256, 256) in [-1, 1]

Self-supervised (iBOT) training swaps in :class:`MultiCropTransform` and :class:`MultiCropCollate`.
Modules: ``spec`` (spec strings), ``folder``, ``builtin``, ``fashion``, ``shards`` (datasets), ``decode`` (RGB
conversion), ``transforms``, ``masking``, ``loader``, ``base`` (per-sample seeding).

The names are imported on first use (PEP 562): ``tcae.data.decode`` and ``tcae.data.folder`` work
without torchvision or webdataset (the lean install's inference commands read images through them).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_LAZY = {
    "BlockMaskGenerator": "tcae.data.masking",
    "DataSpec": "tcae.data.spec",
    "DigitsDataset": "tcae.data.builtin",
    "FASHION_CLASSES": "tcae.data.fashion",
    "FashionMNISTDataset": "tcae.data.fashion",
    "IMAGE_EXTENSIONS": "tcae.data.decode",
    "ImageFolderDataset": "tcae.data.folder",
    "MaskedTokens": "tcae.data.masking",
    "MultiCropCollate": "tcae.data.masking",
    "MultiCropTransform": "tcae.data.transforms",
    "PhotosDataset": "tcae.data.builtin",
    "ResumableSampler": "tcae.data.loader",
    "SPEC_HELP": "tcae.data.spec",
    "ShardDataset": "tcae.data.shards",
    "build_dataset": "tcae.data.spec",
    "build_loader": "tcae.data.loader",
    "check_spec": "tcae.data.spec",
    "dataset_num_classes": "tcae.data.spec",
    "eval_loader": "tcae.data.loader",
    "eval_transform": "tcae.data.transforms",
    "split_spec": "tcae.data.spec",
    "find_images": "tcae.data.folder",
    "load_rgb": "tcae.data.decode",
    "local_crop_size": "tcae.data.transforms",
    "parse_spec": "tcae.data.spec",
    "photo_names": "tcae.data.builtin",
    "read_idx": "tcae.data.fashion",
    "set_loader_epoch": "tcae.data.loader",
    "to_rgb": "tcae.data.decode",
    "train_transform": "tcae.data.transforms",
    "write_shards": "tcae.data.shards",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tcae.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
