"""Image-folder dataset: every image under a directory, recursively, optionally one class per sub-folder.

- Files: extensions in :data:`~tcae.data.decode.IMAGE_EXTENSIONS` (case-insensitive: .jpg .jpeg .png
  .webp .bmp .tif .tiff .gif; a GIF or multi-page TIFF is read as its first frame); hidden files and
  folders (names starting with ".", e.g. macOS ``._x.jpg``) are ignored; symlinks are followed. The list
  is sorted by relative path, so indices are the same on every machine.
- Skipped files are named, once, when the dataset is built: every other file ("not an image"), images
  whose header PIL cannot read ("undecodable") and images whose shorter side is under ``min_side``
  ("too small": :func:`~tcae.data.spec.build_dataset` sets a quarter of the training size, i.e. at most
  4x upscaling). One warning per reason names the first few files and counts the rest;
  :attr:`ImageFolderDataset.skipped` holds them all.
- Labels: with ``with_labels=None`` (auto) the images are labelled when every image lies inside a
  first-level sub-folder and there are at least two of them; the classes are those sub-folder
  names, sorted (``torchvision.datasets.ImageFolder`` convention). Otherwise label -1.
- Decoding: :func:`~tcae.data.decode.load_rgb` (gray, palette, alpha and 16-bit -> RGB).
- A file whose header reads but whose pixels do not (truncated) never crashes training: a
  warning names it, it is flagged in a shared-memory table (so every DataLoader worker skips it
  from then on and it is counted once), and the next decodable file is served instead.
  :attr:`ImageFolderDataset.num_skipped` is the number of such files found so far.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from tcae.data.base import EpochMixin, Transform, make_sample, sample_seed
from tcae.data.decode import IMAGE_EXTENSIONS, load_rgb

logger = logging.getLogger(__name__)


def find_images(root: str | os.PathLike, others: list[str] | None = None) -> list[str]:
    """Relative paths (POSIX separators) of all images under ``root``, recursively, sorted.

    ``others``, when given, receives the (sorted) relative paths of the non-hidden files that are not images."""
    root = os.fspath(root)
    found, rest = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith("."):
                continue
            path = name if rel == "." else f"{Path(rel).as_posix()}/{name}"
            (found if name.lower().endswith(IMAGE_EXTENSIONS) else rest).append(path)
    if others is not None:
        others.extend(sorted(rest))
    return sorted(found)


#: the reasons a file under an image folder is not served, as the log and ImageFolderDataset.skipped name them
NOT_AN_IMAGE, UNDECODABLE, TOO_SMALL = "not an image", "undecodable", "too small"
SHOWN_NAMES = 5  # file names per reason in the log; the rest are counted


def _header(path: Path) -> tuple[int, int] | str:
    """(width, height) from the image header (no pixels decoded), or why PIL cannot open it."""
    try:
        with Image.open(path) as img:
            return img.size
    except UnidentifiedImageError:  # its message repeats the whole path
        return "no image format PIL reads"
    except Exception as err:  # whatever else PIL raises (truncated header, bad values...)
        return f"{type(err).__name__}: {err}"


def check_images(root: Path, files: Sequence[str], min_side: int = 1) -> tuple[list[str], dict[str, list[str]]]:
    """(readable files, {UNDECODABLE: [...], TOO_SMALL: [...]}): each file's header read with PIL (threads,
    as it is I/O), too small when its shorter side is under ``min_side`` pixels. The skipped entries are
    ``"NAME (why)"``."""
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 4)) as pool:
        headers = list(pool.map(_header, (root / f for f in files)))
    kept: list[str] = []
    skipped: dict[str, list[str]] = {UNDECODABLE: [], TOO_SMALL: []}
    for name, header in zip(files, headers):
        if isinstance(header, str):
            skipped[UNDECODABLE].append(f"{name} ({header})")
        elif min(header) < min_side:
            skipped[TOO_SMALL].append(f"{name} ({header[0]}x{header[1]})")
        else:
            kept.append(name)
    return kept, skipped


def describe_skipped(skipped: dict[str, list[str]], min_side: int = 1) -> list[str]:
    """One line per reason with files: the count, the first :data:`SHOWN_NAMES` names, how many more."""
    why = {NOT_AN_IMAGE: f"not an image (read: {' '.join(IMAGE_EXTENSIONS)})", UNDECODABLE: "undecodable",
           TOO_SMALL: f"too small (shorter side under {min_side} px)"}
    lines = []
    for reason, names in skipped.items():
        if names:
            more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
            lines.append(f"{len(names)} {why.get(reason, reason)}: {', '.join(names[:SHOWN_NAMES])}{more}")
    return lines


_SAID: set[tuple[str, tuple[str, ...]]] = set()  # (folder, what was skipped) already logged by this process


class ImageFolderDataset(EpochMixin, Dataset):
    """Map-style dataset over the images under ``root``.

    Args:
        root: the directory to scan.
        transform: PIL RGB image -> tensor (3, H, W) in [-1, 1], or -> dict (merged into the sample).
        with_labels: ``True``/``False``, or ``None`` to decide from the layout (module docstring).
        seed: base seed of the per-sample random transforms (with the epoch and the index).
        min_side: images whose shorter side is under this many pixels are skipped as too small.
        check_files: read every image header now, skipping (and logging) undecodable and too small
            files and naming the files that are not images; False lists by extension only, silently.

    Item ``i``: ``{"image": FloatTensor (3, H, W) in [-1, 1], "label": int (-1 if unlabelled),
    "seed": int}`` plus any keys a dict-returning transform adds.
    """

    def __init__(
        self, root: str | os.PathLike, transform: Transform, with_labels: bool | None = None, seed: int = 0,
        min_side: int = 1, check_files: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist or is not a directory")
        others: list[str] = []
        files = find_images(self.root, others)
        #: files not served, by reason (NOT_AN_IMAGE, UNDECODABLE, TOO_SMALL): "NAME" or "NAME (why)"
        self.skipped: dict[str, list[str]] = {NOT_AN_IMAGE: others, UNDECODABLE: [], TOO_SMALL: []}
        if check_files:
            files, found = check_images(self.root, files, min_side)
            self.skipped.update(found)
        reasons = describe_skipped(self.skipped, min_side)
        if not files:
            raise ValueError(
                f"no images found under {str(self.root)!r} (searched recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)}, case-insensitive)" + "".join(f"; skipped {r}" for r in reasons)
            )
        said = (str(self.root.resolve()), tuple(reasons))
        if check_files and said not in _SAID:  # once per folder and process (a run builds its data more than once)
            _SAID.add(said)
            for line in reasons:
                logger.warning("%s: skipped %s", self.root, line)
            if reasons:
                logger.info("%s: %d images read, %d files skipped", self.root, len(files),
                            sum(map(len, self.skipped.values())))
        parts = [f.split("/") for f in files]
        class_dirs = sorted({p[0] for p in parts if len(p) > 1})
        all_nested = all(len(p) > 1 for p in parts)
        if with_labels is None:
            with_labels = all_nested and len(class_dirs) >= 2
        if with_labels and not all_nested:
            loose = next(f for f, p in zip(files, parts) if len(p) == 1)
            raise ValueError(
                f"with_labels=True needs every image in a class sub-folder of {str(self.root)!r}; "
                f"found {loose!r} at the top level"
            )
        self.classes: list[str] = class_dirs if with_labels else []
        index = {c: i for i, c in enumerate(self.classes)}
        # numpy arrays rather than Python lists: forked DataLoader workers touching list items
        # would copy the pages (refcounts), multiplying memory on ImageNet-sized folders.
        self._files = np.array([f.encode("utf-8") for f in files])
        self._labels = np.array([index[p[0]] for p in parts] if with_labels else [-1] * len(files), dtype=np.int64)
        self.transform = transform
        self.seed = seed
        self._bad = torch.zeros(len(files), dtype=torch.bool).share_memory_()
        self._init_epoch()

    def __len__(self) -> int:
        return len(self._files)

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when unlabelled)."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """The class (sub-folder) names, indexed by label; [] when unlabelled."""
        return list(self.classes)

    @property
    def num_skipped(self) -> int:
        """Number of distinct undecodable files met so far (in any DataLoader worker)."""
        return int(self._bad.sum())

    def path(self, index: int) -> Path:
        return self.root / self._files[index].decode("utf-8")

    def items(self) -> Iterator[tuple[Path, int]]:
        """``(path, label)`` of every file, in index order (e.g. for :func:`~tcae.data.shards.write_shards`)."""
        for i in range(len(self)):
            yield self.path(i), int(self._labels[i])

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        for offset in range(n):
            j = (index + offset) % n
            if self._bad[j]:
                continue
            path = self.path(j)
            try:
                image = load_rgb(path)
            except Exception as err:  # any decoder failure: skip and count, never crash
                self._bad[j] = True
                logger.warning(
                    "skipping undecodable image %s (%s: %s); %d file(s) skipped so far",
                    path,
                    type(err).__name__,
                    err,
                    self.num_skipped,
                )
                continue
            # The seed follows the requested index, so the crop does not depend on which file
            # stood in for a bad one.
            return make_sample(image, int(self._labels[j]), self.transform, sample_seed(self.seed, self.epoch, index))
        raise RuntimeError(f"none of the {n} image files under {str(self.root)!r} could be decoded")

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(root={str(self.root)!r}, n={len(self)}, classes={self.num_classes}, "
            f"skipped={self.num_skipped})"
        )
