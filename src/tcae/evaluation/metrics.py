"""Per-image reconstruction metrics (PSNR, SSIM, LPIPS) and an exact, DDP-reducible running mean.

Images enter as float (B, 3, H, W) in [-1, 1]; reconstructions are clamped to [-1, 1] (what a
saved image shows) and both are mapped to [0, 1] with ``data_range = 1``. PSNR and SSIM are
torchmetrics' functional implementations, per image (SSIM: 11x11 Gaussian window, sigma 1.5,
K1 0.01, K2 0.03, mean over the window-valid interior — Wang et al. 2004's reference code; equal
to scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)``). Dataset values are means over images
(not over batches), so :class:`MetricSums` keeps a sum and a count per metric, and the DDP
reduction is a plain sum all-reduce.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from tcae import dist

_SSIM_PAD = 5  # half-width of the 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] float32, clamped."""
    return ((x.float() + 1) / 2).clamp(0, 1)


@torch.no_grad()
def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image, (B,), of pred vs target, both (B, C, H, W) in [-1, 1] (data range 1 after
    mapping to [0, 1]). Identical images give +inf."""
    return peak_signal_noise_ratio(to_unit_range(pred), to_unit_range(target), data_range=1.0,
                                   reduction="none", dim=(1, 2, 3))


@torch.no_grad()
def ssim_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM per image, (B,), in [-1, 1] (1 = identical), of pred vs target, both (B, C, H, W) in [-1, 1].

    The SSIM map is torchmetrics'; its mean is taken over the pixels whose 11x11 window lies inside
    the image (a 5 px border is dropped), as in Wang et al.'s reference code and scikit-image.
    (torchmetrics' own mean also counts the border, computed on reflect-padded images, which
    shifts small images by ~1e-3.) Images must be larger than 10 px on each side.
    """
    if min(pred.shape[-2:]) <= 2 * _SSIM_PAD:
        raise ValueError(f"SSIM needs images larger than {2 * _SSIM_PAD} px, got {tuple(pred.shape[-2:])}")
    _, ssim_map = structural_similarity_index_measure(
        to_unit_range(pred), to_unit_range(target), data_range=1.0, reduction="none", return_full_image=True)
    p = _SSIM_PAD
    return ssim_map[..., p:-p, p:-p].flatten(1).mean(1)


class MetricSums:
    """Running sums and counts per metric name; ``means()`` gives the exact mean over all images.

    ``add(name, values)`` with values (B,) (one per image); ``all_reduce()`` sums over DDP ranks
    (call on every rank with the same metric names: pass them as ``names``). Sums stay float64
    tensors on the values' device (no host sync per batch); they are read back once, in
    ``all_reduce()`` / ``means()``.
    """

    def __init__(self, names: Sequence[str] = ()) -> None:
        # pre-registered names exist on every rank even if one rank gets no image (same all-reduce shape)
        self._sums: dict[str, torch.Tensor | None] = {k: None for k in names}
        self.counts: dict[str, int] = {k: 0 for k in names}

    @torch.no_grad()
    def add(self, name: str, values: torch.Tensor) -> None:
        """Add per-image values (B,) (summed on their device, asynchronously)."""
        s = values.detach().double().sum()
        prev = self._sums.get(name)
        self._sums[name] = s if prev is None else prev + s.to(prev.device)
        self.counts[name] = self.counts.get(name, 0) + values.numel()

    def sums(self) -> dict[str, float]:
        """The sum per metric name, as floats (one device -> host copy)."""
        names = list(self._sums)
        device = next((t.device for t in self._sums.values() if t is not None), torch.device("cpu"))
        return dict(zip(names, self._stack(names, device).cpu().tolist()))

    def _stack(self, names: Sequence[str], device: torch.device) -> torch.Tensor:
        """The sums of ``names`` as one float64 tensor (len(names),) on ``device``."""
        if not names:
            return torch.zeros(0, dtype=torch.float64, device=device)
        return torch.stack([torch.zeros((), dtype=torch.float64, device=device) if self._sums[k] is None
                            else self._sums[k].to(device) for k in names])

    @torch.no_grad()
    def all_reduce(self, device: torch.device | str = "cpu") -> None:
        """Sum over ranks of the default process group (no-op without one). ``device``: cuda for NCCL."""
        if dist.world_size() == 1:
            return
        device = torch.device(device)
        names = sorted(self._sums)
        counts = torch.tensor([float(self.counts[k]) for k in names], dtype=torch.float64, device=device)
        t = torch.stack([self._stack(names, device), counts], 1)
        dist.all_reduce_(t)
        for k, (s, c) in zip(names, t.cpu().tolist()):
            self._sums[k], self.counts[k] = torch.tensor(s, dtype=torch.float64), int(round(c))

    def means(self) -> dict[str, float]:
        sums = self.sums()
        return {k: sums[k] / self.counts[k] for k in sums if self.counts[k] > 0}


class LPIPSMetric(nn.Module):
    """LPIPS (VGG) distance for evaluation; ``forward(pred, target)`` in [-1, 1] -> per-image values (B,).

    Built by the project's :func:`tcae.losses.perceptual.load_lpips`, which raises a
    ``FileNotFoundError`` naming the VGG16 file (and where it goes) when its weights are not on
    disk. The loss module averages over the batch; its inner ``lpips.LPIPS`` network gives the
    per-image values used here.
    """

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        from tcae.evaluation.features import MissingWeightsError
        from tcae.losses.perceptual import load_lpips

        try:
            self.loss = load_lpips(None if weights is None else str(weights))
        except FileNotFoundError as err:
            raise MissingWeightsError(f"{err} (tcae eval: --lpips-weights PATH)") from None
        self.loss.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss.net(pred.float().clamp(-1, 1), target.float()).flatten()
