"""Built-in datasets that need no download: ``builtin:photos`` and ``builtin:digits``.

``builtin:photos`` — the natural photographs shipped inside installed packages (17 photos,
all read from local package files; the scikit-image images that would need a pooch download are
not used). Gray photos are replicated to 3 channels. The split is fixed, by photo:

- **val** (4): ``chelsea`` (cat), ``china`` (temple), ``moon`` (gray), ``motorcycle``.
- **train** (13): ``astronaut``, ``brick``, ``camera``, ``coffee``, ``coins``, ``flower``,
  ``grace_hopper``, ``grass``, ``gravel``, ``hubble_deep_field``, ``immunohistochemistry``,
  ``retina``, ``rocket``.

Sources: scikit-image (``skimage.data``: astronaut, brick, camera, chelsea, coffee, coins, grass,
gravel, hubble_deep_field, immunohistochemistry, moon, retina, rocket, and the left view of
stereo_motorcycle), scikit-learn (``load_sample_image``: china, flower) and matplotlib
(``get_sample_data``: grace_hopper). A photo that fails to load is skipped with a warning; the
others keep their split, which is assigned by name.

Training crops (``train=True``; the default for the train split): item ``i`` is photo
``i % num_photos``, random resized crop (area 0.2-1 of the photo, aspect 3/4-4/3) to the image
size, horizontal flip, seeded by (seed, epoch, index). The dataset has a virtual length
``epoch_size`` (default 1000) so that an epoch is defined.

Evaluation crops (``train=False``; the default for the val split) are fixed, the same in every
run whatever ``seed`` is, so val metrics compare across runs: item ``i`` is photo
``i % num_photos``; its crop number ``i // num_photos`` is a resize + center crop for crop 0
and a random resized crop (area 0.2-1, no flip) seeded by ``i`` otherwise. Default length 16
crops per photo (64 for val); ``epoch_size`` changes it (a longer set extends a shorter one).
The decoded photos are cached in memory, per process.

``builtin:digits`` — scikit-learn's ``load_digits`` (1797 8x8 gray digits, values 0..16,
classes 0-9), bilinearly upsampled to the image size, replicated to 3 channels, scaled to
[-1, 1] (background -1). Split: stratified 80/20 (``train_test_split(..., test_size=0.2,
stratify=labels, random_state=0)``): 1437 train, 360 val. No augmentation (deterministic).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from tcae.data.base import SPLITS, EpochMixin, Transform, make_sample, sample_seed
from tcae.data.decode import load_rgb, to_rgb
from tcae.data.transforms import eval_transform, train_transform

logger = logging.getLogger(__name__)

PHOTO_VAL = ("chelsea", "china", "moon", "motorcycle")
PHOTOS_TRAIN_SCALE = (0.2, 1.0)
DEFAULT_PHOTOS_EPOCH = 1000
VAL_CROPS_PER_PHOTO = 16
_VAL_SEED = 20240601  # fixed on purpose: val crops must not change with the training seed


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        out = getattr(skimage.data, name)()
        return out[0] if isinstance(out, tuple) else out  # stereo_motorcycle -> (left, right, disp)

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _matplotlib(filename: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        from matplotlib import cbook

        return load_rgb(cbook.get_sample_data(filename, asfileobj=False))

    return load


PHOTO_SOURCES: dict[str, Callable[[], Any]] = {
    "astronaut": _skimage("astronaut"),
    "brick": _skimage("brick"),
    "camera": _skimage("camera"),
    "chelsea": _skimage("chelsea"),
    "china": _sklearn("china.jpg"),
    "coffee": _skimage("coffee"),
    "coins": _skimage("coins"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _matplotlib("grace_hopper.jpg"),
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "moon": _skimage("moon"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "retina": _skimage("retina"),
    "rocket": _skimage("rocket"),
}

_PHOTO_CACHE: dict[str, Image.Image] = {}


def photo_names(split: str) -> list[str]:
    """Names of the photos of ``split`` ("train" or "val"), sorted."""
    _check_split(split)
    return sorted(n for n in PHOTO_SOURCES if (n in PHOTO_VAL) == (split == "val"))


def load_photo(name: str) -> Image.Image:
    """One built-in photo as an RGB PIL image (cached in memory after the first call)."""
    if name not in _PHOTO_CACHE:
        raw = PHOTO_SOURCES[name]()
        image = raw if isinstance(raw, Image.Image) else Image.fromarray(np.asarray(raw, dtype=np.uint8))
        _PHOTO_CACHE[name] = to_rgb(image)
    return _PHOTO_CACHE[name]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


class PhotosDataset(EpochMixin, Dataset):
    """``builtin:photos``: random (training) or fixed (evaluation) crops of the photos of ``split``.

    ``train`` chooses the crops (random or fixed, see the module docstring); by default random
    for the train split and fixed for the val split.

    Item: ``{"image": FloatTensor (3, image_size, image_size) in [-1, 1], "label": -1, "seed": int}``
    (plus the keys of a dict-returning ``transform``, which then receives the whole photo).
    """

    def __init__(
        self,
        split: str,
        image_size: int,
        transform: Transform | None = None,
        seed: int = 0,
        epoch_size: int | None = None,
        train: bool | None = None,
    ) -> None:
        _check_split(split)
        self.split, self.image_size, self.seed = split, image_size, seed
        self.random_crops = split == "train" if train is None else train
        self.names, self.photos = [], []
        for name in photo_names(split):
            try:
                self.photos.append(load_photo(name))
                self.names.append(name)
            except Exception as err:  # a package without its sample data must not break the others
                logger.warning("built-in photo %r unavailable (%s: %s); skipped", name, type(err).__name__, err)
        if not self.photos:
            raise RuntimeError(f"no built-in photo of split {split!r} could be loaded")
        default_len = DEFAULT_PHOTOS_EPOCH if self.random_crops else VAL_CROPS_PER_PHOTO * len(self.photos)
        self.length = int(epoch_size) if epoch_size else default_len
        self.custom_transform = transform
        self._train_crop = train_transform(image_size, scale=PHOTOS_TRAIN_SCALE)
        self._val_center = eval_transform(image_size)
        self._val_crop = train_transform(image_size, scale=PHOTOS_TRAIN_SCALE, flip=False)
        self._init_epoch()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        photo = self.photos[index % len(self.photos)]
        if self.random_crops:
            seed, transform = sample_seed(self.seed, self.epoch, index), self._train_crop
        else:
            seed = sample_seed(_VAL_SEED, 0, index)
            transform = self._val_center if index < len(self.photos) else self._val_crop
        return make_sample(photo, -1, self.custom_transform or transform, seed)


_DIGITS: dict[str, np.ndarray] = {}


def _digits() -> dict[str, np.ndarray]:
    if not _DIGITS:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        images, labels = bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)
        train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
        _DIGITS.update(images=images, labels=labels, train=np.sort(train_idx), val=np.sort(val_idx))
    return _DIGITS


class DigitsDataset(EpochMixin, Dataset):
    """``builtin:digits``: scikit-learn's 8x8 digits upsampled to ``image_size``, labels 0-9.

    Item: ``{"image": FloatTensor (3, image_size, image_size) in [-1, 1], "label": int in 0..9,
    "seed": int}``. A ``transform`` receives the upsampled digit as an RGB PIL image.
    """

    num_classes = 10
    class_names = tuple(str(d) for d in range(10))

    def __init__(self, split: str, image_size: int, transform: Transform | None = None, seed: int = 0) -> None:
        _check_split(split)
        data = _digits()
        self.split, self.image_size, self.seed = split, image_size, seed
        self.indices = data[split]
        self.transform = transform
        self._init_epoch()

    def __len__(self) -> int:
        return len(self.indices)

    def _upsampled(self, index: int) -> torch.Tensor:
        """(3, S, S) in [0, 1]."""
        data = _digits()
        x = torch.from_numpy(data["images"][self.indices[index]])[None, None]
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x[0].clamp(0.0, 1.0).expand(3, -1, -1).contiguous()

    def __getitem__(self, index: int) -> dict[str, Any]:
        label = int(_digits()["labels"][self.indices[index]])
        x = self._upsampled(index)
        if self.transform is None:
            return {"image": x * 2.0 - 1.0, "label": label, "seed": sample_seed(self.seed, self.epoch, index)}
        pil = Image.fromarray((x.permute(1, 2, 0) * 255.0).round().to(torch.uint8).numpy())
        return make_sample(pil, label, self.transform, sample_seed(self.seed, self.epoch, index))
