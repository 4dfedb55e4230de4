"""Data spec strings: one string names a dataset the same way for every command.

Accepted forms (see :data:`SPEC_HELP`):

- ``builtin:photos``, ``builtin:photos:train``, ``builtin:photos:val`` — built-in natural photos.
- ``builtin:digits``, ``builtin:digits:train``, ``builtin:digits:val`` — scikit-learn digits, 10 classes.
- ``builtin:fashion[@/path/to/idx-folder][:train|:val|:test]`` — Fashion-MNIST from its idx files,
  10 classes (see :mod:`tcae.data.fashion` for where the files are looked up and how val is carved).
- ``path/to/folder`` — image folder, recursive; one class per first-level sub-folder (when all
  images are in sub-folders). If the folder has ``train/`` and ``val/`` sub-folders, they are the
  splits: ``path/to/folder:val`` selects one explicitly.
- ``path/to/shard.tar``, ``path/to/train-{000000..000127}.tar`` — WebDataset shards (streamed).

Without an explicit split, a spec means its ``train`` split when building a training dataset
(``train=True``) and its ``val`` split otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tcae.data.base import FASHION_SPLITS, SPLITS, Transform

if TYPE_CHECKING:
    from torch.utils.data import Dataset, IterableDataset

# The datasets are imported where they are built: parsing a spec needs neither torchvision (transforms)
# nor webdataset (shards), which the lean install lacks.

SPEC_HELP = """accepted data specs:
  builtin:photos[:train|:val]          built-in natural photos (random crops), unlabelled
  builtin:digits[:train|:val]          scikit-learn digits, upsampled, 10 classes
  builtin:fashion[@DIR][:train|:val|:test]  Fashion-MNIST idx files (DIR, $TCAE_FASHION_MNIST,
                                       torchvision's root or /usr/share/datasets/fashion-mnist),
                                       padded to 32 px, 10 classes; val is carved from train
  path/to/folder[:train|:val]          image folder (recursive; .jpg .jpeg .png .webp .bmp .tif
                                       .tiff .gif); a class per sub-folder; :train/:val pick sub-folders
  path/shard.tar, path/s-{000..127}.tar  WebDataset tar shards (streamed)
without a split, the train split is used for training and the val split otherwise"""

BUILTINS = ("photos", "digits", "fashion")
MAX_UPSCALE = 4  # folder images whose shorter side is under image_size / 4 are skipped as too small
BUILTIN_SPLITS = {"photos": SPLITS, "digits": SPLITS, "fashion": FASHION_SPLITS}


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec: ``kind`` in {"photos", "digits", "fashion", "folder", "shards"}, ``target``
    (a path, the shard spec, or the built-in's name), ``split`` ("train", "val", "test" (fashion
    only) or None when not given), ``root`` (the ``@folder`` of ``builtin:fashion@folder``)."""

    kind: str
    target: str
    split: str | None = None
    root: str | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits this kind of data has."""
        return BUILTIN_SPLITS.get(self.kind, SPLITS)


def _error(spec: str, why: str, exc: type[Exception] = ValueError) -> Exception:
    return exc(f"data spec {spec!r}: {why}\n{SPEC_HELP}")


def parse_spec(spec: str) -> DataSpec:
    """Parse a spec string; raises ``ValueError`` (bad form) or ``FileNotFoundError`` (no such path)."""
    if not isinstance(spec, str) or not spec:
        raise _error(str(spec), "empty or not a string")
    if spec.startswith("builtin:"):
        parts = spec.split(":")
        name, at, root = parts[1].partition("@")
        if len(parts) > 3 or name not in BUILTINS:
            raise _error(spec, f"unknown built-in dataset (known: {', '.join(BUILTINS)})")
        if at and (name != "fashion" or not root):
            raise _error(spec, "only builtin:fashion takes a folder (builtin:fashion@/path/to/idx-files)")
        split = parts[2] if len(parts) == 3 else None
        if split is not None and split not in BUILTIN_SPLITS[name]:
            raise _error(spec, f"unknown split {split!r} (known: {', '.join(BUILTIN_SPLITS[name])})")
        return DataSpec(name, name, split, root or None)
    if os.path.isdir(spec):
        return DataSpec("folder", spec)
    if spec.endswith(".tar") or ("{" in spec and ".." in spec):
        return DataSpec("shards", spec)
    base, _, split = spec.rpartition(":")
    if base and split in SPLITS and os.path.isdir(base):
        return DataSpec("folder", base, split)
    if os.path.exists(spec):
        raise _error(spec, "is a file, not a folder of images or a .tar shard")
    raise _error(spec, "no such folder", FileNotFoundError)


def _folder_root(spec: str, parsed: DataSpec, train: bool) -> str:
    """The directory to scan: the split sub-folder when one is named or the folder has both."""
    has_splits = all(os.path.isdir(os.path.join(parsed.target, s)) for s in SPLITS)
    split = parsed.split or (("train" if train else "val") if has_splits else None)
    if split is None:
        return parsed.target
    root = os.path.join(parsed.target, split)
    if not os.path.isdir(root):
        raise _error(spec, f"split folder {root!r} does not exist", FileNotFoundError)
    return root


def check_spec(spec: str, train: bool = True) -> DataSpec:
    """Parse `spec` and check that what it names is there, without reading any image: the folder (its
    split sub-folder where one applies) or every local shard file. Commands call it before they print or
    write anything. Raises ``ValueError`` / ``FileNotFoundError`` as :func:`build_dataset` would."""
    parsed = parse_spec(spec)
    if parsed.kind == "folder":
        _folder_root(spec, parsed, train)
    elif parsed.kind == "shards":
        from tcae.data.shards import expand_shards, is_remote

        missing = [u for u in expand_shards(parsed.target) if not is_remote(u) and not os.path.isfile(u)]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise _error(spec, f"shard file(s) not found: {missing[:3]}{more}", FileNotFoundError)
    return parsed


def build_dataset(
    spec: str,
    image_size: int,
    train: bool = True,
    transform: Transform | None = None,
    seed: int = 0,
    epoch_size: int | None = None,
    channels: int = 3,
) -> Dataset | IterableDataset:
    """The dataset a spec names (see the module docstring for the forms).

    Args:
        spec: data spec string.
        image_size: side of the square output images.
        train: random augmentation (and the train split when the spec names none), else
            deterministic resize + center crop (and the val split).
        transform: replaces the default transform: PIL RGB -> tensor (3, H, W) in [-1, 1], or ->
            dict merged into the sample (e.g. :class:`~tcae.data.transforms.MultiCropTransform`).
        seed: base seed of the per-sample random crops (and shard shuffling).
        epoch_size: samples per epoch where the data does not fix it: ``builtin:photos`` (virtual
            length; default 1000 for training) and shards (all ranks together; default from the
            shards' meta.json, else one pass). Ignored for folders, digits and fashion.
        channels: 3, or 1 for a model with ``in_channels=1`` (gray data only: ``builtin:fashion``
            and ``builtin:digits``, whose 3 channels are copies of one).

    Returns:
        A map-style dataset (photos, digits, fashion, folder) or an ``IterableDataset`` (shards) of
        samples ``{"image": FloatTensor (channels, image_size, image_size) in [-1, 1], "label": int
        (-1 if unlabelled), "seed": int}`` (plus the keys of a dict-returning ``transform``).
    """
    from tcae.data.builtin import DigitsDataset, PhotosDataset
    from tcae.data.fashion import FashionMNISTDataset, OneChannel
    from tcae.data.folder import ImageFolderDataset
    from tcae.data.shards import ShardDataset
    from tcae.data.transforms import eval_transform, train_transform

    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    parsed = parse_spec(spec)
    if channels != 3 and not (channels == 1 and parsed.kind in ("fashion", "digits")):
        raise _error(spec, f"channels={channels}: only the gray built-ins (builtin:fashion, builtin:digits) are "
                     "served with 1 channel; everything else has 3")
    if parsed.kind == "fashion":
        split = parsed.split or ("train" if train else "val")
        return FashionMNISTDataset(split, image_size, transform, seed=seed, channels=channels, root=parsed.root)
    if parsed.kind == "photos":
        split = parsed.split or ("train" if train else "val")
        return PhotosDataset(split, image_size, transform, seed=seed, epoch_size=epoch_size, train=train)
    if parsed.kind == "digits":
        split = parsed.split or ("train" if train else "val")
        digits = DigitsDataset(split, image_size, transform, seed=seed)
        return digits if channels == 3 else OneChannel(digits)
    transform = transform or (train_transform(image_size) if train else eval_transform(image_size))
    if parsed.kind == "shards":
        try:
            return ShardDataset(parsed.target, transform, train=train, seed=seed, epoch_size=epoch_size)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}\n{SPEC_HELP}") from None
    # an image under a quarter of the training size would be upscaled more than 4x: a blur, not data
    return ImageFolderDataset(_folder_root(spec, parsed, train), transform, seed=seed,
                              min_side=max(1, image_size // MAX_UPSCALE))


def dataset_num_classes(spec: str) -> int:
    """Number of classes of the data a spec names (0 when unlabelled or unknown).

    Folders are scanned (as for training); shards report their meta.json's ``num_classes``.
    """
    from tcae.data.builtin import DigitsDataset
    from tcae.data.fashion import FashionMNISTDataset
    from tcae.data.folder import ImageFolderDataset
    from tcae.data.shards import read_meta

    parsed = parse_spec(spec)
    if parsed.kind == "digits":
        return DigitsDataset.num_classes
    if parsed.kind == "fashion":
        return FashionMNISTDataset.num_classes
    if parsed.kind == "photos":
        return 0
    if parsed.kind == "shards":
        return int(read_meta(parsed.target).get("num_classes", 0))
    root = _folder_root(spec, parsed, train=True)
    return ImageFolderDataset(root, transform=lambda image: image, check_files=False).num_classes


def with_split(data_spec: str, split: str) -> str:
    """`data_spec`'s `split`, whether or not it names another one ("builtin:fashion:train" -> ":val", a
    folder's "DIR:train" -> "DIR:val"); unchanged where the data has no such split (a folder without split
    sub-folders, shards): :func:`split_spec` on the spec without its split."""
    parsed = parse_spec(data_spec)
    if parsed.split is None:
        return split_spec(data_spec, split)
    base = data_spec.rsplit(":", 1)[0]
    return split_spec(base, split)


def split_spec(data_spec: str, split: str) -> str:
    """`data_spec` naming its `split` ("train", "val", or "test" for builtin:fashion) explicitly where the spec
    grammar allows one.

    Built-in data and image folders with train/ and val/ sub-folders get ":train"/":val" appended (a
    spec that already names a split is returned unchanged); a folder without split sub-folders and
    WebDataset shards have no splits, so the spec is returned as it is (the same images either way).
    """
    parsed = parse_spec(data_spec)
    if split not in parsed.splits:
        raise ValueError(f"unknown split {split!r} of {data_spec} (known: {', '.join(parsed.splits)})")
    if parsed.split is not None or parsed.kind == "shards":
        return data_spec
    if parsed.kind == "folder" and not all((Path(parsed.target) / s).is_dir() for s in SPLITS):
        return data_spec
    return f"{data_spec}:{split}"
