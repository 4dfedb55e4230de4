"""A resumable cache of tokenizer latents for diffusion training, and the dataset that reads it.

Layout of a cache directory (written by `cache_latents`, `tcae cache-latents`):

    meta.json                      settings, per-shard sums, per-channel mean/std, `class_names`, `complete`
    shard-00000.safetensors        latents  float32 (R, c, h, w)   RAW tokenizer.encode() output
    shard-00001.safetensors        labels   int64   (R,)           class label (-1: unlabelled)
    ...                            indices  int64   (R,)           position in the (unshuffled) dataset
                                   flipped  bool    (R,)           encoded from the h-flipped image

Shard k holds dataset positions [k * shard_size, (k + 1) * shard_size): R = that many rows, or twice
as many with `flip` (each sample's latent, then its flipped copy's). Latents are stored
un-normalised; the per-channel mean/std in meta.json are over every cached row (flipped copies
included) and every latent position, accumulated in float64 per shard, and `LatentDataset`
normalises with them.

Resume: a shard is written under a temporary name and renamed, so a shard file is either complete or
absent. On restart the shards on disk are verified (they open, hold the expected indices and row
count) and kept, and only the missing ones are encoded; with the same tokenizer and data the result
is the same as a one-shot run. Settings that would change the latents (tokenizer weights, data
spec, flip, shard size) must match the existing cache, else it is an error.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from tcae.util import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

META_NAME = "meta.json"
FORMAT = "tcae-latents"
VERSION = 1
SHARD_KEYS = ("latents", "labels", "indices", "flipped")
# settings that must match between a cache on disk and a run that resumes it
_MATCHING = ("format", "version", "tokenizer", "tokenizer_fingerprint", "data", "image_size", "flip",
             "shard_size", "stream_num_workers", "dataset_length")


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def tokenizer_fingerprint(tokenizer: nn.Module) -> str:
    """sha256 of the encoder's weights (all weights if the model has no `encoder` submodule).

    Only what changes `encode()` counts: latent statistics and (for TC-AE) the decoder, which phase-2
    fine-tuning changes while the encoder stays frozen, do not invalidate a cache.
    """
    if isinstance(getattr(tokenizer, "encoder", None), nn.Module):
        tensors = sorted(tokenizer.encoder.state_dict().items())
    else:
        tensors = [(k, v) for k, v in sorted(tokenizer.state_dict().items()) if not k.startswith("latent_")]
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().contiguous().cpu().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _stats(shards: list[dict[str, Any]], hw: int) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) from per-shard float64 sums, summed in shard order."""
    total = sum(s["rows"] for s in shards) * hw
    s1 = np.sum([np.asarray(s["sum"], dtype=np.float64) for s in shards], axis=0)
    s2 = np.sum([np.asarray(s["sumsq"], dtype=np.float64) for s in shards], axis=0)
    mean = s1 / total
    std = np.sqrt(np.maximum(s2 / total - mean**2, 0.0))
    return mean.tolist(), std.tolist()


def _shard_sums(latents: torch.Tensor) -> tuple[list[float], list[float]]:
    z = latents.double()
    return z.sum(dim=(0, 2, 3)).tolist(), (z * z).sum(dim=(0, 2, 3)).tolist()


