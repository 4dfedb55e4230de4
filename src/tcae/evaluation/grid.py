"""Reconstruction grids: originals in the top row, their reconstructions below and, given the latents,
a third row that shows them (the first 3 principal components of the latent channels as RGB); saved
as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.data import Dataset, IterableDataset
from torchvision.utils import make_grid, save_image


def latent_pca_rgb(latents: torch.Tensor) -> torch.Tensor:
    """A picture of latents: ``latents`` (B, c, h, w) -> (B, 3, h, w) float in [0, 1].

    The c-dimensional latent vectors of all B*h*w positions are centred and projected on their first 3
    principal components (exact SVD, so the view is deterministic); each component is min-max scaled
    over the whole batch (a constant component maps to 0) and its sign fixed so that its largest
    loading is positive. With c < 3 the missing channels are 0.
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be (B, c, h, w), got shape {tuple(latents.shape)}")
    b, c, h, w = latents.shape
    x = rearrange(latents.detach().float().cpu(), "b c h w -> (b h w) c")
    x = x - x.mean(dim=0)
    k = min(3, c)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    comps = vh[:k].T  # (c, k)
    strongest = comps.abs().argmax(dim=0)
    comps = comps * torch.where(comps[strongest, torch.arange(k)] < 0, -1.0, 1.0)  # SVD signs are arbitrary
    proj = x @ comps  # (N, k)
    lo, hi = proj.min(dim=0).values, proj.max(dim=0).values
    span = hi - lo
    scaled = torch.where(span > 1e-12, (proj - lo) / span.clamp_min(1e-12), torch.zeros_like(proj))
    if k < 3:
        scaled = torch.cat([scaled, scaled.new_zeros(scaled.shape[0], 3 - k)], dim=1)
    return rearrange(scaled, "(b h w) k -> b k h w", b=b, h=h, w=w)


def save_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | os.PathLike,
              padding: int = 2, latents: torch.Tensor | None = None) -> Path:
    """Write a PNG: ``originals`` (N, 3, H, W) above ``reconstructions`` (N, 3, H, W), both in [-1, 1]
    (clamped), and with ``latents`` (N, c, h, w) a third row with :func:`latent_pca_rgb` of them,
    upscaled to H x W (nearest). Returns the path."""
    if originals.shape != reconstructions.shape:
        raise ValueError(f"shape mismatch: originals {tuple(originals.shape)} vs "
                         f"reconstructions {tuple(reconstructions.shape)}")
    rows = [originals.detach().float().cpu(), reconstructions.detach().float().cpu()]
    if latents is not None:
        if latents.shape[0] != originals.shape[0]:
            raise ValueError(f"{latents.shape[0]} latents for {originals.shape[0]} images")
        view = F.interpolate(latent_pca_rgb(latents), size=originals.shape[-2:], mode="nearest")
        rows.append(view * 2 - 1)
    grid = make_grid(((torch.cat(rows) + 1) / 2).clamp(0, 1), nrow=originals.shape[0], padding=padding,
                     pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path


@torch.no_grad()
def reconstruction_grid(model: nn.Module, dataset: Dataset, path: str | os.PathLike,
                        device: torch.device | str = "cpu", n: int = 8) -> Path:
    """Reconstruct the first ``n`` images of ``dataset`` (samples ``{"image": (3, H, W) in [-1, 1]}``)
    with ``model.encode`` / ``model.decode`` and save them with :func:`save_grid`, latent view included.

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
    z = model.encode(x)
    recon = model.decode(z).float()
    return save_grid(x, recon, path, latents=z)
