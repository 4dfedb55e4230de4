"""Exponential moving averages of weights: the autoencoder's EMA and the iBOT teacher."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen copy of `model` updated as ema = decay * ema + (1 - decay) * model (params; buffers copied).

    `parameter_names` restricts which parameters are averaged (e.g. only the encoder for a teacher). The copy
    may be pruned afterwards (e.g. `TCAE.drop_decoder`): updates go over what the copy still holds.
    """

    def __init__(self, model: nn.Module, parameter_names: set[str] | None = None) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.names = parameter_names

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        ema_params = dict(self.module.named_parameters())
        pairs = [(ema_params[n], p) for n, p in model.named_parameters()
                 if self.names is None or n in self.names]
        if pairs:
            ema, cur = zip(*pairs)
            torch._foreach_lerp_(list(ema), [c.detach().to(e.dtype) for e, c in zip(ema, cur)], 1.0 - decay)
        model_bufs = dict(model.named_buffers())
        for n, b in self.module.named_buffers():
            b.copy_(model_bufs[n])


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """Teacher momentum: base -> final along a half cosine over the run (iBOT/DINO)."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