def _collate(samples: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples {"image": (3, H, W) in [-1, 1], "label": int, ...} (or (image, label) pairs) -> batch."""
    if isinstance(samples[0], dict):
        images, labels = [s["image"] for s in samples], [int(s.get("label", -1)) for s in samples]
    else:
        images, labels = [s[0] for s in samples], [int(s[1]) for s in samples]
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _dataset_len(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # a stream without a known length
        return None


class _Cache:
    """The state of one cache directory during `cache_latents`."""

    def __init__(self, out_dir: Path, settings: dict[str, Any], num_samples: int | None) -> None:
        self.dir, self.settings, self.n = out_dir, settings, num_samples
        self.size: int = settings["shard_size"]
        self.rows_per_sample = 2 if settings["flip"] else 1
        self.shards: dict[int, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}  # latent_shape, image_shape once known

    def expected_count(self, k: int) -> int:
        """Dataset samples in shard k (a short last shard when the length is known)."""
        return self.size if self.n is None else min(self.size, self.n - k * self.size)

    @property
    def num_shards(self) -> int | None:
        return None if self.n is None else math.ceil(self.n / self.size)

    # -------------------------------------------------------------- meta
    def load_meta(self) -> dict[str, Any] | None:
        path = self.dir / META_NAME
        if not path.is_file():
            if any(self.dir.glob("shard-*.safetensors")):
                raise ValueError(f"{self.dir} holds latent shards but no {META_NAME}; use an empty --out "
                                 "directory (or delete the stale shards)")
            return None
        meta = json.loads(path.read_text())
        different = [k for k in _MATCHING if meta.get(k) != self.settings.get(k)]
        if different:
            details = "; ".join(f"{k}: cache has {_short(meta.get(k))}, this run {_short(self.settings.get(k))}"
                                for k in different)
            raise ValueError(f"{self.dir} was cached with different settings ({details}); "
                             "use another output directory or delete it")
        return meta

    def write_meta(self, complete: bool = False) -> dict[str, Any]:
        done = [self.shards[k] for k in sorted(self.shards)]
        meta = dict(self.settings)
        meta.update(self.extra)
        meta["latents"] = ("raw tokenizer.encode() output (not normalised); a DiT trains on "
                           "(z - normalization.mean) / normalization.std")
        meta["num_samples"] = sum(s["count"] for s in done)
        meta["num_latents"] = sum(s["rows"] for s in done)
        meta["num_classes"] = max([self.extra.get("dataset_num_classes", 0)] + [s["max_label"] + 1 for s in done])
        if "class_names" in self.extra:  # label -> name (a folder's sub-folders, a built-in's classes)
            meta["class_names"] = self.extra["class_names"]
        if done and "latent_shape" in self.extra:
            c, h, w = self.extra["latent_shape"]
            meta["mean"], meta["std"] = _stats(done, h * w)
        if "normalization" in self.extra:
            meta["normalization"] = self.extra["normalization"]
        elif "mean" in meta:  # the tokenizer stored none: the cache's own statistics (said at the start)
            meta["normalization"] = {"mean": meta["mean"], "std": meta["std"], "source": "cache"}
        meta["shards"] = done
        meta["complete"] = complete
        write_json_atomic(self.dir / META_NAME, meta)
        return meta

    # -------------------------------------------------------------- verification
    def verify(self, meta: dict[str, Any] | None) -> None:
        """Keep the shards on disk that hold what they should; delete the others (and temp files)."""
        for tmp in [*self.dir.glob("*.tmp"), *self.dir.glob(".*.tmp-*")]:  # left by a killed write
            tmp.unlink()
        known = {s["file"]: s for s in (meta or {}).get("shards", [])}
        if meta:
            for key in ("latent_shape", "image_shape"):
                if key in meta:
                    self.extra[key] = meta[key]
        for path in sorted(self.dir.glob("shard-*.safetensors")):
            try:
                k = int(path.stem.split("-")[1])
                info = self._verify_one(path, k, known.get(path.name))
            except Exception as err:  # unreadable or wrong: re-encode it
                logger.warning("discarding latent shard %s (%s)", path, err)
                path.unlink()
                continue
            self.shards[k] = info

    def _verify_one(self, path: Path, k: int, recorded: dict[str, Any] | None) -> dict[str, Any]:
        count = self.expected_count(k)
        if count <= 0:
            raise ValueError(f"shard {k} lies beyond the dataset's {self.n} samples")
        with safe_open(str(path), framework="pt") as f:
            missing = set(SHARD_KEYS) - set(f.keys())
            if missing:
                raise ValueError(f"missing tensors {sorted(missing)}")
            indices = f.get_tensor("indices")
            if self.n is None:  # a stream: a short shard can only be the last one
                count = min(count, indices.numel() // self.rows_per_sample)
            expected = torch.arange(k * self.size, k * self.size + count).repeat_interleave(self.rows_per_sample)
            if not torch.equal(indices, expected):
                raise ValueError(f"indices are not {k * self.size}..{k * self.size + count - 1}")
            shape = f.get_slice("latents").get_shape()
            if shape[0] != expected.numel() or f.get_slice("labels").get_shape()[0] != expected.numel():
                raise ValueError(f"expected {expected.numel()} rows, found {shape[0]}")
            if "latent_shape" in self.extra and list(shape[1:]) != list(self.extra["latent_shape"]):
                raise ValueError(f"latent shape {shape[1:]} != {self.extra['latent_shape']}")
            if recorded and recorded.get("rows") == expected.numel() and recorded.get("count") == count:
                return recorded
            latents, labels = f.get_tensor("latents"), f.get_tensor("labels")
        self.extra.setdefault("latent_shape", list(shape[1:]))
        s1, s2 = _shard_sums(latents)
        return {"file": path.name, "start": k * self.size, "count": count, "rows": int(expected.numel()),
                "max_label": int(labels.max()), "sum": s1, "sumsq": s2}

    # -------------------------------------------------------------- writing
    def write_shard(self, k: int, latents: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        r = self.rows_per_sample
        flipped = torch.tensor([False, True] if r == 2 else [False]).repeat(indices.numel() // r)
        tensors = {"latents": latents.contiguous(), "labels": labels.contiguous(),
                   "indices": indices.contiguous(), "flipped": flipped}
        path = self.dir / shard_name(k)
        with atomic_path(path) as tmp:  # a shard file is complete or absent, never partial
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "start": str(k * self.size),
                                                    "count": str(indices.numel() // r)})
        s1, s2 = _shard_sums(latents)
        self.shards[k] = {"file": path.name, "start": k * self.size, "count": indices.numel() // r,
                          "rows": int(indices.numel()), "max_label": int(labels.max()), "sum": s1, "sumsq": s2}
        self.write_meta()


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _batches(dataset: Any, cache: _Cache, batch_size: int, num_workers: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """(indices, images, labels) batches of the samples still to encode, in dataset order.

    A map-style dataset is read only where shards are missing, in batches that never straddle a shard
    (so a resumed run batches, and so computes, exactly as a one-shot run). A stream cannot seek: it is
    read from the start and the samples of finished shards are dropped.
    """
    if isinstance(dataset, IterableDataset):
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
        pos = 0
        for images, labels in loader:
            idx = torch.arange(pos, pos + len(labels))
            pos += len(labels)
            keep = torch.tensor([int(i) // cache.size not in cache.shards for i in idx], dtype=torch.bool)
            if keep.any():
                yield idx[keep], images[keep], labels[keep]
        return
    plan = []
    for k in range(cache.num_shards or 0):
        if k in cache.shards:
            continue
        start, stop = k * cache.size, k * cache.size + cache.expected_count(k)
        plan += [list(range(i, min(i + batch_size, stop))) for i in range(start, stop, batch_size)]
    if not plan:
        return
    loader = DataLoader(dataset, batch_sampler=plan, num_workers=num_workers, collate_fn=_collate)
    for batch_idx, (images, labels) in zip(plan, loader):
        yield torch.tensor(batch_idx, dtype=torch.int64), images, labels


def tokenizer_source(spec: str) -> str:
    """A tokenizer spec as a latent cache records it: a local folder (``diffusers:`` prefix kept) as an absolute
    path, so the record still points at it from another working directory; a Hub repo id as given."""
    path = spec.removeprefix("diffusers:")
    if not os.path.isdir(path):
        return spec
    return spec[: len(spec) - len(path)] + str(Path(path).resolve())


def _settings(tokenizer: nn.Module, dataset: Dataset, n: int | None, data_spec: str | None, image_size: int | None,
              flip: bool, shard_size: int, num_workers: int) -> dict[str, Any]:
    """What a cache on disk must match to be resumed (:data:`_MATCHING`)."""
    config = getattr(tokenizer, "config", None)
    return {
        "format": FORMAT, "version": VERSION,
        "tokenizer": config.to_dict() if hasattr(config, "to_dict") else None,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "data": data_spec, "image_size": image_size, "flip": bool(flip), "shard_size": int(shard_size),
        # a stream's order depends on how its workers split it
        "stream_num_workers": num_workers if isinstance(dataset, IterableDataset) else None,
        "dataset_length": n,
    }


def _open_cache(out: Path, settings: dict[str, Any], n: int | None, tokenizer: nn.Module, dataset: Dataset) -> _Cache:
    """The cache in `out`: its finished shards verified and kept, what the dataset and tokenizer say recorded
    (class count and names, the normalisation), meta.json written."""
    from tcae.data.base import class_names_of

    cache = _Cache(out, settings, n)
    cache.verify(cache.load_meta())
    cache.extra["dataset_num_classes"] = int(getattr(dataset, "num_classes", 0) or 0)
    names = class_names_of(dataset)
    if names:
        cache.extra["class_names"] = names
    # the normalisation a DiT trains with is the tokenizer's own latent statistics (one home: the tokenizer,
    # measured when `tcae train` exports it); a tokenizer without them gets the cache's measured ones
    if getattr(tokenizer, "has_latent_stats", False):
        cache.extra["normalization"] = {"mean": tokenizer.latent_mean.float().cpu().tolist(),
                                        "std": tokenizer.latent_std.float().cpu().tolist(), "source": "tokenizer"}
    else:
        logger.warning("the tokenizer stores no latent statistics: the cache's own per-channel mean/std "
                       "will normalise its latents (`tcae diagnose --write-stats` stores them in the model)")
    if cache.shards:
        logger.info("resuming %s: %d shard(s) already cached", out, len(cache.shards))
    cache.write_meta()
    return cache


def _encode(tokenizer: nn.Module, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Raw latents (R, c, h, w) float32 on the CPU of images x (B, 3, H, W); with `flip` R = 2B, interleaved:
    sample i's latent, then its flipped copy's."""
    z = tokenizer.encode(x)
    if flip:
        z = torch.stack([z, tokenizer.encode(x.flip(-1))], dim=1).flatten(0, 1)
    return z.float().cpu()


class _ShardBuffer:
    """The rows of the shard being filled; written as a shard once it holds all of its samples."""

    def __init__(self, cache: _Cache) -> None:
        self.cache = cache
        self.k: int | None = None
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.count = 0
        self.written: list[int] = []

    def add(self, idx: torch.Tensor, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: dataset positions idx (B,), latents z (B * rows_per_sample, ...), labels (B,). A batch may
        end one shard and start the next."""
        r = self.cache.rows_per_sample
        shard_of = idx // self.cache.size
        for k in torch.unique_consecutive(shard_of).tolist():
            sel = shard_of == k
            if self.k is not None and self.k != k:
                self.flush()
            if self.k is None:
                self.k, self.parts, self.count = k, {"indices": [], "latents": [], "labels": []}, 0
            self.parts["indices"].append(idx[sel])
            self.parts["latents"].append(z[sel.repeat_interleave(r)])
            self.parts["labels"].append(labels[sel].repeat_interleave(r))
            self.count += int(sel.sum())
            if self.count == self.cache.expected_count(k):
                self.flush()

    def flush(self) -> None:
        r = self.cache.rows_per_sample
        idx = torch.cat(self.parts["indices"])
        self.cache.write_shard(self.k, torch.cat(self.parts["latents"]), torch.cat(self.parts["labels"]),
                               idx.repeat_interleave(r))
        self.written.append(self.k)
        self.k = None

    def finish(self, stream: bool) -> None:
        """Write the last shard of a stream without a length (short); a partial shard of a sized dataset is an
        error."""
        if self.k is None:
            return
        if not stream:
            raise ValueError(f"the dataset yielded only {self.count} of the "
                             f"{self.cache.expected_count(self.k)} samples of shard {self.k}")
        self.flush()


def _check_complete(cache: _Cache) -> None:
    """Every shard is on disk (a stream: shards 0..K without a gap)."""
    if cache.num_shards is not None:
        missing = sorted(set(range(cache.num_shards)) - set(cache.shards))
        if missing:
            raise ValueError(f"the dataset did not yield the samples of shard(s) {missing[:10]}")
    elif cache.shards:
        ks = sorted(cache.shards)
        if ks != list(range(len(ks))):
            raise ValueError(f"the stream ended before shard(s) {sorted(set(range(ks[-1])) - set(ks))[:10]}")
    if not cache.shards:
        raise ValueError("the dataset yielded no samples")


@torch.no_grad()  # not inference_mode: cached RoPE tables made here are reused by training
def cache_latents(
    tokenizer: nn.Module,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    batch_size: int = 64,
    flip: bool = False,
    shard_size: int = 4096,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    data_spec: str | None = None,
    image_size: int | None = None,
    tokenizer_path: str | None = None,
) -> dict[str, Any]:
    """Encode `dataset` in order into `out_dir` (see the module docstring for the layout); resumable.

    tokenizer: a TC-AE (or any module with `encode(x (B, 3, H, W) in [-1, 1]) -> (B, c, h, w)`); it is
    moved to `device` and put in eval mode. dataset: map-style or iterable, samples
    {"image": (3, H, W) in [-1, 1], "label": int} (or (image, label) pairs), read in order; its class names
    (`tcae.data.base.class_names_of`) are recorded as meta.json's `class_names`.
    flip: also cache each image's horizontal flip. shard_size: dataset samples per shard.
    data_spec, image_size: recorded in meta.json (and must match when resuming).
    tokenizer_path: where the tokenizer came from (:func:`tokenizer_source`), recorded as meta.json's
    `tokenizer_path` so a DiT trained on the cache can name it; not a resume setting (the encoder's
    fingerprint is: a moved model folder still resumes).
    Returns a summary: out_dir, num_samples, num_latents, num_shards, latent_shape, num_classes, class_names,
    mean, std, resumed_shards (already on disk) and encoded_shards (written by this call).
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = _dataset_len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty")
    cache = _open_cache(out, _settings(tokenizer, dataset, n, data_spec, image_size, flip, shard_size, num_workers),
                        n, tokenizer, dataset)
    if tokenizer_path is not None:
        cache.extra["tokenizer_path"] = tokenizer_path
    resumed = sorted(cache.shards)

    device = torch.device(device)
    was_training = tokenizer.training
    tokenizer.to(device).eval()
    from tqdm.auto import tqdm

    done_samples = sum(s["count"] for s in cache.shards.values())
    bar = tqdm(total=n, initial=done_samples, unit="img", desc="cache-latents", disable=None if progress else True)
    buffer = _ShardBuffer(cache)
    try:
        for idx, images, labels in _batches(dataset, cache, batch_size, num_workers):
            x = images.to(device).float()
            z = _encode(tokenizer, x, flip)
            if "latent_shape" not in cache.extra:
                cache.extra["latent_shape"], cache.extra["image_shape"] = list(z.shape[1:]), list(x.shape[-2:])
            elif list(z.shape[1:]) != cache.extra["latent_shape"]:
                raise ValueError(f"latent shape {list(z.shape[1:])} differs from the cache's "
                                 f"{cache.extra['latent_shape']} (images of different sizes?)")
            buffer.add(idx, z, labels)
            bar.update(len(idx))
        buffer.finish(stream=n is None)
    finally:
        bar.close()
        tokenizer.train(was_training)

    _check_complete(cache)
    meta = cache.write_meta(complete=True)
    return {
        "out_dir": str(out), "num_samples": meta["num_samples"], "num_latents": meta["num_latents"],
        "num_shards": len(cache.shards), "latent_shape": meta["latent_shape"], "num_classes": meta["num_classes"],
        "class_names": meta.get("class_names", []), "mean": meta["mean"], "std": meta["std"],
        "resumed_shards": len(resumed), "encoded_shards": len(buffer.written),
    }


# ---------------------------------------------------------------------- reading
_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "BOOL": np.bool_}


def _safetensors_offsets(path: Path) -> dict[str, tuple[int, list[int], str]]:
    """{name: (byte offset, shape, dtype)} of the tensors in a .safetensors file (its header)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    return {k: (8 + header_len + v["data_offsets"][0], v["shape"], v["dtype"]) for k, v in header.items()}


def read_latent_meta(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a directory written by `tcae cache-latents`?")
    return json.loads(path.read_text())


class LatentDataset(Dataset):
    """Cached latents for DiT training: item i -> (latent (c, h, w) float32, label int).

    Latents are normalised per channel with the cache's mean/std unless `normalize=False`; shards are
    memory-mapped (opened lazily in each DataLoader worker), so the cache need not fit in memory.
    include_flipped=False serves only latents of un-flipped images. Unlabelled samples (label -1) are
    served as class 0.
    Attributes: `stats` {"mean", "std"} float32 (c,) tensors, `num_classes`, `class_names` (label -> name;
    [] when the cache records none), `latent_shape` (c, h, w), `meta` (meta.json).
    """

    def __init__(self, root: str | os.PathLike, normalize: bool = True, include_flipped: bool = True) -> None:
        self.root = Path(root)
        self.meta = meta = read_latent_meta(root)
        if not meta.get("complete"):
            raise ValueError(f"{self.root} is an incomplete latent cache; rerun `tcae cache-latents` to finish it")
        self.normalize = normalize
        self.latent_shape = tuple(meta["latent_shape"])
        self.num_classes = int(meta.get("num_classes", 0))
        self.class_names: list[str] = [str(n) for n in meta.get("class_names") or []]
        norm = meta.get("normalization") or {"mean": meta["mean"], "std": meta["std"]}  # older caches: their own
        self.stats = {"mean": torch.tensor(norm["mean"], dtype=torch.float32),
                      "std": torch.tensor(norm["std"], dtype=torch.float32)}
        self._mean = self.stats["mean"].view(-1, 1, 1)
        self._std = self.stats["std"].clamp_min(1e-8).view(-1, 1, 1)
        self._files = [self.root / s["file"] for s in meta["shards"]]
        self._offsets = [_safetensors_offsets(p) for p in self._files]
        labels, flipped, starts = [], [], [0]
        for path in self._files:
            with safe_open(str(path), framework="pt") as f:
                labels.append(f.get_tensor("labels"))
                flipped.append(f.get_tensor("flipped"))
            starts.append(starts[-1] + labels[-1].numel())
        self.labels = torch.cat(labels).clamp_min(0)
        self._starts = starts
        self._rows = None if include_flipped else torch.nonzero(~torch.cat(flipped)).flatten()
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self._starts[-1] if self._rows is None else int(self._rows.numel())

    def _latents(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            offset, shape, dtype = self._offsets[shard]["latents"]
            self._maps[shard] = np.memmap(self._files[shard], dtype=_NP_DTYPES[dtype], mode="r",
                                          offset=offset, shape=tuple(shape))
        return self._maps[shard]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} latents")
        i = i % len(self)
        row = i if self._rows is None else int(self._rows[i])
        shard = bisect.bisect_right(self._starts, row) - 1
        z = torch.from_numpy(np.array(self._latents(shard)[row - self._starts[shard]], dtype=np.float32))
        if self.normalize:
            z = (z - self._mean) / self._std
        return z, int(self.labels[row])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps are reopened in each worker process
        return state
