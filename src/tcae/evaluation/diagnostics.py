"""Latent diagnostics: the evidence the TC-AE paper argues with (see shared PAPER.md).

- Per-channel latent mean/std and their spread across channels (collapsed or badly scaled
  channels show up as a large spread; the stats are also what a diffusion model normalises by).
- Effective rank (Roy & Vetterli 2007) of latents and of encoder tokens: how many directions the
  representation really uses.
- Linear-probe accuracy on pooled encoder tokens (A1) and on latents (A2), and the paper's
  "structural loss" 1 - A2/A1: how much class structure the token -> latent step destroys.

:func:`diagnose` runs all of them for a model over a data spec; :func:`write_latent_stats` stores the
per-channel statistics in a model directory (`tcae train` measures them when it exports a model).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from tqdm.auto import tqdm

from tcae import dist
from tcae.data import eval_loader
from tcae.device import resolve_device

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- channel statistics
class LatentChannelStats:
    """Streaming per-channel mean/std of latents (B, c, h, w) over images and positions (float64 sums).

    ``update(z)``; ``all_reduce()`` sums over DDP ranks; ``result()`` -> dict (see
    :func:`latent_channel_stats`). With ``channels`` (c) the sums are allocated up front on
    ``device``, so a DDP rank that sees no latents still joins ``all_reduce()`` (with zeros).
    """

    def __init__(self, channels: int | None = None, device: torch.device | str = "cpu") -> None:
        self.count = 0  # values per channel (images x positions)
        self.images = 0
        self._sum: torch.Tensor | None = None
        self._sq: torch.Tensor | None = None
        if channels is not None:
            self._sum = torch.zeros(int(channels), dtype=torch.float64, device=device)
            self._sq = torch.zeros_like(self._sum)

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        if z.ndim != 4:
            raise ValueError(f"latents must be (B, c, h, w), got shape {tuple(z.shape)}")
        z = z.detach().double()
        if self._sum is None:
            self._sum = torch.zeros(z.shape[1], dtype=torch.float64, device=z.device)
            self._sq = torch.zeros_like(self._sum)
        if z.shape[1] != self._sum.numel():
            raise ValueError(f"latent channels changed: expected {self._sum.numel()}, got {z.shape[1]}")
        self._sum += z.sum(dim=(0, 2, 3))
        self._sq += (z * z).sum(dim=(0, 2, 3))
        self.count += z.shape[0] * z.shape[2] * z.shape[3]
        self.images += z.shape[0]

    @torch.no_grad()
    def all_reduce(self) -> None:
        if dist.world_size() == 1:
            return
        if self._sum is None:
            raise RuntimeError("LatentChannelStats.all_reduce on a rank that saw no latents: build it with "
                               "`channels` so every rank has sums of the same shape")
        n = torch.tensor([float(self.count), float(self.images)], dtype=torch.float64, device=self._sum.device)
        for t in (n, self._sum, self._sq):
            dist.all_reduce_(t)
        self.count, self.images = int(round(n[0].item())), int(round(n[1].item()))

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (population) std, each (c,) float32 on CPU."""
        if self._sum is None or self.count == 0:
            raise ValueError("no latents seen")
        mean = self._sum / self.count
        var = (self._sq / self.count - mean * mean).clamp_min(0)
        return mean.float().cpu(), var.sqrt().float().cpu()

    def result(self) -> dict[str, Any]:
        mean, std = self.mean_std()
        return {
            "channels": int(mean.numel()),
            "images": self.images,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "mean_spread": float(mean.std(unbiased=False)),  # std across channels of the channel means
            "std_spread": float(std.std(unbiased=False)),  # std across channels of the channel stds
            "std_min": float(std.min()),
            "std_max": float(std.max()),
            "mean_abs_max": float(mean.abs().max()),
        }


def latent_channel_stats(z: torch.Tensor) -> dict[str, Any]:
    """Per-channel statistics of latents z (N, c, h, w), over images and positions.

    Returns a dict: ``mean``, ``std`` (lists of c floats; population std), ``mean_spread`` /
    ``std_spread`` (std across channels of the per-channel means / stds), ``std_min``,
    ``std_max``, ``mean_abs_max``, ``channels``, ``images``.
    """
    acc = LatentChannelStats()
    acc.update(z)
    return acc.result()


