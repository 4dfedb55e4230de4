"""Fréchet distance from streamed feature statistics, reference-statistics files, Inception Score.

FID (Heusel et al. 2017) is the Fréchet distance between two Gaussians fitted to feature vectors
(InceptionV3 pool features, 2048-d, for "FID" proper; any other network gives "a Fréchet distance
over <network>"):

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

The features of a dataset are never held in memory: :class:`FeatureStats` keeps the count, the sum
and the sum of outer products in float64, which are plain sums and therefore all-reduce exactly
across DDP ranks (up to float64 summation order).

Reference statistics files use the layout of ADM (guided-diffusion's evaluator) and clean-fid:
an ``.npz`` holding ``mu`` (D,) and ``sigma`` (D, D).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from scipy import linalg

from tcae import dist

logger = logging.getLogger(__name__)
_said_singular = False  # the singular-covariance note is logged once per process


class FeatureStats:
    """Streaming mean/covariance of feature vectors (float64 sums; constant memory in N).

    ``update(features)`` with features (N, D); ``all_reduce()`` sums the accumulators over the
    ranks of the default process group (call it on every rank, once, after the last update);
    ``mean_cov()`` -> (mu (D,), sigma (D, D)) as float64 numpy arrays, sigma the unbiased
    sample covariance (divides by N - 1, like ``np.cov``, as pytorch-fid / torch-fidelity do).
    """

    def __init__(self, dim: int | None = None, device: torch.device | str = "cpu") -> None:
        self.count = 0
        self.dim = dim
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None
        if dim is not None:  # allocated up front: a rank without images can still join all_reduce
            self._allocate(dim, torch.device(device))

    def _allocate(self, dim: int, device: torch.device) -> None:
        self.dim = dim
        self._sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self._outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features (N, D), any float dtype and device (sums are kept on that device)."""
        if features.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
        f = features.detach().to(torch.float64)
        if self._sum is None:
            self._allocate(f.shape[1], f.device)
        if f.shape[1] != self.dim:
            raise ValueError(f"feature dimension changed: expected {self.dim}, got {f.shape[1]}")
        self._sum = self._sum.to(f.device)
        self._outer = self._outer.to(f.device)
        self._sum += f.sum(0)
        self._outer += f.T @ f
        self.count += f.shape[0]

    @torch.no_grad()
    def all_reduce(self) -> None:
        """Sum count and accumulators over all ranks (no-op without an initialised process group).

        Every rank must have seen at least one batch, or have been built with ``dim``, so the
        tensors exist with the same shape everywhere.
        """
        if dist.world_size() == 1:
            return
        if self._sum is None:
            raise RuntimeError("FeatureStats.all_reduce on a rank that saw no features: build it with `dim`")
        # NCCL needs CUDA tensors; gloo needs CPU ones: use the accumulators' own device
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self._sum.device)
        for t in (count, self._sum, self._outer):
            dist.all_reduce_(t)
        self.count = int(round(count.item()))

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (D,), sigma (D, D)) float64 numpy; needs at least 2 feature vectors."""
        if self.count < 2 or self._sum is None:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        n = self.count
        s, o = self._sum.cpu().numpy(), self._outer.cpu().numpy()
        mu = s / n
        sigma = (o - n * np.outer(mu, mu)) / (n - 1)
        sigma = (sigma + sigma.T) / 2  # exact symmetry (rounding in the outer-product sums)
        return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); mu (D,), sigma (D, D).

    Follows pytorch-fid: ``scipy.linalg.sqrtm(sigma1 @ sigma2)``; if that is not finite
    (singular product), ``eps`` is added to both diagonals; a numerically imaginary result is
    dropped to its real part, unless the imaginary diagonal exceeds 1e-3 (then ValueError).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different shapes: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"covariances must both be {(mu1.shape[0],) * 2}, got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    covmean, singular = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean, _ = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if singular:
        _note_singular(mu1.shape[0])
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} "
                             "in sqrtm(sigma1 @ sigma2); the covariances are badly conditioned "
                             "(too few samples for the feature dimension?)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _sqrtm(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """scipy's sqrtm, and whether it found `a` singular; its LinAlgWarning (a raw warnings line with a source
    path) is caught here and said once, plainly, by :func:`_note_singular`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        root = linalg.sqrtm(a)
    singular = False
    for w in caught:
        if issubclass(w.category, linalg.LinAlgWarning):
            singular = True
        else:  # not ours to hide
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return root, singular


def _note_singular(dim: int) -> None:
    global _said_singular
    if not _said_singular:
        logger.info("Fréchet distance: the product of the two %d-d feature covariances is singular (fewer images "
                    "than feature dimensions?); the distance is computed as pytorch-fid does, and is comparable "
                    "only between runs with the same number of images", dim)
        _said_singular = True


def inception_score(logits: torch.Tensor, splits: int = 10, shuffle: bool = True, seed: int = 2020
                    ) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) from classifier logits (N, classes).

    Uses torch-fidelity's implementation; pass InceptionV3's ``logits_unbiased`` (what the
    "inception" feature network returns as ``logits``) for numbers comparable to the literature.
    """
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    out = isc_features_to_metric(logits.detach().cpu(), splits=splits, shuffle=shuffle, rng_seed=seed)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]
