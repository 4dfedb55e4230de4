"""Pixel reconstruction loss.

    L_pix = mean |x_hat - x|        (L1 over every pixel, channel and image)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between `pred` and `target` (any equal shapes, e.g. (B, 3, H, W)) -> scalar."""
    return F.l1_loss(pred, target)
