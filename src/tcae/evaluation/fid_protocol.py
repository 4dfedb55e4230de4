"""The pinned FID protocol (docs/fid-protocol.md), in code: ADM's reference images, statistics files in
ADM's / clean-fid's and torch-fidelity's layouts, class balance and the description every number carries.

- :func:`center_crop_arr`: ADM's (guided-diffusion ``image_datasets.py``) resize and center crop: BOX
  halving while the short side is >= 2 S, one BICUBIC resize to short side S, a center crop with
  floor offsets; uint8 (S, S, 3). DiT, SiT, LightningDiT and MAR prepare ImageNet the same way.
- :func:`reference_statistics`: InceptionV3 statistics of a data spec's images prepared so, through the
  uint8 round trip that saved images take (``tcae fid-ref``).
- :func:`save_reference` / :func:`load_reference`: ``.npz`` with ``mu`` (D,), ``sigma`` (D, D) (ADM,
  clean-fid), plus tcae's metadata (``num_images``, ``image_size``, ``protocol``, ``data``,
  ``feature_network``), or torch-fidelity's ``.pt`` (``torch.save({"mu", "sigma"})``, what its
  ``fidelity_cache`` holds). ADM's ``VIRTUAL_imagenet256_labeled.npz`` is read as it is: its
  ``mu``/``sigma``; its ``arr_0`` image batch is counted from the file header, never loaded.
- :func:`class_balance`: per-class counts of the samples' labels (``arr_1``); unbalanced samples are not
  the protocol (50 per class for 50k ImageNet samples).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tcae.util import atomic_path, to_uint8_hwc

PROTOCOL = "tcae-fid-v1: ADM center_crop_arr, uint8, InceptionV3 (TF-FID port) pool3 2048-d, sigma over N-1"
ADM_REFERENCE_NOTE = "ADM statistics (image count not recorded in the file)"


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's center crop: PIL RGB image of any size -> uint8 array (image_size, image_size, 3)."""
    # BOX-halve first (PIL's reducing_gap did not exist then): better than one big BICUBIC downsample
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image.convert("RGB"))
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


def adm_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> float (3, S, S) in [-1, 1] that quantises back to exactly ADM's uint8 crop."""
    def transform(pil_image: Image.Image) -> torch.Tensor:
        arr = center_crop_arr(pil_image, image_size)
        return torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1.0

    return transform


# ---------------------------------------------------------------------------- statistics files
@dataclass
class ReferenceStats:
    """Reference feature statistics. `num_images` is None where the file does not record it (ADM's)."""

    mu: np.ndarray
    sigma: np.ndarray
    num_images: int | None
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """'ref.npz (1437 images, tcae-fid-v1 ...)' or 'VIRTUAL_... (ADM statistics, ...)'."""
        name = Path(self.source).name
        if self.num_images is None:
            return f"{name} ({self.meta.get('note', ADM_REFERENCE_NOTE)})"
        extra = f", {self.meta['data']} at {self.meta['image_size']} px" if "data" in self.meta else ""
        return f"{name} ({self.num_images} images{extra})"


