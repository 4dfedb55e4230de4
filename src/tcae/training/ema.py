"""Exponential moving averages of weights: the autoencoder's and the DiT's EMA (with warm-up) and the iBOT
teacher (its own cosine momentum schedule)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen copy of `model` updated as ema = decay * ema + (1 - decay) * model (params; buffers copied).

    The iBOT teacher is one over `nn.ModuleDict(encoder=..., cls_head=..., patch_head=...)` of the student's
    modules (DINOv2's parallel student/teacher dicts): same names, so updates pair parameters by name.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float, ok: torch.Tensor | None = None) -> None:
        """ema += (1 - decay) * (model - ema); with `ok` (0-dim bool tensor) False, nothing changes. The
        gate is applied on the device (no host sync)."""
        ema_params = dict(self.module.named_parameters())
        pairs = [(ema_params[n], p) for n, p in model.named_parameters()]
        if pairs:
            ema, cur = (list(t) for t in zip(*pairs))
            cur = [c.detach().to(e.dtype) for e, c in zip(ema, cur)]
            if ok is None:
                torch._foreach_lerp_(ema, cur, 1.0 - decay)
            else:  # the gate is a 0-dim device tensor in the weight: no host sync
                weight = ok.to(ema[0].dtype) * (1.0 - decay)
                if ema[0].is_cuda:  # three multi-tensor kernels (a tensor-list lerp runs one kernel per tensor)
                    delta = torch._foreach_sub(cur, ema)
                    torch._foreach_mul_(delta, weight)
                    torch._foreach_add_(ema, delta)
                else:  # on the CPU the per-tensor lerp is the faster of the two (measured)
                    torch._foreach_lerp_(ema, cur, [weight] * len(ema))
        model_bufs = dict(model.named_buffers())
        for n, b in self.module.named_buffers():
            b.copy_(model_bufs[n])


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """The decay of the EMA update after step `step`: :func:`warmup_decay` with `warmup`, else `decay`."""
    return warmup_decay(step, decay) if warmup else decay


def warmup_decay(step: int, decay: float) -> float:
    """EMA decay for the update after optimisation step `step` (0-based): min(decay, (1 + step) / (10 + step)),
    and 0 for the first update (the EMA starts as a copy of the trained weights).

    diffusers' `EMAModel.get_decay` with its defaults (use_ema_warmup=False, update_after_step=0), where
    `step` is its optimization_step - 1: the average covers about the last (10 + step) / 9 steps early on,
    so a short run exports weights close to what it trained instead of a mix dominated by its random
    initialisation (a fixed 0.999 keeps 96% of the init weights after 40 steps). Full decay is reached at
    step (10 * decay - 1) / (1 - decay): 890 for 0.99, 8990 for 0.999."""
    if step <= 0:
        return 0.0
    return min(decay, (1 + step) / (10 + step))


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """Teacher momentum: base -> final along a half cosine over the run (iBOT/DINO)."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