# ----------------------------------------------------------------------------- effective rank
def effective_rank(features: torch.Tensor | np.ndarray, center: bool = True) -> float:
    """Effective rank of a feature matrix (N, D) (Roy & Vetterli 2007).

    With singular values s_1..s_K of the (by default column-centred) matrix, K = min(N, D),
    p_k = s_k / sum_j s_j and H = -sum_k p_k log p_k, the effective rank is exp(H): a real number
    in [1, K], equal to r when r singular values are equal and the rest zero. Centring removes
    the mean direction, which otherwise counts as one (often dominant) dimension. Note the
    ceiling min(N, D): use N well above the dimensions you expect to be used.
    """
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    x = x.detach().double().reshape(x.shape[0], -1)
    if center:
        x = x - x.mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


# ----------------------------------------------------------------------------- linear probe
def linear_probe(train_feats: np.ndarray | torch.Tensor, train_labels: np.ndarray | torch.Tensor,
                 val_feats: np.ndarray | torch.Tensor, val_labels: np.ndarray | torch.Tensor,
                 max_iter: int = 2000, C: float = 1.0) -> float:
    """Linear-probe accuracy in [0, 1]: multinomial logistic regression (sklearn, lbfgs, L2 with
    strength 1/C) on standardised features, fitted on (train_feats (N, D), train_labels (N,)),
    scored on (val_feats (M, D), val_labels (M,))."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def arr(a: Any) -> np.ndarray:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        return a.reshape(a.shape[0], -1) if a.ndim > 1 else a

    xtr, ytr, xva, yva = arr(train_feats), arr(train_labels), arr(val_feats), arr(val_labels)
    if len(np.unique(ytr)) < 2:
        raise ValueError("linear probe needs at least 2 classes in the training labels")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=C))
    clf.fit(xtr.astype(np.float64), ytr)
    return float(clf.score(xva.astype(np.float64), yva))


def structural_loss(a1: float, a2: float) -> float:
    """The paper's structural loss 1 - A2/A1 (A1: probe accuracy on tokens, A2: on latents)."""
    if a1 <= 0:
        raise ValueError(f"A1 must be positive, got {a1}")
    return 1.0 - a2 / a1


# ----------------------------------------------------------------------------- encoding a dataset
def encode_dataset(model: torch.nn.Module, loader: DataLoader, device: torch.device | str,
                   keep: bool = True, desc: str = "encode", progress: bool = True) -> dict[str, Any]:
    """Run the encoder over ``loader``: latent channel stats, and (``keep``) per-image features.

    Returns ``{"stats": LatentChannelStats, "latents": (N, c*h*w) float32, "tokens": (N, d)
    float32 (mean-pooled encoder tokens), "labels": (N,) int64}`` (CPU tensors; the last three
    only with ``keep``). A model without ``encode_tokens`` (a conv autoencoder) gives ``tokens`` None.
    """
    model.eval()
    # allocated up front (when the model says its channel count): a DDP rank without images can all-reduce
    channels = getattr(getattr(model, "config", None), "latent_channels", None)
    stats = LatentChannelStats(channels if isinstance(channels, int) else None, device)
    latents, tokens, labels = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if progress and _is_main() else True):
        x = batch["image"].to(device, non_blocking=True)
        if hasattr(model, "encode_tokens"):
            enc = model.encode_tokens(x)
            z = model.tokens_to_latent(enc)  # same as model.encode(x), without encoding twice
        else:
            enc, z = None, model.encode(x)
        stats.update(z)
        if keep:
            latents.append(z.flatten(1).float().cpu())
            if enc is not None:
                tokens.append(enc.tokens.mean(1).float().cpu())
            labels.append(torch.as_tensor(batch.get("label", torch.full((x.shape[0],), -1))).long().cpu())
    out: dict[str, Any] = {"stats": stats}
    if keep:
        out.update(latents=torch.cat(latents), tokens=torch.cat(tokens) if tokens else None,
                   labels=torch.cat(labels))
    return out