def save_reference(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, num_images: int,
                   **meta: Any) -> Path:
    """Write statistics by suffix: ``.npz`` ADM / clean-fid layout (``mu`` float64 (D,), ``sigma`` float64
    (D, D)) plus ``num_images`` and string/int metadata as extra keys (ignored by those readers); ``.pt``
    torch-fidelity's layout: ``{"mu": float32, "sigma": float64}``, the dtypes its own statistics have (its
    FID asserts both inputs' dtypes match)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mu, sigma = np.asarray(mu), np.asarray(sigma)
    if path.suffix == ".pt":
        torch.save({"mu": mu.astype(np.float32), "sigma": sigma.astype(np.float64)}, path)
        return path
    if path.suffix != ".npz":
        raise ValueError(f"{path}: reference statistics are .npz (ADM / clean-fid) or .pt (torch-fidelity)")
    extra = {k: np.asarray(v) for k, v in meta.items() if v is not None}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=mu.astype(np.float64), sigma=sigma.astype(np.float64), num_images=np.int64(num_images),
                 protocol=np.asarray(PROTOCOL), **extra)
    return path


def npz_array_shape(path: str | os.PathLike, key: str) -> tuple[int, ...] | None:
    """Shape of `key` in an .npz from its .npy header, without loading it (ADM's arr_0: 10k images)."""
    with zipfile.ZipFile(path) as zf:
        name = f"{key}.npy"
        if name not in zf.namelist():
            return None
        with zf.open(name) as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, _ = read(f)
    return tuple(shape)


def load_reference(path: str | os.PathLike) -> ReferenceStats:
    """Statistics from a ``.npz`` with ``mu``/``sigma`` (ADM, clean-fid, ``tcae fid-ref``) or a
    torch-fidelity ``.pt`` dict. An ``.npz`` with only images (``arr_0``) is not statistics: ValueError
    (compute them from the images instead)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics file {str(path)!r} not found")
    if path.suffix == ".pt":
        try:
            with torch.serialization.safe_globals(_NUMPY_PICKLE_GLOBALS):  # numpy arrays, nothing executable
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: not a torch-fidelity statistics file ({type(err).__name__}: {err})") from None
        if not isinstance(obj, dict) or not {"mu", "sigma"} <= set(obj):
            raise ValueError(f"{path}: expected torch-fidelity's {{'mu': (D,), 'sigma': (D, D)}} dict")
        mu, sigma = np.asarray(obj["mu"], np.float64), np.asarray(obj["sigma"], np.float64)
        _check_shapes(path, mu, sigma)
        return ReferenceStats(mu, sigma, None, str(path), {"note": "torch-fidelity statistics (no image count)"})
    with np.load(path) as data:
        keys = set(data.files)
        if not {"mu", "sigma"} <= keys:
            raise ValueError(f"{str(path)!r} has no mu/sigma statistics (keys: {sorted(keys)}); expected an "
                             "ADM/clean-fid style .npz with 'mu' (D,) and 'sigma' (D, D)")
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        meta = {k: data[k].item() for k in ("protocol", "data", "image_size", "feature_network") if k in keys}
        count = int(data["num_images"]) if "num_images" in keys else None
    _check_shapes(path, mu, sigma)
    if count is None:
        images = npz_array_shape(path, "arr_0")
        meta["note"] = ADM_REFERENCE_NOTE + (f"; arr_0 holds {images[0]} images" if images else "")
    return ReferenceStats(mu, sigma, count, str(path), meta)


def _numpy_pickle_globals() -> list:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    reconstruct = multiarray._reconstruct
    # files pickled under numpy 1.x name numpy.core..., under 2.x numpy._core...
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64)]  # numpy.dtypes.Float32DType...
    return [np.ndarray, np.dtype, *dtypes, reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct")]


_NUMPY_PICKLE_GLOBALS = _numpy_pickle_globals()


def _check_shapes(path: Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
        raise ValueError(f"{str(path)!r}: bad shapes mu {mu.shape}, sigma {sigma.shape}")


# ---------------------------------------------------------------------------- reference from data
@torch.no_grad()
def reference_statistics(
    data_spec: str,
    image_size: int,
    feature_network: Any = "inception",
    weights: str | os.PathLike | None = None,
    batch_size: int = 100,
    device: str | torch.device | None = None,
    max_images: int | None = None,
    images_out: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, number of images) of `feature_network` over a data spec's images, each prepared by
    :func:`center_crop_arr` (the spec's val split unless it names one; first `max_images`).

    images_out: also write the uint8 crops (and labels) as an ADM reference batch (``arr_0``, ``arr_1``),
    what ADM's evaluator reads to compute its own statistics (it needs spatial statistics for sFID).
    """
    from tqdm.auto import tqdm

    from tcae.data import build_dataset, eval_loader
    from tcae.device import resolve_device
    from tcae.evaluation.fid import FeatureStats
    from tcae.evaluation.networks import build_feature_network

    device = resolve_device(device)
    net = build_feature_network(feature_network, weights).to(device).eval()
    dataset = build_dataset(data_spec, image_size, train=False, transform=adm_transform(image_size),
                            epoch_size=max_images)
    stats = FeatureStats(net.dim)
    crops, labels = [], []
    for batch in tqdm(eval_loader(dataset, batch_size, max_images=max_images, device=device),
                      desc="reference features", disable=None if progress else True):
        x = batch["image"]
        stats.update(net(x.to(device, non_blocking=True))["features"])
        if images_out is not None:
            crops.append(to_uint8_hwc(x).numpy())
            labels.append(np.asarray(batch["label"]))
    if images_out is not None:
        from tcae.evaluation.npz import save_samples_npz

        save_samples_npz(np.concatenate(crops), images_out, np.concatenate(labels))
    mu, sigma = stats.mean_cov()
    return mu, sigma, stats.count


def class_balance(labels: np.ndarray | None) -> dict[str, Any]:
    """{"balanced": bool | None, "per_class": int | None, "num_classes": int, "min", "max"} of sample labels
    (None: the samples carry no labels, the balance is unknown)."""
    if labels is None:
        return {"balanced": None, "per_class": None, "num_classes": None}
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    balanced = bool(counts.min() == counts.max())
    return {"balanced": balanced, "per_class": int(counts[0]) if balanced else None,
            "num_classes": int(len(counts)), "min": int(counts.min()), "max": int(counts.max())}


def describe_samples(num: int, balance: dict[str, Any]) -> str:
    """'50000 samples, 50 per class x 1000 classes' (or '..., unbalanced: 3-7 per class', '..., unlabelled')."""
    if balance["balanced"] is None:
        return f"{num} samples (unlabelled: class balance unknown)"
    if balance["balanced"]:
        return f"{num} samples, {balance['per_class']} per class x {balance['num_classes']} classes"
    return (f"{num} samples, unbalanced: {balance['min']}-{balance['max']} per class over "
            f"{balance['num_classes']} classes")


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, **extra: np.ndarray) -> None:
    """Write reference statistics as ``.npz`` with keys ``mu`` (D,) and ``sigma`` (D, D) (ADM / clean-fid),
    or as torch-fidelity's ``.pt`` dict for a ``.pt`` path (:func:`save_reference`
    also records the image count and protocol)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pt":
        save_reference(path, mu, sigma, num_images=0)
        return
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), **extra)


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read (mu (D,), sigma (D, D)) float64 from an ``.npz`` with keys ``mu`` and ``sigma`` or a torch-fidelity
    ``.pt`` statistics dict (:func:`load_reference`, which also reports the
    image count where the file records one).

    ADM's reference batches (``VIRTUAL_imagenet256_labeled.npz``) hold these keys next to the
    images (``arr_0``) and spatial statistics; only ``mu``/``sigma`` are read.
    """
    ref = load_reference(path)
    return ref.mu, ref.sigma
