"""Generation metrics of a sample file: gFID and Inception Score (`tcae eval-gen`).

Samples are an ADM-layout `.npz` (`arr_0`: uint8 (N, H, W, 3)). The reference is either statistics
(`.npz` with `mu`, `sigma`, e.g. ADM's `VIRTUAL_imagenet256_labeled.npz`), images in the same
`.npz` layout, or a data spec (its val split, resized and center-cropped to the samples' size).
Features come from `tcae.evaluation` (torch-fidelity's InceptionV3 port of the TF-FID network, so
numbers are comparable with ADM's evaluator).
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
from tcae.diffusion.npz import load_samples_npz


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
) -> dict[str, Any]:
    """gFID (Fréchet distance of samples vs reference features) and IS of the samples.

    samples: ADM-layout `.npz` path or uint8 (N, H, W, 3) array. reference: see the module docstring.
    image_size: size of reference images from a data spec (default: the samples' height).
    feature_network: "inception" (gFID proper), another feature network name ("dinov2", ...;
    key ``gfd_<name>``) or an nn.Module / FeatureNetwork (labelled as a custom network). The
    Inception Score is computed only with the InceptionV3 network (never from another network's logits).
    Returns {"metrics": {"gfid"|"gfd_...", "is", "is_std"}, "labels", "num_samples", "reference", ...}.
    """
    from tcae.evaluation import FeatureStats, build_feature_network, frechet_distance, inception_score

    images = load_samples_npz(samples) if not isinstance(samples, np.ndarray) else samples
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

    ref_desc, num_ref = str(reference), None
    ref_path = Path(reference)
    ref_stats = None
    if ref_path.suffix == ".npz" and ref_path.is_file():
        with np.load(ref_path) as data:
            has_stats = "mu" in data.files and "sigma" in data.files
        if has_stats and net.is_fid:
            from tcae.evaluation import load_stats

            ref_stats = load_stats(ref_path)
        else:
            real = FeatureStats(net.dim)
            ref_images = load_samples_npz(ref_path)[:max_reference]
            for x in _uint8_batches(ref_images, batch_size):
                real.update(net(x.to(device))["features"])
            ref_stats, num_ref = real.mean_cov(), real.count
    else:
        from tcae.data import build_dataset, eval_loader

        dataset = build_dataset(str(reference), int(image_size or images.shape[1]), train=False,
                                epoch_size=max_reference)
        real = FeatureStats(net.dim)
        loader = eval_loader(dataset, batch_size, max_images=max_reference, device=device)
        for batch in tqdm(loader, desc="reference features", disable=not progress):
            real.update(net(batch["image"].to(device, non_blocking=True))["features"])
        ref_stats, num_ref = real.mean_cov(), real.count

    metrics = {key: frechet_distance(mu_f, sigma_f, *ref_stats)}
    labels = {key: net.metric_label("g")}
    if net.is_fid and logits:
        metrics["is"], metrics["is_std"] = inception_score(torch.cat(logits))
        labels["is"], labels["is_std"] = "Inception Score", "Inception Score std over 10 splits"
    return {"metrics": metrics, "labels": labels, "num_samples": int(images.shape[0]),
            "image_size": list(images.shape[1:3]), "reference": ref_desc, "num_reference": num_ref,
            "feature_network": net.name}
