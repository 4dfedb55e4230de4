"""Reconstruction evaluation of a tokenizer over a dataset: PSNR, SSIM, LPIPS, rFID (+ other FDs).

:class:`Evaluator` (or :func:`evaluate` for one model) streams the data in batches: each image is
encoded and decoded once, per-image metrics are summed, feature statistics of originals and
reconstructions are accumulated
(:class:`~tcae.evaluation.fid.FeatureStats`), and nothing grows with the dataset. Under DDP
(``torchrun``; process group already initialised) rank r of W takes images r, r + W, ...
(no padding, so every image counts exactly once) and all sums are all-reduced at the end;
every rank returns the same result.

Metric names (``metrics=``):

- ``psnr``, ``ssim``: torchmetrics (see :mod:`tcae.evaluation.metrics`); need no weights.
- ``lpips``: LPIPS-VGG via :func:`tcae.losses.perceptual.load_lpips` (VGG16 weights file needed).
- ``rfid``: Fréchet distance between InceptionV3 statistics of the originals and of the
  reconstructions — or of the reconstructions and ``fid_stats`` (reference ``.npz``) if given.
  With ``feature_network=<nn.Module>`` the same distance is computed over that module instead and
  reported as ``rfd_custom``, labelled "frechet distance (custom network)", never as FID.
- ``fd:<network>``: the same Fréchet distance over another network, e.g. ``fd:dinov2``,
  ``fd:torchvision:resnet50`` (see :mod:`tcae.evaluation.features`); key ``rfd_<network>``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from tcae import dist
from tcae.data import eval_loader
from tcae.device import resolve_device
from tcae.evaluation.features import FeatureNetwork, MissingWeightsError
from tcae.evaluation.fid import FeatureStats, frechet_distance
from tcae.evaluation.fid_protocol import load_stats, save_stats
from tcae.evaluation.grid import reconstruction_grid
from tcae.evaluation.metrics import LPIPSMetric, MetricSums, psnr_per_image, ssim_per_image
from tcae.evaluation.networks import build_feature_network
from tcae.evaluation.report import environment_versions

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("psnr", "ssim", "lpips", "rfid")
METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS (VGG)", "rfid": "rFID (InceptionV3)"}


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """``"psnr,ssim"`` or a sequence -> validated list of metric names (order kept, duplicates dropped)."""
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    out: list[str] = []
    for m in names:
        if m not in ("psnr", "ssim", "lpips", "rfid") and not (m.startswith("fd:") and len(m) > 3):
            raise ValueError(f"unknown metric {m!r}; expected psnr, ssim, lpips, rfid or fd:<network> "
                             "(fd:dinov2, fd:torchvision:resnet50, ...)")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError("no metric requested")
    return out


class Evaluator:
    """Reconstruction metrics of tokenizers on one data set: built once from the data, the metrics and their
    feature networks (every weights file is checked here, before any image is read), then `run(model)` per
    model. The originals' feature statistics do not depend on the model: they are computed by the first
    run that needs them and reused by every later one.

    Args:
        data: a data spec (``tcae.data``; its val split unless it names one, deterministic transform) or a
            Dataset of ``{"image": (3, H, W) in [-1, 1], ...}`` samples.
        image_size: side of the evaluated images; default the first model's ``config.image_size``.
        metrics: names or comma-separated string (module docstring).
        fid_stats: reference ``.npz`` (``mu``, ``sigma``: InceptionV3 pool features); rFID is then
            reconstructions vs reference.
        feature_weights: weights file of the Inception network (a path), or a mapping network name
            ("inception", "dinov2", "torchvision:resnet50", ...) -> path.
        max_images: evaluate the first N images only.
        feature_network: the network of the ``rfid`` metric: "inception" (FID proper) or any
            nn.Module (reported as a custom-network Fréchet distance).
        lpips_weights: VGG16 weights file for LPIPS (default: torch hub cache).
        autocast: bfloat16 autocast for the model (not for the metric networks).
        progress: a progress bar on rank 0.

    Raises:
        MissingWeightsError / FileNotFoundError: a requested network's weights are not on disk.
    """

    def __init__(
        self,
        data: str | Dataset,
        image_size: int | None = None,
        metrics: str | Sequence[str] = DEFAULT_METRICS,
        batch_size: int = 32,
        device: torch.device | str | None = None,
        fid_stats: str | os.PathLike | None = None,
        feature_weights: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
        max_images: int | None = None,
        num_workers: int = 0,
        feature_network: str | nn.Module = "inception",
        lpips_weights: str | os.PathLike | None = None,
        autocast: bool = False,
        progress: bool = True,
    ) -> None:
        self.names = parse_metrics(metrics)
        self.device = resolve_device(device)
        self.data, self.image_size = data, image_size
        self.batch_size, self.num_workers, self.max_images = batch_size, num_workers, max_images
        self.autocast, self.progress = autocast, progress
        self.spec_text = data if isinstance(data, str) else f"<{type(data).__name__}>"
        weights_map = dict(feature_weights) if isinstance(feature_weights, Mapping) else (
            {"inception": feature_weights} if feature_weights is not None else {})
        missing: list[str] = []  # every missing file in one message, not one per run
        self.lpips_net = None
        if "lpips" in self.names:
            try:
                self.lpips_net = LPIPSMetric(lpips_weights).to(self.device)
            except FileNotFoundError as err:
                missing.append(str(err))
        self.networks: dict[str, FeatureNetwork] = {}
        for m in self.names:
            if m == "rfid" or m.startswith("fd:"):
                spec = feature_network if m == "rfid" else m[3:]
                key = spec if isinstance(spec, str) else "custom"
                try:
                    net = build_feature_network(spec, weights_map.get(key)).to(self.device).eval()
                except FileNotFoundError as err:
                    missing.append(str(err))
                    continue
                self.networks[net.metric_key("r")] = net
        if missing:
            raise MissingWeightsError("\n".join(missing) + "\n(psnr and ssim need no pretrained weights: "
                                      "--metrics psnr,ssim)")
        self.fid_stats = fid_stats
        self.reference = load_stats(fid_stats) if fid_stats is not None else None
        if self.reference is not None and "rfid" not in self.networks:
            raise ValueError("fid_stats (reference statistics) given but the rfid (InceptionV3) metric is not "
                             "requested")
        self._datasets: dict[int, Dataset] = {}
        self._originals: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}  # (metric key, size)

    def dataset(self, size: int) -> Dataset:
        if not isinstance(self.data, str):
            return self.data
        if size not in self._datasets:
            from tcae.data import build_dataset

            self._datasets[size] = build_dataset(self.data, size, train=False)
        return self._datasets[size]

    @torch.no_grad()
    def run(self, model: nn.Module, model_name: str | None = None, grid_path: str | os.PathLike | None = None,
            save_fid_stats: str | os.PathLike | None = None) -> dict[str, Any]:
        """Evaluate ``model`` (``encode(x)`` / ``decode(z)``, x: (B, 3, H, W) in [-1, 1]).

        grid_path: a PNG of the first 8 originals above their reconstructions (rank 0). save_fid_stats:
        also write the originals' statistics of the rfid network to this ``.npz`` (rank 0).

        Returns ``{"metrics": {key: float}, "labels": {key: str}, "num_images": int, "data": str,
        "image_size": int, "feature_networks": {...}, "model": {...}, "versions": {...}, ...}``.
        """
        size = self._image_size(model)
        dataset = self.dataset(size)
        rank, world = dist.rank(), dist.world_size()
        model = model.to(self.device).eval()
        sums = MetricSums([m for m in ("psnr", "ssim", "lpips") if m in self.names])
        stats = {k: (FeatureStats(net.dim, self.device), FeatureStats(net.dim, self.device))
                 for k, net in self.networks.items()}
        cached = {k: self._originals[(k, size)] for k in self.networks if (k, size) in self._originals}
        needs_real = {k: _needs_real(k, self.reference, save_fid_stats) and k not in cached for k in self.networks}
        num_images, image_hw = self._stream(model, dataset, sums, stats, needs_real, progress=rank == 0)

        reduce_device = self.device if self.device.type == "cuda" else torch.device("cpu")  # NCCL: cuda, gloo: cpu
        sums.all_reduce(reduce_device)
        if world > 1:
            n = torch.tensor([float(num_images)], dtype=torch.float64, device=reduce_device)
            num_images = int(round(dist.all_reduce_(n).item()))
        values = sums.means()
        labels = {k: METRIC_LABELS[k] for k in values}
        net_info = self._frechet_distances(stats, cached, needs_real, size, save_fid_stats, values, labels)

        if grid_path is not None and rank == 0:
            reconstruction_grid(model, dataset, grid_path, device=self.device, n=8)
        return {
            "metrics": {m: values[m] for m in _ordered(self.names, values)},
            "labels": labels,
            "num_images": num_images,
            "data": self.spec_text,
            "image_size": image_hw[0] if image_hw and image_hw[0] == image_hw[1] else (image_hw or size or None),
            "feature_networks": net_info,
            "model": _model_info(model, model_name),
            "world_size": world,
            "grid": None if grid_path is None else str(grid_path),
            "versions": environment_versions(),
        }

    def _image_size(self, model: nn.Module) -> int:
        """The evaluation size (this evaluator's, else the model's training size), checked against the model
        before any data is loaded."""
        size = int(self.image_size or getattr(getattr(model, "config", None), "image_size", 0) or 0)
        if size and hasattr(model, "check_image_size"):
            model.check_image_size(size)
        if isinstance(self.data, str) and not size:
            raise ValueError("image_size is needed when the model has no config.image_size")
        return size

    def _stream(self, model: nn.Module, dataset: Dataset, sums: MetricSums, stats: dict, needs_real: dict,
                progress: bool) -> tuple[int, list[int] | None]:
        """Reconstruct this rank's share of ``dataset`` batch by batch into the metric sums and the feature
        statistics (originals only where ``needs_real``). Returns (this rank's image count, (H, W))."""
        loader = eval_loader(dataset, self.batch_size, self.num_workers, self.max_images, distributed=True,
                             device=self.device)
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else nullcontext()
        image_hw: list[int] | None = None
        num_images = 0  # counted even with FD metrics only
        # disable=None: tqdm draws only on a terminal, never into a log file
        for batch in tqdm(loader, desc="eval", disable=None if progress and self.progress else True):
            x = batch["image"].to(self.device, non_blocking=True)
            image_hw = image_hw or list(x.shape[-2:])
            with amp:
                recon = model.decode(model.encode(x))
            recon = recon.float().clamp(-1, 1)  # what a saved image shows; metrics see the same pixels
            if "psnr" in self.names:
                sums.add("psnr", psnr_per_image(recon, x))
            if "ssim" in self.names:
                sums.add("ssim", ssim_per_image(recon, x))
            if self.lpips_net is not None:
                sums.add("lpips", self.lpips_net(recon, x))
            num_images += x.shape[0]
            for key, net in self.networks.items():
                real, fake = stats[key]
                if needs_real[key]:
                    real.update(net(x)["features"])
                fake.update(net(recon)["features"])
        return num_images, image_hw

    def _frechet_distances(self, stats: dict, cached: dict, needs_real: dict, size: int,
                           save_fid_stats: str | os.PathLike | None, values: dict, labels: dict) -> dict[str, Any]:
        """Each feature network's FD of the reconstructions against the originals (or the rFID reference
        statistics) into ``values``/``labels``; the originals' statistics are kept for the next model.
        Returns what each network was and what it compared against."""
        net_info: dict[str, Any] = {}
        for key, net in self.networks.items():
            real, fake = stats[key]
            fake.all_reduce()
            mu_f, sigma_f = fake.mean_cov()
            originals = cached.get(key)
            if needs_real[key]:
                real.all_reduce()
                originals = self._originals[(key, size)] = real.mean_cov()
            if key == "rfid" and save_fid_stats is not None and dist.rank() == 0:
                save_stats(save_fid_stats, *originals)
            if key == "rfid" and self.reference is not None:
                (mu_r, sigma_r), against = self.reference, str(self.fid_stats)
            else:
                (mu_r, sigma_r), against = originals, "originals"
            values[key] = frechet_distance(mu_f, sigma_f, mu_r, sigma_r)
            labels[key] = net.metric_label("r")
            net_info[key] = {"network": net.name, "label": labels[key], "dim": int(mu_f.shape[0]),
                             "reference": against}
        return net_info


def evaluate(model: nn.Module, data_spec: str | Dataset, grid_path: str | os.PathLike | None = None,
             save_fid_stats: str | os.PathLike | None = None, model_name: str | None = None,
             **evaluator_kwargs: Any) -> dict[str, Any]:
    """One model, one data set: ``Evaluator(data_spec, **evaluator_kwargs).run(model, ...)``."""
    return Evaluator(data_spec, **evaluator_kwargs).run(model, model_name, grid_path, save_fid_stats)


def _needs_real(key: str, reference: Any, save_fid_stats: Any) -> bool:
    """Whether the originals' features are needed: not for rfid against reference stats (unless saved)."""
    return key != "rfid" or reference is None or save_fid_stats is not None


def _ordered(names: list[str], values: dict[str, float]) -> list[str]:
    """Metric keys in request order (an "rfid"/"fd:..." request maps to its rfid / rfd_* key)."""
    keys = [k for k in ("psnr", "ssim", "lpips") if k in names and k in values]
    return keys + [k for k in values if k not in keys]


def _model_info(model: nn.Module, name: str | None) -> dict[str, Any]:
    config = getattr(model, "config", None)
    info: dict[str, Any] = {"name": name, "class": type(model).__name__,
                            "params": sum(p.numel() for p in model.parameters())}
    if config is not None and hasattr(config, "to_dict"):
        info["config"] = config.to_dict()
    if hasattr(model, "has_latent_stats"):
        info["has_latent_stats"] = bool(model.has_latent_stats)
    return info
