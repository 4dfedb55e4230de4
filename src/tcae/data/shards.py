"""WebDataset tar shards: a streaming reader for ImageNet-scale data, and a writer.

Shard layout (the WebDataset convention): members ``<key>.<ext>`` with the image under one of
``jpg``/``jpeg``/``png``/``webp``/``bmp`` and an optional ``cls`` member holding the integer label
as text. :func:`write_shards` also writes a sidecar ``<prefix>meta.json`` (``num_samples``,
``num_classes``): for shards ``out/train-%06d.tar`` it is ``out/train-meta.json``, and a spec
``out/train-{000000..000009}.tar`` finds it by replacing the brace group with ``meta``.

Reading (:class:`ShardDataset`, an ``IterableDataset``):

- Shards are split between DDP ranks and DataLoader workers: whole shards when there are at least
  as many shards as (ranks x workers), else every reader reads all shards and keeps every
  (ranks x workers)-th sample.
- Training shuffles the shard order per epoch (seeded by seed and epoch) and mixes samples in a
  seeded shuffle buffer. Random crops are seeded by (seed, epoch, sample key), so they do not
  depend on the number of workers.
- Training epoch length: with ``epoch_size`` (samples per epoch, all ranks together) or, failing
  that, the sidecar's ``num_samples``, each rank yields exactly ``length // world_size`` samples,
  cycling through its shards if it runs out. Equal counts on all ranks keep DDP from hanging on the
  last step. Without either the stream is one pass and has no ``len``.
- Evaluation (``train=False``) is exactly one pass in shard order: every sample once over all
  ranks and workers together (each reader its own shards, or its own every-k-th sample), however
  unequal the shards; no quota, nothing repeated, ``epoch_size`` ignored. Ranks may therefore get
  unequal counts; ``len`` is the sidecar's ``num_samples`` (per rank: rounded up share under DDP,
  an estimate there), and there is no ``len`` without a sidecar.
- Undecodable samples are skipped with a warning and counted in :attr:`ShardDataset.num_skipped`
  (per process: counts from DataLoader workers are logged, not summed).
- Resume is per epoch: a restarted epoch replays the same order; skipping batches inside an epoch
  is left to the consumer (the stream has no random access).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from tcae.data.base import EpochMixin, Transform, make_sample, sample_seed
from tcae.data.decode import IMAGE_EXTENSIONS, load_rgb
from tcae.data.folder import ImageFolderDataset
from tcae.util import to_uint8_hwc

logger = logging.getLogger(__name__)

#: Member extensions read as the image (the folder scanner's extensions without the dot).
IMAGE_KEYS: tuple[str, ...] = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
_BRACE = re.compile(r"\{[^{}]*\}")
_PRINTF = re.compile(r"%0?\d*d")


def expand_shards(spec: str) -> list[str]:
    """The shard paths/URLs of a spec (brace patterns expanded, ``::`` separates lists)."""
    return wds.shardlists.expand_urls(spec)


def is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def meta_path(spec_or_pattern: str) -> str:
    """Sidecar path: the brace group (reader) or printf field (writer) becomes ``meta``, ``.tar`` -> ``.json``."""
    path = _PRINTF.sub("meta", _BRACE.sub("meta", spec_or_pattern, count=1), count=1)
    return re.sub(r"\.tar$", ".json", path)


def read_meta(spec: str) -> dict[str, Any]:
    """The sidecar metadata of a shard spec, or ``{}`` when there is none."""
    path = meta_path(spec)
    if path == spec or is_remote(path) or not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _worker_info() -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers), from torch.distributed / env and the DataLoader."""
    return wds.utils.pytorch_worker_info()