def _is_main() -> bool:
    return dist.is_main()


def probe_specs(spec: str) -> tuple[str, str] | None:
    """(train spec, val spec) for the linear probe, or None when the data has no separate splits.

    ``builtin:digits[:...]`` -> ``builtin:digits:train`` / ``builtin:digits:val``;
    ``builtin:fashion[@DIR][:split]`` -> its train split / its val or test split (val when the spec
    names train or none); a folder with
    ``train/`` and ``val/`` sub-folders -> ``DIR:train`` / ``DIR:val``.
    """
    from tcae.data import parse_spec
    from tcae.data.fashion import fashion_spec

    parsed = parse_spec(spec)
    if parsed.kind == "fashion":  # scored on the named val or test split, else on val
        return fashion_spec(parsed.root, "train"), fashion_spec(parsed.root, parsed.split if parsed.split in (
            "val", "test") else "val")
    if parsed.kind in ("digits", "photos"):
        return f"builtin:{parsed.kind}:train", f"builtin:{parsed.kind}:val"
    if parsed.kind == "folder" and all(os.path.isdir(os.path.join(parsed.target, s)) for s in ("train", "val")):
        return f"{parsed.target}:train", f"{parsed.target}:val"
    return None


# ----------------------------------------------------------------------------- diagnose
@torch.no_grad()
def diagnose(model: torch.nn.Module, data_spec: str, image_size: int | None = None, batch_size: int = 64,
             device: torch.device | str | None = None, max_images: int | None = 2000, num_workers: int = 0,
             probe: bool = True, write_stats_to: str | os.PathLike | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Latent diagnostics of ``model`` on ``data_spec`` (single process).

    Over ``build_dataset(data_spec, train=False)`` (its val split unless the spec names one;
    first ``max_images``): per-channel latent stats, effective rank of latents (flattened per
    image, (N, c*h*w)) and of encoder tokens (mean-pooled per image, (N, d)). When the data is
    labelled (``builtin:digits`` or a class-per-folder folder): linear probes fitted on the train
    split and scored on the val split (both up to ``max_images``), on pooled tokens (A1) and on
    flattened latents (A2), and the structural loss 1 - A2/A1. Without train/val splits, a
    stratified 80/20 split of the evaluated images is used.

    ``write_stats_to``: a model directory; the measured per-channel mean/std are stored in the
    model (``set_latent_stats``) and written into that directory's ``model.safetensors``.

    Returns a JSON-ready dict (accuracies in [0, 1]); ``latent_stats`` holds per-channel lists.
    """
    from tcae.data import build_dataset

    device = resolve_device(device)
    model = model.to(device).eval()
    size = image_size or model.config.image_size
    model.check_image_size(size)
    dataset = build_dataset(data_spec, size, train=False)
    main = encode_dataset(model, eval_loader(dataset, batch_size, num_workers, max_images, device=device), device,
                          desc="diagnose", progress=progress)
    n = len(main["labels"])
    stats = main["stats"].result()
    result: dict[str, Any] = {
        "data": data_spec,
        "image_size": size,
        "num_images": n,
        "latent_shape": list(model.latent_shape(size, size)),
        "latent_stats": stats,
        "latent_mean_spread": stats["mean_spread"],
        "latent_std_spread": stats["std_spread"],
        "effective_rank_latents": effective_rank(main["latents"]),
        "latent_dim": int(main["latents"].shape[1]),
    }
    if main["tokens"] is not None:  # a model with encoder tokens (TC-AE); not a conv autoencoder
        result["effective_rank_tokens"] = effective_rank(main["tokens"])
        result["token_dim"] = int(main["tokens"].shape[1])
    labels = main["labels"]
    if probe and n > 1 and bool((labels >= 0).all()) and len(labels.unique()) > 1:
        result.update(_probe(model, data_spec, size, batch_size, device, max_images, num_workers, main, progress))
    if write_stats_to is not None:
        mean, std = main["stats"].mean_std()
        write_latent_stats(model, write_stats_to, mean, std.clamp_min(1e-6), main["stats"].images)
        result["latent_stats_written_to"] = str(write_stats_to)
    return result


def _probe(model: torch.nn.Module, data_spec: str, size: int, batch_size: int, device: torch.device,
           max_images: int | None, num_workers: int, main: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    from tcae.data import build_dataset

    specs = probe_specs(data_spec)
    if specs is not None:
        parts = []
        for spec in specs:
            ds = build_dataset(spec, size, train=False)  # explicit split, deterministic transform
            if spec == data_spec and not isinstance(ds, IterableDataset) and len(main["labels"]) == len(ds):
                parts.append(main)  # the diagnosed split, already encoded whole: not encoded twice
                continue
            # every class must be present in a capped train split: spread the cap over the whole split
            loader = eval_loader(_spread(ds, max_images), batch_size, num_workers, device=device)
            parts.append(encode_dataset(model, loader, device, desc=f"probe {spec}", progress=progress))
        tr, va = parts
        split = "train/" + specs[1].rsplit(":", 1)[-1]  # where the probe is scored: val, or test (fashion)
    else:
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(main["labels"]))
        itr, iva = train_test_split(idx, test_size=0.2, stratify=main["labels"].numpy(), random_state=0)
        tr = {k: None if main[k] is None else main[k][itr] for k in ("latents", "tokens", "labels")}
        va = {k: None if main[k] is None else main[k][iva] for k in ("latents", "tokens", "labels")}
        split = "stratified 80/20 of the evaluated images"
    a2 = linear_probe(tr["latents"], tr["labels"], va["latents"], va["labels"])
    num_classes = int(torch.cat([tr["labels"], va["labels"]]).unique().numel())
    out = {
        "probe": {"split": split, "train_images": len(tr["labels"]), "val_images": len(va["labels"]),
                  "num_classes": num_classes, "chance": 1.0 / num_classes},
        "probe_acc_latents": a2,  # A2
    }
    if tr["tokens"] is not None:  # A1 and the structural loss need encoder tokens
        a1 = linear_probe(tr["tokens"], tr["labels"], va["tokens"], va["labels"])
        out.update(probe_acc_tokens=a1, structural_loss=structural_loss(a1, a2) if a1 > 0 else float("nan"))
    return out


def _spread(dataset: Dataset, max_images: int | None) -> Dataset:
    """At most ``max_images`` items evenly spaced over ``dataset`` (sorted-by-class folders stay balanced)."""
    if isinstance(dataset, IterableDataset) or max_images is None or len(dataset) <= max_images:
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, int(max_images)).round().astype(int).tolist())


# ----------------------------------------------------------------------------- latent stats for diffusion
@torch.no_grad()
def write_latent_stats(model: torch.nn.Module, model_dir: str | os.PathLike, mean: torch.Tensor,
                       std: torch.Tensor, count: int) -> None:
    """Store (mean, std) in ``model`` (``set_latent_stats``) and rewrite ``model_dir``'s files.

    The model is saved into a temporary directory next to ``model_dir`` and its weights file then
    moved over the old one with ``os.replace`` (atomic), so an interrupted write never leaves a
    half-written ``model.safetensors``. The model card (README.md) is rewritten with its recorded
    training information kept and the latent statistics marked as measured; config.json is left alone.
    """
    from tcae.models.card import read_card_info

    model_dir = Path(model_dir)
    model.set_latent_stats(mean.cpu(), std.cpu(), count)
    tmp = Path(tempfile.mkdtemp(prefix=".tcae-stats-", dir=model_dir.parent))
    try:
        model.save_pretrained(tmp, card_info=read_card_info(model_dir / "README.md"))
        for name in ("model.safetensors", "README.md"):
            target = model_dir / name
            if target.exists():  # keep the old file's permissions (files in a mkdtemp dir may be 0600)
                shutil.copymode(target, tmp / name)
            os.replace(tmp / name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote latent statistics (%d images) into %s", count, model_dir)
