"""DataLoader construction with an exactly resumable data order.

:class:`ResumableSampler` replaces both ``RandomSampler`` and ``DistributedSampler``: the order
of an epoch is a pure function of (seed, epoch); rank ``r`` of ``W`` takes positions
``r, r + W, ...`` of it (padded by wrapping around, like ``DistributedSampler``, so all ranks
get the same count); and ``set_start_index(i)`` skips the first ``i`` samples of this rank's
share, so a run stopped after ``k`` batches resumes with batch ``k``. Together with the datasets'
per-sample seeding (crops depend on seed, epoch and index only) a resumed run sees exactly the
batches the uninterrupted run would have seen, whatever the number of workers.

Per epoch, call :func:`set_loader_epoch` (``set_loader_epoch(loader, epoch, start_batch)``),
which sets the sampler and the dataset epochs and the resume position; for map-style datasets
``loader.sampler.set_epoch(e)`` alone also reaches the dataset (the sampler forwards the epoch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, Subset

from tcae import dist
from tcae.data.base import sample_seed

logger = logging.getLogger(__name__)


class ResumableSampler(Sampler[int]):
    """Sample indices whose order depends only on (seed, epoch), split between ranks, skippable.

    Args:
        dataset_len: number of samples in the (map-style) dataset.
        seed: base seed of the permutation.
        rank, world_size: this process's share; ``(0, 1)`` without DDP.
        shuffle: permute per epoch (training) or keep index order (evaluation).
        drop_last: drop the tail that does not divide by ``world_size`` instead of padding.
        epoch_listener: called with the epoch by :meth:`set_epoch`; :func:`build_loader` passes
            the dataset's ``set_epoch`` so that its random crops follow the sampler's epoch.
    """

    def __init__(
        self,
        dataset_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
        epoch_listener: Callable[[int], None] | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if dataset_len <= 0:
            raise ValueError("ResumableSampler needs a non-empty dataset")
        self.dataset_len, self.seed = dataset_len, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        if drop_last:
            self.num_samples = dataset_len // world_size
        else:
            self.num_samples = math.ceil(dataset_len / world_size)
        self.epoch = 0
        self.start_index = 0
        self.epoch_listener = epoch_listener

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its permutation, and the dataset's crops) and reset the start index to 0."""
        self.epoch = int(epoch)
        self.start_index = 0
        if self.epoch_listener is not None:
            self.epoch_listener(self.epoch)

    def set_start_index(self, index: int) -> None:
        """Skip the first ``index`` samples of this rank's share of the current epoch.

        To resume after ``k`` batches of size ``b``, pass ``k * b``. Call after :meth:`set_epoch`.
        """
        if not 0 <= index <= self.num_samples:
            raise ValueError(f"start index {index} outside [0, {self.num_samples}]")
        self.start_index = int(index)

    def indices(self) -> list[int]:
        """This rank's full share of the current epoch (ignoring the start index)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, "sampler"))
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        total = self.num_samples * self.world_size
        if total > len(order):  # pad by wrapping around (repeatedly if world_size > dataset_len)
            order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "start_index": self.start_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.set_epoch(state["epoch"])
        self.set_start_index(state["start_index"])


def _dist_info(distributed: bool | None) -> tuple[int, int]:
    if distributed is None:
        distributed = dist.is_initialized()
    if not distributed:
        return 0, 1
    return dist.rank(), dist.world_size()


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    seed: int = 0,
    drop_last: bool = True,
    distributed: bool | None = None,
) -> DataLoader:
    """A DataLoader with a :class:`ResumableSampler` (map-style datasets).

    Args:
        dataset: map-style (gets a ResumableSampler, shuffled when ``train``) or iterable
            (shards split themselves between ranks and workers).
        batch_size: per-process batch size.
        train: shuffle the order (map-style datasets); evaluation keeps index order.
        num_workers: DataLoader worker processes; workers are persistent when > 0.
        collate_fn: e.g. :class:`~tcae.data.masking.MultiCropCollate`; default collation otherwise.
        seed: seed of the sample order and of the workers' base seed.
        drop_last: drop the last incomplete batch (use ``False`` for evaluation).
        distributed: split between DDP ranks; ``None`` = when ``torch.distributed`` is initialised.

    Pinned memory is used when CUDA is available. Call :func:`set_loader_epoch` every epoch (for
    map-style datasets ``loader.sampler.set_epoch`` + ``set_start_index`` do the same).
    """
    rank, world_size = _dist_info(distributed)
    sampler = None
    if not isinstance(dataset, IterableDataset):
        sampler = ResumableSampler(
            len(dataset),
            seed=seed,
            rank=rank,
            world_size=world_size,
            shuffle=train,
            epoch_listener=getattr(dataset, "set_epoch", None),
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def set_loader_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> int:
    """Prepare ``loader`` for ``epoch``, resuming after ``start_batch`` batches of it.

    Sets the sampler's epoch and start index (map-style) and the dataset's epoch (random crops,
    shard order). Returns the number of batches the caller still has to discard itself: 0 for
    map-style datasets, ``start_batch`` for streams, which cannot seek.
    """
    dataset, sampler = loader.dataset, loader.sampler
    dataset_set_epoch = getattr(dataset, "set_epoch", None)
    # A ResumableSampler from build_loader forwards its epoch to the dataset: set it once.
    forwarded = isinstance(sampler, ResumableSampler) and sampler.epoch_listener is not None
    if dataset_set_epoch is not None and not (forwarded and sampler.epoch_listener == dataset_set_epoch):
        dataset_set_epoch(epoch)
    if isinstance(sampler, ResumableSampler):
        sampler.set_epoch(epoch)
        sampler.set_start_index(min(start_batch * (loader.batch_size or 1), sampler.num_samples))
        return 0
    if hasattr(sampler, "set_epoch"):  # e.g. a DistributedSampler the caller built
        sampler.set_epoch(epoch)
    return start_batch


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, max_images: int | None = None,
                distributed: bool = False, device: torch.device | str | None = None) -> DataLoader:
    """A deterministic loader over ``dataset`` in index order, first ``max_images`` only, no padding.

    With ``distributed`` (and an initialised process group), rank r of W takes indices r, r + W, ...
    so the union over ranks is the dataset exactly once (``build_loader`` pads the last round,
    which would count some images twice in dataset statistics). Streams (IterableDataset) split
    themselves between ranks; ``max_images`` is then applied per rank as ``max_images // W``.
    ``device``: where the batches go; a CUDA device pins host memory (so ``non_blocking`` copies
    are asynchronous).
    """
    pin = device is not None and torch.device(device).type == "cuda"
    rank, world = 0, 1
    if distributed:
        rank, world = dist.rank(), dist.world_size()
    if isinstance(dataset, IterableDataset):
        if max_images is not None:
            dataset = _CappedStream(dataset, max(1, int(max_images) // world))
        return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin)
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    return DataLoader(Subset(dataset, range(rank, n, world)), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, pin_memory=pin)


class _CappedStream(IterableDataset):
    """The first ``limit`` samples of a stream (per process)."""

    def __init__(self, stream: IterableDataset, limit: int) -> None:
        self.stream, self.limit = stream, limit

    def __iter__(self) -> Iterator[Any]:
        return islice(iter(self.stream), self.limit)
