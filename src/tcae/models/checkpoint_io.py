"""Loading weights with errors that name what does not match."""

from __future__ import annotations

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model it is loaded into (different config)."""


def load_state_dict_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load `state` into `module` strictly; on any mismatch raise CheckpointMismatchError listing
    missing keys, unexpected keys and shape differences (expected vs given)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: expected {tuple(own[k].shape)}, given {tuple(state[k].shape)}"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatches:\n  " + "\n  ".join(shapes[:20]))
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:10]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:10]}")
        raise CheckpointMismatchError(
            f"{source} does not match the model (was it saved from a different config?)\n" + "\n".join(parts)
        )
    module.load_state_dict(state, strict=True)
