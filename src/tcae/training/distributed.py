"""torch.distributed set-up for `torchrun`: gloo on CPU, nccl on CUDA; a no-op in one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tcae.device import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over ranks (returns a new tensor; identity in one process)."""
    if not is_dist():
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is true on any rank (so all ranks take the same branch)."""
    if not is_dist():
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
