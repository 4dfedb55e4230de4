"""``builtin:fashion``: Fashion-MNIST (Xiao et al. 2017) read from its standard idx files.

70,000 28x28 grayscale images of 10 clothing classes (60,000 train, 10,000 test). Nothing is
bundled; the four idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped or not) are looked up, first
found wins:

1. an explicit folder: the spec ``builtin:fashion@/path/to/folder[:split]``, else the environment
   variable ``TCAE_FASHION_MNIST`` (an explicit folder without the files is an error, never skipped);
2. torchvision's ``FashionMNIST`` layout ``<root>/FashionMNIST/raw/`` with ``<root>`` from
   ``TCAE_DATA_ROOT`` (default ``~/.cache/tcae/data``);
3. the folder of Debian's ``dataset-fashion-mnist`` package, ``/usr/share/datasets/fashion-mnist``.

Where none has the files and the download host answers within a few seconds, torchvision downloads
them into (2) (``TCAE_NO_DOWNLOAD=1`` forbids it); otherwise the error names all three ways.

Splits: ``train`` is the official 60k train set minus a validation split carved from it, ``val``
that carved split (for choosing settings), ``test`` the official 10k (for reporting). The carve is
stratified and fixed: of each class's train images (in file order), a permutation by
``numpy.random.default_rng(0)`` puts the first ``count // 12`` into ``val`` (500 per class, 5,000
in all, on the real data) and the rest into ``train`` (55,000). Each split keeps file order.

Items: the 28x28 image padded to ``image_size`` (>= 28; 2 px a side at 32) with exact pixels, no
resampling; scaled to [-1, 1] (x / 127.5 - 1, so the background and the padding are -1); 3
identical channels, or 1 with ``channels=1``; ``label`` 0..9 (:data:`FASHION_CLASSES`). No
augmentation; a ``transform`` receives the padded image as a PIL RGB image.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from tcae.data.base import FASHION_SPLITS, EpochMixin, Transform, make_sample, sample_seed

logger = logging.getLogger(__name__)

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
ENV_FOLDER = "TCAE_FASHION_MNIST"
ENV_DATA_ROOT = "TCAE_DATA_ROOT"
ENV_NO_DOWNLOAD = "TCAE_NO_DOWNLOAD"
DEFAULT_DATA_ROOT = "~/.cache/tcae/data"
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_HOST = ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80)  # torchvision's mirror
VAL_FRACTION_DIVISOR = 12  # val = count // 12 of each class: 5,000 of the 60,000
VAL_SEED = 0
SIDE = 28

# idx type codes (the third magic byte) -> big-endian numpy dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One idx file (``.gz`` or raw) as a numpy array of its declared type and shape.

    The header is checked: two zero bytes, a known type code, the number of dimensions, and a data
    size that matches the dimensions exactly. Raises ValueError naming the file otherwise.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"idx file {str(path)!r} could not be read: {err}") from None
    if len(data) < 4:
        raise ValueError(f"idx file {str(path)!r} is too short ({len(data)} bytes) to hold an idx header")
    magic = int.from_bytes(data[:4], "big")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"idx file {str(path)!r} has magic number 0x{magic:08x}, not an idx header "
                         "(0x0000TTNN: type TT in 08 09 0b 0c 0d 0e, NN dimensions); the file is corrupt or "
                         "not an idx file")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"idx file {str(path)!r} is truncated inside its header ({ndim} dimensions declared)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"idx file {str(path)!r} declares shape {dims} ({expected} data bytes) but holds "
                         f"{len(data) - header}; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``array`` (uint8, any shape) as an idx file, gzipped when ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _file_in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_files(folder: Path) -> bool:
    return all(_file_in(folder, name) is not None for name in FASHION_FILES.values())


def torchvision_folder() -> Path:
    """``<TCAE_DATA_ROOT or ~/.cache/tcae/data>/FashionMNIST/raw``: where torchvision keeps (and
    downloads) the files."""
    return Path(os.environ.get(ENV_DATA_ROOT) or DEFAULT_DATA_ROOT).expanduser() / "FashionMNIST" / "raw"


def _missing_message(explicit: Path | None) -> str:
    names = ", ".join(f"{n}[.gz]" for n in FASHION_FILES.values())
    lead = (f"Fashion-MNIST idx files ({names}) not found in {str(explicit)!r}" if explicit is not None else
            f"Fashion-MNIST idx files ({names}) not found")
    return (f"{lead}. Three ways to provide them:\n"
            f"  1. a folder with the four files: builtin:fashion@/path/to/folder, or {ENV_FOLDER}=/path/to/folder;\n"
            f"  2. torchvision's layout {str(torchvision_folder())!r} (root from {ENV_DATA_ROOT}; "
            "`torchvision.datasets.FashionMNIST(root, download=True)` fills it where a network is reachable);\n"
            f"  3. Debian's package: `apt-get install dataset-fashion-mnist` (installs {str(DEBIAN_FOLDER)!r}).")


def network_reachable(host: tuple[str, int] = DOWNLOAD_HOST, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (name lookup included:
    it runs in a daemon thread, so an offline resolver cannot block for longer)."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(host, timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _download(folder: Path) -> bool:
    """Download the files with torchvision into ``folder`` (torchvision's layout) where allowed and
    reachable; True when they are there afterwards."""
    if os.environ.get(ENV_NO_DOWNLOAD) or not network_reachable():
        return False
    from torchvision.datasets import FashionMNIST

    logger.info("downloading Fashion-MNIST with torchvision into %s", folder.parent.parent)
    try:
        for train in (True, False):
            FashionMNIST(str(folder.parent.parent), train=train, download=True)
    except Exception as err:  # a failed download leaves the not-found error to speak
        logger.warning("Fashion-MNIST download failed: %s: %s", type(err).__name__, err)
        return False
    return _has_files(folder)


def find_fashion_folder(explicit: str | os.PathLike | None = None) -> Path:
    """The folder holding the four idx files (see the module docstring for the search order).

    ``explicit`` (the ``@path`` of a spec) comes first, then ``$TCAE_FASHION_MNIST``; either one
    without the files is a FileNotFoundError, not a reason to look elsewhere.
    """
    chosen = explicit if explicit else os.environ.get(ENV_FOLDER)
    if chosen:
        folder = Path(chosen).expanduser()
        if _has_files(folder):
            return folder
        raise FileNotFoundError(_missing_message(folder))
    for folder in (torchvision_folder(), DEBIAN_FOLDER):
        if _has_files(folder):
            return folder
    if _download(torchvision_folder()):
        return torchvision_folder()
    raise FileNotFoundError(_missing_message(None))


_CACHE: dict[str, dict[str, Any]] = {}


def _check_pair(images: np.ndarray, labels: np.ndarray, what: str, folder: Path) -> None:
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE) or images.dtype != np.uint8:
        raise ValueError(f"Fashion-MNIST {what} images in {str(folder)!r}: expected uint8 (N, {SIDE}, {SIDE}), "
                         f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"Fashion-MNIST {what} labels in {str(folder)!r}: expected ({images.shape[0]},) to match "
                         f"the images, got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_CLASSES)):
        raise ValueError(f"Fashion-MNIST {what} labels in {str(folder)!r} are outside 0..{len(FASHION_CLASSES) - 1}")


def carve_val(labels: np.ndarray, divisor: int = VAL_FRACTION_DIVISOR, seed: int = VAL_SEED
              ) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices), both sorted: per class, ``count // divisor`` images drawn by a
    permutation of ``default_rng(seed)`` go to val (see the module docstring)."""
    rng = np.random.default_rng(seed)
    val = []
    for c in range(len(FASHION_CLASSES)):
        idx = np.flatnonzero(labels == c)
        val.append(idx[rng.permutation(len(idx))[: len(idx) // divisor]])
    val_idx = np.sort(np.concatenate(val))
    if len(val_idx) == 0:
        raise ValueError(f"the Fashion-MNIST train file has too few images ({len(labels)}) to carve a val split "
                         f"(1/{divisor} of each class)")
    return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx


def load_fashion(explicit: str | os.PathLike | None = None) -> dict[str, Any]:
    """The data of the folder :func:`find_fashion_folder` picks (cached per process and folder).

    Returns ``{"folder": Path, "images": {"train"|"test": uint8 (N, 28, 28)}, "labels": {...: int64
    (N,)}, "indices": {"train"|"val"|"test": (n,) int64 into the file}, "hash": sha256 hex of the
    four arrays}``; ``val`` and ``train`` index the train file.
    """
    folder = find_fashion_folder(explicit)
    key = str(folder.resolve())
    if key not in _CACHE:
        arrays = {k: read_idx(_file_in(folder, name)) for k, name in FASHION_FILES.items()}
        for part in ("train", "test"):
            _check_pair(arrays[f"{part}_images"], arrays[f"{part}_labels"], part, folder)
        digest = hashlib.sha256()
        for k in sorted(arrays):
            digest.update(k.encode() + np.ascontiguousarray(arrays[k]).tobytes())
        labels = {p: arrays[f"{p}_labels"].astype(np.int64) for p in ("train", "test")}
        train_idx, val_idx = carve_val(labels["train"])
        _CACHE[key] = {
            "folder": folder,
            "images": {p: arrays[f"{p}_images"] for p in ("train", "test")},
            "labels": labels,
            "indices": {"train": train_idx, "val": val_idx, "test": np.arange(len(labels["test"]))},
            "hash": digest.hexdigest(),
        }
    return _CACHE[key]


def fashion_spec(root: str | None, split: str | None = None) -> str:
    """The spec string of Fashion-MNIST in ``root`` (None: the default search) and ``split``."""
    return "builtin:fashion" + (f"@{root}" if root else "") + (f":{split}" if split else "")


class FashionMNISTDataset(EpochMixin, Dataset):
    """``builtin:fashion``: Fashion-MNIST padded to ``image_size`` (see the module docstring).

    Item: ``{"image": FloatTensor (channels, image_size, image_size) in [-1, 1], "label": int in
    0..9, "seed": int}`` (plus the keys of a dict-returning ``transform``).
    """

    num_classes = len(FASHION_CLASSES)
    class_names = FASHION_CLASSES

    def __init__(self, split: str, image_size: int = 32, transform: Transform | None = None, seed: int = 0,
                 channels: int = 3, root: str | os.PathLike | None = None) -> None:
        if split not in FASHION_SPLITS:
            raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected one of {FASHION_SPLITS}")
        if image_size < SIDE:
            raise ValueError(f"builtin:fashion pads its {SIDE}x{SIDE} images and never resamples them: image_size "
                             f"must be >= {SIDE}, got {image_size}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        data = load_fashion(root)
        part = "test" if split == "test" else "train"
        self.split, self.image_size, self.seed, self.channels = split, image_size, seed, channels
        self.folder = data["folder"]
        self.images, self.labels = data["images"][part], data["labels"][part]
        self.indices = data["indices"][split]
        self.transform = transform
        pad = image_size - SIDE
        self._pad = (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)  # left, right, top, bottom
        self._init_epoch()

    def __len__(self) -> int:
        return len(self.indices)

    def padded_uint8(self, index: int) -> torch.Tensor:
        """(image_size, image_size) uint8: the image with zero (background) padding."""
        return F.pad(torch.from_numpy(self.images[self.indices[index]]), self._pad, value=0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        label = int(self.labels[self.indices[index]])
        seed = sample_seed(self.seed, self.epoch, index)
        x = self.padded_uint8(index)
        if self.transform is None:
            image = (x.float() / 127.5 - 1.0)[None].expand(self.channels, -1, -1).contiguous()
            return {"image": image, "label": label, "seed": seed}
        sample = make_sample(Image.fromarray(x.numpy()).convert("RGB"), label, self.transform, seed)
        return first_channel(sample) if self.channels == 1 else sample


def first_channel(obj: Any) -> Any:
    """Every (3, H, W) tensor in a sample (also inside dicts/lists) cut to its first channel (1, H, W):
    for gray data served to a 1-channel model through an RGB transform."""
    if isinstance(obj, torch.Tensor) and obj.ndim == 3 and obj.shape[0] == 3:
        return obj[:1].contiguous()
    if isinstance(obj, dict):
        return {k: first_channel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [first_channel(v) for v in obj]
    return obj


class OneChannel(Dataset):
    """A gray dataset's samples with their (3, H, W) tensors cut to channel 0 (the channels are copies)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return first_channel(self.dataset[index])

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
