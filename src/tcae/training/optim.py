"""AdamW parameter groups shared by the trainers."""

from __future__ import annotations

from torch import nn


def param_groups(module: nn.Module, weight_decay: float, lr: float) -> list[dict]:
    """Trainable parameters split so biases, norms and learned tokens (1-D or `*_token`) get no weight decay."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("_token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
