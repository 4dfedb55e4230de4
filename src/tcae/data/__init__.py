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
"""

from tcae.data.builtin import DigitsDataset, PhotosDataset, photo_names
from tcae.data.decode import IMAGE_EXTENSIONS, load_rgb, to_rgb
from tcae.data.fashion import FASHION_CLASSES, FashionMNISTDataset, read_idx
from tcae.data.folder import ImageFolderDataset, find_images
from tcae.data.loader import ResumableSampler, build_loader, set_loader_epoch
from tcae.data.masking import BlockMaskGenerator, MultiCropCollate
from tcae.data.shards import ShardDataset, write_shards
from tcae.data.spec import SPEC_HELP, DataSpec, build_dataset, dataset_num_classes, parse_spec
from tcae.data.transforms import MultiCropTransform, eval_transform, local_crop_size, train_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPEC_HELP",
    "BlockMaskGenerator",
    "DataSpec",
    "DigitsDataset",
    "FASHION_CLASSES",
    "FashionMNISTDataset",
    "ImageFolderDataset",
    "MultiCropCollate",
    "MultiCropTransform",
    "PhotosDataset",
    "ResumableSampler",
    "ShardDataset",
    "build_dataset",
    "build_loader",
    "dataset_num_classes",
    "eval_transform",
    "find_images",
    "load_rgb",
    "local_crop_size",
    "parse_spec",
    "photo_names",
    "read_idx",
    "set_loader_epoch",
    "to_rgb",
    "train_transform",
    "write_shards",
]
