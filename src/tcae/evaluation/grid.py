"""Reconstruction grids: originals in the top row, their reconstructions below, saved as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset
from torchvision.utils import make_grid, save_image


def save_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | os.PathLike,
              padding: int = 2) -> Path:
    """Write a 2-row PNG: ``originals`` (N, 3, H, W) above ``reconstructions`` (N, 3, H, W), both in
    [-1, 1] (clamped). Returns the path."""
    if originals.shape != reconstructions.shape:
        raise ValueError(f"shape mismatch: originals {tuple(originals.shape)} vs "
                         f"reconstructions {tuple(reconstructions.shape)}")
    both = torch.cat([originals, reconstructions]).detach().float().cpu()
    grid = make_grid(((both + 1) / 2).clamp(0, 1), nrow=originals.shape[0], padding=padding, pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path


@torch.no_grad()
def reconstruction_grid(model: nn.Module, dataset: Dataset, path: str | os.PathLike,
                        device: torch.device | str = "cpu", n: int = 8) -> Path:
    """Reconstruct the first ``n`` images of ``dataset`` (samples ``{"image": (3, H, W) in [-1, 1]}``)
    with ``model.encode`` / ``model.decode`` and save them with :func:`save_grid`.

    Uses dataset items 0..n-1 whatever the number of DDP ranks, so the grid does not depend on it.
    """
    if isinstance(dataset, IterableDataset):
        items = []
        for sample in dataset:
            items.append(sample["image"])
            if len(items) == n:
                break
    else:
        items = [dataset[i]["image"] for i in range(min(n, len(dataset)))]
    x = torch.stack(items).to(device)
    model.eval()
    recon = model.decode(model.encode(x)).float()
    return save_grid(x, recon, path)
