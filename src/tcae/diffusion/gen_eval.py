"""Generation metrics of a sample file: gFID and Inception Score (`tcae eval-gen`).

Samples are an ADM-layout `.npz` (`arr_0`: uint8 (N, H, W, 3), labels in `arr_1`). The reference is either
statistics (`.npz` with `mu`, `sigma`, e.g. ADM's `VIRTUAL_imagenet256_labeled.npz` read as it is, or a
torch-fidelity `.pt`), images in the same `.npz` layout, or a data spec (its val split, prepared by ADM's
center crop: :mod:`tcae.evaluation.fid_protocol`). Features come from `tcae.evaluation` (torch-fidelity's
InceptionV3 port of the TF-FID network, so numbers are comparable with ADM's evaluator).

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
from tcae.diffusion.npz import load_sample_labels, load_samples_npz


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
    allow_unbalanced: bool = False,
) -> dict[str, Any]:
    """gFID (Fréchet distance of samples vs reference features) and IS of the samples.

    samples: ADM-layout `.npz` path or uint8 (N, H, W, 3) array. reference: see the module docstring.
    image_size: size of reference images from a data spec (default: the samples' height).
    feature_network: "inception" (gFID proper), another feature network name ("dinov2", ...;
    key ``gfd_<name>``) or an nn.Module / FeatureNetwork (labelled as a custom network). The
    Inception Score is computed only with the InceptionV3 network (never from another network's logits).
    allow_unbalanced: accept labelled samples whose classes are not equally represented.
    Returns {"metrics": {"gfid"|"gfd_...", "is", "is_std"}, "labels" (each naming the samples and the
    reference), "num_samples", "class_balance", "reference", "num_reference", "protocol", "summary", ...}.
    """
    from tcae.evaluation import FeatureStats, build_feature_network, frechet_distance, inception_score
    from tcae.evaluation.fid_protocol import (
        PROTOCOL,
        class_balance,
        describe_samples,
        load_reference,
        reference_statistics,
    )

    images = load_samples_npz(samples) if not isinstance(samples, np.ndarray) else samples
    balance = class_balance(None if isinstance(samples, np.ndarray) else load_sample_labels(samples))
    if balance["balanced"] is False and not allow_unbalanced:
        raise ValueError(f"{samples}: {describe_samples(len(images), balance)}; the FID protocol draws the same "
                         "number of samples per class (e.g. tcae sample --num 50000 over 1000 classes); pass "
                         "--allow-unbalanced to evaluate them anyway")
    device = resolve_device(device)
    net = build_feature_network(feature_network, inception_weights).to(device).eval()
    key = net.metric_key("g")

    fake, logits = FeatureStats(net.dim), []
    for x in tqdm(_uint8_batches(images, batch_size), total=-(-len(images) // batch_size),
                  desc="sample features", disable=not progress):
        out = net(x.to(device))
        fake.update(out["features"])
        if net.is_fid and "logits" in out:  # IS only from InceptionV3's logits
            logits.append(out["logits"].float().cpu())
    mu_f, sigma_f = fake.mean_cov()

    ref_path = Path(reference)
    if ref_path.suffix in (".npz", ".pt") and ref_path.is_file():
        has_stats = ref_path.suffix == ".pt"
        if not has_stats:
            with np.load(ref_path) as data:
                has_stats = "mu" in data.files and "sigma" in data.files
        if has_stats and net.is_fid:  # InceptionV3 statistics (ADM's as they are, tcae fid-ref's, torch-fidelity's)
            ref = load_reference(ref_path)
            ref_stats, num_ref, ref_desc = (ref.mu, ref.sigma), ref.num_images, ref.describe()
        else:
            real = FeatureStats(net.dim)
            ref_images = load_samples_npz(ref_path)[:max_reference]
            for x in _uint8_batches(ref_images, batch_size):
                real.update(net(x.to(device))["features"])
            ref_stats, num_ref = real.mean_cov(), real.count
            ref_desc = f"{ref_path.name} (arr_0: {num_ref} images)"
    else:
        size = int(image_size or images.shape[1])
        mu, sigma, num_ref = reference_statistics(str(reference), size, feature_network=net, batch_size=batch_size,
                                                  device=device, max_images=max_reference, progress=progress)
        ref_stats, ref_desc = (mu, sigma), f"{reference} ({num_ref} images at {size} px, ADM center crop)"

    against = f"{describe_samples(int(images.shape[0]), balance)} vs {ref_desc}"
    metrics = {key: frechet_distance(mu_f, sigma_f, *ref_stats)}
    labels = {key: f"{net.metric_label('g')}; {against}"}
    if net.is_fid and logits:
        metrics["is"], metrics["is_std"] = inception_score(torch.cat(logits))
        labels["is"] = f"Inception Score; {describe_samples(int(images.shape[0]), balance)}"
        labels["is_std"] = "Inception Score std over 10 splits"
    summary = "; ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "is_std") + f" ({against})"
    return {"metrics": metrics, "labels": labels, "num_samples": int(images.shape[0]), "class_balance": balance,
            "image_size": list(images.shape[1:3]), "reference": ref_desc, "num_reference": num_ref,
            "feature_network": net.name, "protocol": PROTOCOL if net.is_fid else None, "summary": summary}