class ShardDataset(EpochMixin, IterableDataset):
    """Stream ``{"image", "label", "seed", ...}`` samples from WebDataset shards (see module docstring).

    Args:
        spec: shard paths, e.g. ``"data/train-{000000..000127}.tar"`` (brace-expanded).
        transform: PIL RGB -> tensor (3, H, W) in [-1, 1], or -> dict merged into the sample.
        train: shuffle shards and samples (seeded), fixed epoch length; else one pass in order.
        seed: base seed for shuffling and random crops.
        epoch_size: training samples per epoch over all ranks (see module docstring); ignored
            when ``train`` is false.
        shuffle_buffer: samples held in the training shuffle buffer (per worker).
    """

    def __init__(
        self,
        spec: str,
        transform: Transform,
        train: bool = True,
        seed: int = 0,
        epoch_size: int | None = None,
        shuffle_buffer: int = 1000,
    ) -> None:
        self.spec = spec
        self.urls = expand_shards(spec)
        missing = [u for u in self.urls if not is_remote(u) and not os.path.isfile(u)]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise FileNotFoundError(f"data spec {spec!r}: shard file(s) not found: {missing[:3]}{more}")
        self.meta = read_meta(spec)
        self.transform, self.train, self.seed = transform, train, seed
        self.epoch_size = epoch_size or self.meta.get("num_samples")
        self.shuffle_buffer = shuffle_buffer
        self.num_classes = int(self.meta.get("num_classes", 0))
        self.class_names = list(self.meta.get("class_names") or [])
        self.num_skipped = 0
        self._init_epoch()

    def __len__(self) -> int:
        """Samples this rank yields per epoch (all its DataLoader workers together).

        Evaluation: the sidecar's ``num_samples`` (under DDP the rounded-up share, an estimate).
        """
        world = _worker_info()[1]
        if not self.train:
            total = self.meta.get("num_samples")
            if not total:
                raise TypeError(f"evaluation shard stream {self.spec!r} has no length: write a meta.json")
            return -(-int(total) // world)
        if not self.epoch_size:
            raise TypeError(f"shard stream {self.spec!r} has no length: pass epoch_size or write a meta.json")
        return self.epoch_size // world

    def _decode(self, raw: dict[str, Any], epoch: int, round_: int) -> dict[str, Any] | None:
        key = raw.get("__key__", "?")
        name = next((k for k in IMAGE_KEYS if k in raw), None)
        try:
            if name is None:
                raise ValueError(f"no image member (one of {IMAGE_KEYS}); members: {sorted(raw)}")
            image = load_rgb(raw[name])
            label = int(raw["cls"]) if "cls" in raw else -1
        except Exception as err:  # skip and count, never crash the stream
            self.num_skipped += 1
            logger.warning(
                "skipping undecodable sample %s in %s (%s: %s); %d skipped so far in this process",
                key,
                raw.get("__url__", "?"),
                type(err).__name__,
                err,
                self.num_skipped,
            )
            return None
        seed = sample_seed(self.seed, epoch, f"{round_}/{raw.get('__url__', '')}/{key}")
        return make_sample(image, label, self.transform, seed)

    def _raw_samples(self, urls: list[str], keep: tuple[int, int] | None) -> Iterator[dict[str, Any]]:
        for url in urls:
            stream = wds.tarfile_samples([{"url": url}], handler=wds.warn_and_continue)
            for i, raw in enumerate(stream):
                if keep is None or i % keep[1] == keep[0]:
                    yield raw

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, num_workers = _worker_info()
        epoch = self.epoch
        reader, readers = rank * num_workers + worker, world * num_workers
        quota = None  # evaluation: one pass, each sample once over all readers
        if self.train and self.epoch_size:
            per_rank = self.epoch_size // world
            quota = per_rank // num_workers + (worker < per_rank % num_workers)
        produced, round_ = 0, 0
        while quota is None or produced < quota:
            urls = list(self.urls)
            if self.train:
                random.Random(sample_seed(self.seed, epoch, f"shards/{round_}")).shuffle(urls)
            if len(urls) >= readers:
                mine, keep = urls[reader::readers], None
            else:  # fewer shards than readers: everyone reads everything, keeps its share
                mine, keep = urls, (reader, readers)
            stream: Iterable[dict[str, Any]] = self._raw_samples(mine, keep)
            if self.train:
                rng = random.Random(sample_seed(self.seed, epoch, f"buffer/{round_}/{reader}/{readers}"))
                stream = wds.shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer // 10, rng=rng)(stream)
            got = 0
            for raw in stream:
                sample = self._decode(raw, epoch, round_)
                if sample is None:
                    continue
                got += 1
                yield sample
                produced += 1
                if quota is not None and produced >= quota:
                    return
            if quota is None or got == 0:
                if got == 0 and quota:
                    logger.warning("shard reader %d/%d got no samples from %s", reader, readers, self.spec)
                return
            round_ += 1

    def __repr__(self) -> str:
        return f"ShardDataset({self.spec!r}, shards={len(self.urls)}, train={self.train}, epoch_size={self.epoch_size})"


def _encode(image: Any) -> tuple[str, bytes]:
    """(extension, bytes) of a sample image: a file path keeps its original bytes; PIL -> PNG."""
    if isinstance(image, (str, os.PathLike)):
        ext = os.path.splitext(os.fspath(image))[1].lower().lstrip(".")
        if ext not in IMAGE_KEYS:
            raise ValueError(f"{image}: not an image extension the reader accepts ({IMAGE_KEYS})")
        with open(image, "rb") as f:
            return ext, f.read()
    if isinstance(image, torch.Tensor):  # (3, H, W) in [-1, 1]
        array = to_uint8_hwc(image).numpy()
        image = Image.fromarray(array)
    if not isinstance(image, Image.Image):
        raise TypeError(f"cannot write a {type(image).__name__} as a shard image")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "png", buf.getvalue()


def write_shards(source: Iterable[tuple[Any, int]] | Any, pattern: str, maxcount: int = 1000) -> str:
    """Write ``(image, label)`` pairs as WebDataset shards; return the spec that reads them back.

    Args:
        source: an :class:`~tcae.data.folder.ImageFolderDataset` (its files are copied byte for
            byte, no re-encoding) or an iterable of ``(image, label)`` where image is a PIL image
            (stored as PNG), a tensor (3, H, W) in [-1, 1] (PNG) or an image file path (copied);
            label -1 (or None) for none.
        pattern: output path with a printf field, e.g. ``"out/train-%06d.tar"``.
        maxcount: samples per shard.

    Returns:
        A brace spec such as ``"out/train-{000000..000003}.tar"`` for :func:`~tcae.data.build_dataset`.
        A sidecar ``out/train-meta.json`` records ``num_samples`` and ``num_classes``.
    """
    field = _PRINTF.search(pattern)
    if field is None or not pattern.endswith(".tar"):
        raise ValueError(f"pattern {pattern!r} needs a printf field and a .tar suffix, e.g. 'out/train-%06d.tar'")
    if os.path.dirname(pattern):
        os.makedirs(os.path.dirname(pattern), exist_ok=True)
    items = source.items() if isinstance(source, ImageFolderDataset) else source
    count, max_label = 0, -1
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for image, label in items:
            ext, data = _encode(image)
            sample = {"__key__": f"{count:09d}", ext: data}
            if label is not None and int(label) >= 0:
                sample["cls"] = str(int(label)).encode()
                max_label = max(max_label, int(label))
            sink.write(sample)
            count += 1
        num_shards = sink.shard
    num_classes = getattr(source, "num_classes", None)
    meta = {"num_samples": count, "num_classes": int(num_classes if num_classes is not None else max_label + 1)}
    if getattr(source, "class_names", None):
        meta["class_names"] = [str(n) for n in source.class_names]
    with open(meta_path(pattern), "w") as f:
        json.dump(meta, f)
    fmt = field.group(0)  # "%06d" -> zero-padded range, which braceexpand keeps padded
    return f"{pattern[: field.start()]}{{{fmt % 0}..{fmt % (num_shards - 1)}}}{pattern[field.end() :]}"
