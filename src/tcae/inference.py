"""Reconstruct, encode and decode image files of any size with a tokenizer (`tcae reconstruct`,
`tcae encode`, `tcae decode`).

Images are read as RGB (:func:`tcae.data.decode.load_rgb`: gray, palette, alpha, 16-bit), padded at
the bottom and right to a multiple of the model's compression f (``numpy.pad`` ``reflect`` or
``edge``; reflection repeats when the pad is longer than the image), encoded, and decoded images are
cropped back to the original size. Outputs keep each input's relative path (sub-folders included)
with the suffix changed: ``.png`` for images, ``.safetensors`` for latents.

A latent file holds one tensor ``latent`` (c, H_pad/f, W_pad/f) float32, the raw latent; its metadata
(strings, as safetensors requires) holds what decoding back needs and what the latent came from:
``source`` (the relative input path), ``height`` / ``width`` (the original size), ``compression``,
``pad``, ``latent_channels``, ``model``, and the model's per-channel ``latent_mean`` / ``latent_std``
(JSON lists; only when the model has measured them, ``latent_stats`` says which).

Inputs (``data``): an image folder (recursive; ``folder:train``/``folder:val`` pick a split sub-folder),
a single image file, or built-in data (``builtin:digits:val``: items named ``000000.png`` ... at
``image_size``). Needs only the core install.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tcae.util import to_uint8_hwc

if TYPE_CHECKING:
    from tcae.models import TCAE

LATENT_KEY = "latent"
LATENT_SUFFIX = ".safetensors"
PAD_MODES = ("reflect", "edge")
FORMAT = "tcae-latent-v1"


def load_model(model: str, device: torch.device | str = "cpu") -> TCAE:
    """The tokenizer named by `model` (model directory, training run directory, Hub repo id, or
    ``diffusers:PATH_OR_HUB_ID``: :func:`tcae.tokenizers.load_tokenizer`), in eval mode on `device`. The one
    place the commands load a tokenizer."""
    from tcae.tokenizers import load_tokenizer

    return load_tokenizer(model).to(device).eval()


# ---------------------------------------------------------------------- inputs
@dataclass
class ImageSource:
    """One input image: `name` its relative POSIX path (outputs are named after it), `load()` ->
    uint8 (H, W, 3)."""

    name: str
    path: Path | None = None
    array: np.ndarray | None = None

    def load(self) -> np.ndarray:
        if self.array is not None:
            return self.array
        from PIL import Image

        from tcae.data.decode import load_rgb

        try:
            return np.array(load_rgb(self.path), dtype=np.uint8)  # a writable copy (torch.from_numpy)
        # what PIL raises for undecodable, truncated or oversized files (UnidentifiedImageError is an OSError)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read image {self.path}: {e}") from None


def list_images(data: str, image_size: int | None = None, max_images: int | None = None) -> list[ImageSource]:
    """The images `data` names (module docstring), sorted by name; at most `max_images`.

    Raises FileNotFoundError (no such path) or ValueError (no images, shards, a bad spec)."""
    from tcae.data.decode import IMAGE_EXTENSIONS
    from tcae.data.spec import _folder_root, parse_spec

    path = Path(data)
    if path.is_file():
        if not path.name.lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(f"{data} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
        return [ImageSource(path.name, path)]
    parsed = parse_spec(data)
    if parsed.kind == "shards":
        raise ValueError(f"data {data!r}: reconstruct/encode read an image folder, an image file or built-in "
                         "data, not WebDataset shards (extract the images first)")
    if parsed.kind in ("photos", "digits"):
        if image_size is None:
            raise ValueError(f"data {data!r}: built-in data needs an image size")
        from tcae.data import build_dataset

        dataset = build_dataset(data, image_size, train=False)
        n = len(dataset) if max_images is None else min(max_images, len(dataset))
        out = []
        for i in range(n):
            x = dataset[i]["image"]  # (3, S, S) in [-1, 1]
            out.append(ImageSource(f"{i:06d}.png", array=to_uint8_hwc(x).numpy()))
        return out
    from tcae.data.folder import find_images

    root = Path(_folder_root(data, parsed, train=False))
    names = find_images(root)
    if not names:
        raise ValueError(f"no images found under {root} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})")
    return [ImageSource(n, root / n) for n in names[:max_images]]


def output_names(names: Iterable[str], suffix: str) -> list[str]:
    """Relative output paths (input paths with `suffix`); ValueError when two inputs would share one."""
    seen: dict[str, str] = {}
    out = []
    for name in names:
        target = str(Path(name).with_suffix(suffix).as_posix())
        if target in seen:
            raise ValueError(f"{seen[target]} and {name} would both be written to {target}; rename one")
        seen[target] = name
        out.append(target)
    return out


# ---------------------------------------------------------------------- pixels <-> tensors
def pad_to_multiple(image: np.ndarray, multiple: int, mode: str = "reflect") -> np.ndarray:
    """uint8 (H, W, 3) -> (H', W', 3), H' and W' the next multiples of `multiple`, padded at the bottom
    and right (`mode` "reflect" or "edge", as numpy.pad)."""
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if ph == pw == 0:
        return image
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


# ---------------------------------------------------------------------- batching
def _batches(items: Iterable[Any], key, batch_size: int) -> Iterator[list[Any]]:
    """Runs of consecutive items with the same key(item), at most batch_size long (inputs keep their
    order, so encode -> decode batches exactly as reconstruct does)."""
    batch: list[Any] = []
    for item in items:
        if batch and (len(batch) == batch_size or key(item) != key(batch[0])):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


@dataclass
class _Padded:
    source: ImageSource
    height: int
    width: int
    pixels: np.ndarray  # padded uint8 (H', W', 3)


def _padded_images(sources: Iterable[ImageSource], f: int, pad: str) -> Iterator[_Padded]:
    for src in sources:
        image = src.load()
        yield _Padded(src, image.shape[0], image.shape[1], pad_to_multiple(image, f, pad))


@torch.no_grad()
def encode_batches(model: TCAE, sources: list[ImageSource], batch_size: int = 16, pad: str = "reflect",
                   device: torch.device | str = "cpu") -> Iterator[tuple[list[_Padded], torch.Tensor]]:
    """(images, raw latents (B, c, H'/f, W'/f) on the CPU) for runs of same-size images."""
    f = model.config.compression
    for batch in _batches(_padded_images(sources, f, pad), lambda p: p.pixels.shape, batch_size):
        x = torch.stack([to_tensor(p.pixels) for p in batch]).to(device)
        yield batch, model.encode(x).float().cpu()


@torch.no_grad()
def decode_batch(model: TCAE, latents: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, c, h, w) raw latents -> (B, 3, h*f, w*f) images on the CPU, nominally in [-1, 1]."""
    return model.decode(latents.to(device)).float().cpu()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=None if enabled else True)


