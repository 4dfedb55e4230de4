"""Generation metrics of a sample file: gFID and Inception Score (`tcae eval-gen`).

Samples are an ADM-layout `.npz` (`arr_0`: uint8 (N, H, W, 3), labels in `arr_1`). The reference is
either statistics (`.npz` with `mu`, `sigma`, e.g. ADM's `VIRTUAL_imagenet256_labeled.npz` read as it is,
or a torch-fidelity `.pt`), images in the same `.npz` layout, or a data spec (its val split unless the
spec names one, prepared by ADM's center crop at the samples' size: :mod:`tcae.evaluation.fid_protocol`).
Features come from `tcae.evaluation`: torch-fidelity's InceptionV3 port of the TF-FID network by default
(numbers comparable with ADM's evaluator), or any other feature network; a judge (`judge:fashion`, ...),
whose logits are over the data's own classes, also gives the class agreement of labelled samples.

The pinned protocol (docs/fid-protocol.md): labelled samples must be balanced per class (50 per class for
50k ImageNet samples) unless `allow_unbalanced`; every number's label names the sample count, the class
balance and the reference (with its image count where known).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tcae.device import resolve_device
from tcae.evaluation.networks import build_feature_network
from tcae.evaluation.npz import load_sample_labels, load_samples_npz


def _uint8_batches(images: np.ndarray, batch_size: int) -> Any:
    for i in range(0, images.shape[0], batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2)
        yield x.float() / 127.5 - 1.0  # exactly invertible by the Inception network's uint8 quantisation


@torch.no_grad()
def evaluate_samples(
    samples: str | os.PathLike | np.ndarray,
    reference: str | os.PathLike,
    image_size: int | None = None,
    feature_network: str | nn.Module = "inception",
    inception_weights: str | os.PathLike | None = None,
    batch_size: int = 100,
    device: str | torch.device | None = None,
    max_reference: int | None = None,
    progress: bool = True,
    labels: np.ndarray | None = None,
    reference_cache: dict | None = None,
    allow_unbalanced: bool = False,
) -> dict[str, Any]:
    """gFID (Fréchet distance of samples vs reference features) and IS of the samples.

    samples: ADM-layout `.npz` path or uint8 (N, H, W, 3) array. reference: see the module docstring.
    image_size: size of reference images from a data spec (default: the samples' height).
    feature_network: "inception" (gFID proper), another feature network name ("dinov2",
    "judge:fashion", ...; key ``gfd_<name>``) or an nn.Module / FeatureNetwork (labelled as a custom
    network unless it is a FeatureNetwork). The Inception Score is computed only with the InceptionV3
    network (never from another network's logits). inception_weights: the weights file of
    ``feature_network`` (named so for the default network).
    labels: the samples' class labels (N,) (default: the `.npz`'s `arr_1`, if any); with a judge
    network (``judges_labels``) they give ``class_agreement`` (share of samples the judge assigns to
    their label) and its per-class counts.
    reference_cache: a dict kept by the caller across calls with the same network: the reference's
    feature statistics are computed once and reused.
    allow_unbalanced: accept labelled samples whose classes are not equally represented.
    Returns {"metrics": {"gfid"|"gfd_...", "is", "is_std", "class_agreement"}, "labels" (the metrics'
    human-readable names, each naming the samples and the reference), "num_samples", "class_balance",
    "reference", "num_reference", "protocol", "summary", "feature_trace" (tr Σ of the samples' features), ...}.
    """
    images, labels, balance = _labelled_samples(samples, labels, allow_unbalanced)
    device = resolve_device(device)
    net = build_feature_network(feature_network, inception_weights).to(device).eval()
    keep_logits = net.is_fid or (net.judges_labels and labels is not None)
    (mu_f, sigma_f), logits = _sample_statistics(net, images, batch_size, device, keep_logits, progress)
    size = int(image_size or images.shape[1])
    cache_key = (net.name, str(reference), size, max_reference)
    if reference_cache is not None and cache_key in reference_cache:
        ref_stats, num_ref, ref_desc = reference_cache[cache_key]
    else:
        ref_stats, num_ref, ref_desc = _reference_statistics(net, reference, size, batch_size, device, max_reference,
                                                             progress)
        if reference_cache is not None:
            reference_cache[cache_key] = (ref_stats, num_ref, ref_desc)
    return _result(net, net.metric_key("g"), mu_f, sigma_f, ref_stats, num_ref, logits, labels, images, ref_desc,
                   balance)


def _labelled_samples(samples: str | os.PathLike | np.ndarray, labels: np.ndarray | None, allow_unbalanced: bool
                      ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(uint8 (N, H, W, 3) images, their labels or None, the class balance), refused when unbalanced."""
    from tcae.evaluation.fid_protocol import class_balance, describe_samples

    images = load_samples_npz(samples) if not isinstance(samples, np.ndarray) else samples
    if labels is None and not isinstance(samples, np.ndarray):
        labels = load_sample_labels(samples)
    balance = class_balance(labels)
    if balance["balanced"] is False and not allow_unbalanced:
        raise ValueError(f"{samples if not isinstance(samples, np.ndarray) else 'the samples'}: "
                         f"{describe_samples(len(images), balance)}; the FID protocol draws the same number of "
                         "samples per class (e.g. tcae sample --num 50000 over 1000 classes); pass "
                         "--allow-unbalanced to evaluate them anyway")
    return images, labels, balance


def _sample_statistics(net: nn.Module, images: np.ndarray, batch_size: int, device: torch.device,
                       keep_logits: bool, progress: bool) -> tuple[tuple[np.ndarray, np.ndarray], list[torch.Tensor]]:
    """((mu, sigma) of the images' features, their logits per batch where kept: IS only from InceptionV3's
    logits, class agreement only from a judge's)."""
    from tcae.evaluation.fid import FeatureStats

    stats, logits = FeatureStats(net.dim), []
    for x in tqdm(_uint8_batches(images, batch_size), total=-(-len(images) // batch_size),
                  desc="sample features", disable=None if progress else True):
        out = net(x.to(device))
        stats.update(out["features"])
        if keep_logits and "logits" in out:
            logits.append(out["logits"].float().cpu())
    return stats.mean_cov(), logits


def _reference_statistics(net: nn.Module, reference: str | os.PathLike, image_size: int, batch_size: int,
                          device: torch.device, max_reference: int | None, progress: bool
                          ) -> tuple[tuple[np.ndarray, np.ndarray], int | None, str]:
    """((mu, sigma), image count, description) of the reference, which is one of: a statistics file
    (InceptionV3's only: ADM's, tcae fid-ref's, torch-fidelity's), images in an ADM-layout `.npz`, or a
    data spec (ADM's center crop at `image_size`)."""
    from tcae.evaluation.fid import FeatureStats
    from tcae.evaluation.fid_protocol import load_reference, reference_statistics

    path = Path(reference)
    if path.suffix in (".npz", ".pt") and path.is_file():
        if net.is_fid and _holds_statistics(path):
            ref = load_reference(path)
            return (ref.mu, ref.sigma), ref.num_images, ref.describe()
        real = FeatureStats(net.dim)
        for x in _uint8_batches(load_samples_npz(path)[:max_reference], batch_size):
            real.update(net(x.to(device))["features"])
        return real.mean_cov(), real.count, f"{path.name} (arr_0: {real.count} images)"
    mu, sigma, num_ref = reference_statistics(str(reference), image_size, feature_network=net, batch_size=batch_size,
                                              device=device, max_images=max_reference, progress=progress)
    return (mu, sigma), num_ref, f"{reference} ({num_ref} images at {image_size} px, ADM center crop)"


def _holds_statistics(path: Path) -> bool:
    """Whether a reference file holds feature statistics (`mu`, `sigma`; every `.pt`), not only images."""
    if path.suffix == ".pt":
        return True
    with np.load(path) as data:
        return "mu" in data.files and "sigma" in data.files


def _result(net, key: str, mu_f, sigma_f, ref_stats, num_ref, logits: list, labels, images: np.ndarray,
            reference: str, balance: dict[str, Any]) -> dict[str, Any]:
    from tcae.evaluation import class_agreement, frechet_distance, inception_score
    from tcae.evaluation.fid_protocol import PROTOCOL, describe_samples

    samples = describe_samples(int(images.shape[0]), balance)
    against = f"{samples} vs {reference}"
    metrics = {key: frechet_distance(mu_f, sigma_f, *ref_stats)}
    names = {key: f"{net.metric_label('g')}; {against}"}
    extra: dict[str, Any] = {}
    if net.is_fid and logits:
        metrics["is"], metrics["is_std"] = inception_score(torch.cat(logits))
        names["is"], names["is_std"] = f"Inception Score; {samples}", "Inception Score std over 10 splits"
    if net.judges_labels and logits and labels is not None:
        agreement = class_agreement(torch.cat(logits), labels)
        metrics["class_agreement"] = agreement.pop("class_agreement")
        names["class_agreement"] = f"share of samples the {net.name} network assigns to their label"
        extra = agreement
    if hasattr(net, "describe"):
        extra["judge"] = net.describe()
    summary = "; ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "is_std") + f" ({against})"
    # tr Σ of the samples' features: the scale their Fréchet distances are measured in (a blurry decoder's
    # images span less of a feature space, so the same error reads as a smaller FD)
    extra["feature_trace"] = float(np.trace(sigma_f))
    return {"metrics": metrics, "labels": names, "num_samples": int(images.shape[0]), "class_balance": balance,
            "image_size": list(images.shape[1:3]), "reference": reference, "num_reference": num_ref,
            "feature_network": net.name, "protocol": PROTOCOL if net.is_fid else None, "summary": summary, **extra}