def _prepare_out(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---------------------------------------------------------------------- the three commands
def reconstruct_images(model: TCAE, sources: list[ImageSource], out: str | os.PathLike, batch_size: int = 16,
                       pad: str = "reflect", device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Write out/NAME.png, the reconstruction of each source at its original size. Returns a summary."""
    names = output_names([s.name for s in sources], ".png")
    target = dict(zip((s.name for s in sources), names))
    out = _prepare_out(out)
    bar = _progress(len(sources), "reconstruct", progress)
    for batch, z in encode_batches(model, sources, batch_size, pad, device):
        images = decode_batch(model, z, device)
        for p, x in zip(batch, images):
            save_png(to_uint8_hwc(x[:, :p.height, :p.width]).numpy(), out / target[p.source.name])
        bar.update(len(batch))
    bar.close()
    return {"images": len(sources), "out": str(out), "pad": pad}


def _latent_metadata(model: TCAE, model_id: str, p: _Padded, pad: str) -> dict[str, str]:
    meta = {"format": FORMAT, "source": p.source.name, "height": str(p.height), "width": str(p.width),
            "compression": str(model.config.compression), "pad": pad,
            "latent_channels": str(model.config.latent_channels), "model": model_id,
            "latent_stats": "measured" if model.has_latent_stats else "none"}
    if model.has_latent_stats:
        meta["latent_mean"] = json.dumps(model.latent_mean.float().cpu().tolist())
        meta["latent_std"] = json.dumps(model.latent_std.float().cpu().tolist())
    return meta


def encode_images(model: TCAE, sources: list[ImageSource], out: str | os.PathLike, model_id: str = "",
                  batch_size: int = 16, pad: str = "reflect", device: torch.device | str = "cpu",
                  progress: bool = True) -> dict:
    """Write out/NAME.safetensors, the raw latent of each source with its metadata (module docstring)."""
    from safetensors.torch import save_file

    names = output_names([s.name for s in sources], LATENT_SUFFIX)
    target = dict(zip((s.name for s in sources), names))
    out = _prepare_out(out)
    bar = _progress(len(sources), "encode", progress)
    shape = None
    for batch, z in encode_batches(model, sources, batch_size, pad, device):
        for p, latent in zip(batch, z):
            path = out / target[p.source.name]
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({LATENT_KEY: latent.contiguous()}, str(path), metadata=_latent_metadata(model, model_id, p, pad))
            shape = list(latent.shape)
        bar.update(len(batch))
    bar.close()
    return {"images": len(sources), "out": str(out), "pad": pad, "last_latent_shape": shape}


@dataclass
class LatentFile:
    path: Path
    meta: dict[str, str]
    shape: tuple[int, ...]

    @property
    def source(self) -> str:
        return self.meta["source"]


def list_latents(root: str | os.PathLike) -> list[LatentFile]:
    """Every latent file under `root` (recursively), sorted by the image it came from. FileNotFoundError
    / ValueError when there are none or a file is not one written by :func:`encode_images`."""
    from safetensors import safe_open

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"latent directory {root} not found")
    files = sorted(p for p in root.rglob(f"*{LATENT_SUFFIX}") if p.is_file())
    if not files:
        raise ValueError(f"no {LATENT_SUFFIX} files under {root} (written by `tcae encode`)")
    out = []
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if LATENT_KEY not in fh.keys():
                    raise ValueError(f"no tensor {LATENT_KEY!r}")
                shape = tuple(fh.get_slice(LATENT_KEY).get_shape())
        except Exception as e:  # a corrupt or foreign file: name it
            raise ValueError(f"{path} is not a latent file written by `tcae encode`: {e}") from None
        missing = [k for k in ("source", "height", "width", "compression") if k not in meta]
        if missing:
            raise ValueError(f"{path} is not a latent file written by `tcae encode`: metadata lacks {missing}")
        out.append(LatentFile(path, meta, shape))
    out.sort(key=lambda lf: lf.source)
    return out


def decode_latents(model: TCAE, files: list[LatentFile], out: str | os.PathLike, batch_size: int = 16,
                   device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Write out/NAME.png for each latent file: decoded and cropped to the original size."""
    from safetensors.torch import load_file

    f, c = model.config.compression, model.config.latent_channels
    for lf in files:
        if int(lf.meta["compression"]) != f or lf.shape[0] != c:
            raise ValueError(f"{lf.path}: latent {list(lf.shape)} from a model with compression "
                             f"{lf.meta['compression']}, but this model has {c} channels and f={f}")
        h, w = int(lf.meta["height"]), int(lf.meta["width"])
        if not (lf.shape[1] * f >= h > (lf.shape[1] - 1) * f and lf.shape[2] * f >= w > (lf.shape[2] - 1) * f):
            raise ValueError(f"{lf.path}: latent {list(lf.shape)} does not fit an image of {h}x{w} at f={f}")
    names = output_names([lf.source for lf in files], ".png")
    target = dict(zip((lf.source for lf in files), names))
    out = _prepare_out(out)
    bar = _progress(len(files), "decode", progress)
    for batch in _batches(files, lambda lf: lf.shape, batch_size):
        z = torch.stack([load_file(str(lf.path))[LATENT_KEY] for lf in batch])
        for lf, x in zip(batch, decode_batch(model, z, device)):
            crop = x[:, :int(lf.meta["height"]), :int(lf.meta["width"])]
            save_png(to_uint8_hwc(crop).numpy(), out / target[lf.source])
        bar.update(len(batch))
    bar.close()
    return {"images": len(files), "out": str(out)}
