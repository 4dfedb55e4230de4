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

Inputs (``data``): an image folder (recursive; ``folder:train``/``folder:val`` pick a split sub-folder;
the files that are not images are named in the log), a single image file, or built-in data
(``builtin:digits:val``: items named ``000000.png`` ... at ``image_size``). Needs only the core install.

Tiling (``tile``): ``None`` runs each image through the model whole; ``"auto"`` tiles images larger than
the model's training size ``config.image_size`` in tiles of that size; an int N tiles images larger than
N pixels in N-pixel tiles (:mod:`tcae.models.tiling`: overlapping tiles blended with linear ramps). A
ViT sees only its tile, so a tiled output differs from the whole-image one near the tile seams; memory
and time are bounded by the tile whatever the image size. ``tcae encode`` records the tile size in the
latent's metadata (``tile``) and ``tcae decode`` decodes with the same tiling, so encode + decode equals
reconstruct, tiled or not.
"""

from __future__ import annotations

import json
import logging
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

logger = logging.getLogger(__name__)

LATENT_KEY = "latent"
LATENT_SUFFIX = ".safetensors"
PAD_MODES = ("reflect", "edge")
FORMAT = "tcae-latent-v1"


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
    from tcae.data.folder import NOT_AN_IMAGE, describe_skipped, find_images

    root = Path(_folder_root(data, parsed, train=False))
    others: list[str] = []
    names = find_images(root, others)
    skipped = describe_skipped({NOT_AN_IMAGE: others})
    if not names:
        raise ValueError(f"no images found under {root} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})"
                         + "".join(f"; skipped {line}" for line in skipped))
    for line in skipped:
        logger.warning("%s: skipped %s", root, line)
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


# ---------------------------------------------------------------------- tiling
Tile = int | str | None  # None (whole images), "auto" (the training size) or a tile side in pixels


def parse_tile(text: str) -> Tile:
    """The ``--tile`` value: "none" -> None, "auto", or a positive int (pixels)."""
    if text in ("none", "auto"):
        return None if text == "none" else "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"--tile takes auto, none or a tile side in pixels (a multiple of f), got {text!r}")
    return value


def tile_for(model: TCAE, tile: Tile, height: int, width: int) -> int | None:
    """The tile side (pixels, a multiple of f) an image of height x width is processed with, or None when it
    goes through whole (no tiling asked, or the image fits in one tile)."""
    if tile is None:
        return None
    f = model.config.compression
    side = model.config.image_size if tile == "auto" else int(tile)
    if side % f:
        raise ValueError(f"--tile {side} is not a multiple of the model's compression f={f}")
    return side if max(height, width) > side else None


def _tiled(fn, x: torch.Tensor, unit_in: int, unit_out: int, tile_units: int, f: int, on_tile=None) -> torch.Tensor:
    from tcae.models.tiling import blend_tiles, default_stride

    stride = default_stride(tile_units * f, f) // f

    def counted(piece: torch.Tensor) -> torch.Tensor:
        if on_tile is not None:
            on_tile()
        return fn(piece)

    return blend_tiles(x, counted, unit_in=unit_in, unit_out=unit_out, tile=(tile_units, tile_units),
                       stride=(stride, stride))


@torch.no_grad()
def encode_tensor(model: TCAE, x: torch.Tensor, tile: int | None = None, on_tile=None) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1], H and W multiples of f -> raw latents (B, c, H/f, W/f); in `tile`-pixel
    tiles when given (:func:`tile_for`). `on_tile()` is called before each tile (progress)."""
    if tile is None:
        return model.encode(x)
    f = model.config.compression
    return _tiled(model.encode, x, f, 1, tile // f, f, on_tile)


@torch.no_grad()
def decode_tensor(model: TCAE, z: torch.Tensor, tile: int | None = None, on_tile=None) -> torch.Tensor:
    """Raw latents (B, c, h, w) -> images (B, 3, h*f, w*f), nominally in [-1, 1]; tiled as :func:`encode_tensor`."""
    if tile is None:
        return model.decode(z)
    f = model.config.compression
    return _tiled(model.decode, z, 1, f, tile // f, f, on_tile)


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
                   device: torch.device | str = "cpu", tile: Tile = None, bar=None,
                   ) -> Iterator[tuple[list[_Padded], torch.Tensor, int | None]]:
    """(images, raw latents (B, c, H'/f, W'/f) on the CPU, the tile side used or None) for runs of same-size
    images; `bar` (tqdm) shows the tiles of a tiled image."""
    f = model.config.compression
    hinted = False
    for batch in _batches(_padded_images(sources, f, pad), lambda p: p.pixels.shape, batch_size):
        h, w = batch[0].pixels.shape[:2]
        side = tile_for(model, tile, h, w)
        if tile is None and not hinted and max(h, w) > 2 * model.config.image_size:
            logger.info("%s is %dx%d, much larger than the %d px the model was trained at: --tile auto bounds "
                        "memory and time", batch[0].source.name, w, h, model.config.image_size)
            hinted = True
        x = torch.stack([to_tensor(p.pixels) for p in batch]).to(device)
        yield batch, encode_tensor(model, x, side, _tile_counter(bar, "encode")).float().cpu(), side


@torch.no_grad()
def decode_batch(model: TCAE, latents: torch.Tensor, device: torch.device | str = "cpu", tile: int | None = None,
                 bar=None) -> torch.Tensor:
    """(B, c, h, w) raw latents -> (B, 3, h*f, w*f) images on the CPU, nominally in [-1, 1]; in `tile`-pixel
    tiles when given."""
    return decode_tensor(model, latents.to(device), tile, _tile_counter(bar, "decode")).float().cpu()


def _tile_counter(bar, what: str):
    """A callback showing "encode tile k" in the progress bar of a tiled image (None without a bar)."""
    if bar is None or bar.disable:
        return None
    count = [0]

    def on_tile() -> None:
        count[0] += 1
        bar.set_postfix_str(f"{what} tile {count[0]}", refresh=True)

    return on_tile


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar over images; off with enabled=False and when stderr is not a terminal (disable=None)."""
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
                       pad: str = "reflect", device: torch.device | str = "cpu", progress: bool = True,
                       tile: Tile = None) -> dict:
    """Write out/NAME.png, the reconstruction of each source at its original size (tiled as `tile` says:
    module docstring). Returns a summary: images, out, pad, tiled (how many images went in tiles)."""
    names = output_names([s.name for s in sources], ".png")
    target = dict(zip((s.name for s in sources), names))
    out = _prepare_out(out)
    bar = _progress(len(sources), "reconstruct", progress)
    tiled = 0
    for batch, z, side in encode_batches(model, sources, batch_size, pad, device, tile, bar):
        images = decode_batch(model, z, device, side, bar)
        for p, x in zip(batch, images):
            save_png(to_uint8_hwc(x[:, :p.height, :p.width]).numpy(), out / target[p.source.name])
        tiled += len(batch) if side else 0
        bar.update(len(batch))
    bar.close()
    return {"images": len(sources), "out": str(out), "pad": pad, "tiled": tiled}


def _latent_metadata(model: TCAE, model_id: str, p: _Padded, pad: str, tile: int | None) -> dict[str, str]:
    meta = {"format": FORMAT, "source": p.source.name, "height": str(p.height), "width": str(p.width),
            "compression": str(model.config.compression), "pad": pad, "tile": str(tile or "none"),
            "latent_channels": str(model.config.latent_channels), "model": model_id,
            "latent_stats": "measured" if model.has_latent_stats else "none"}
    if model.has_latent_stats:
        meta["latent_mean"] = json.dumps(model.latent_mean.float().cpu().tolist())
        meta["latent_std"] = json.dumps(model.latent_std.float().cpu().tolist())
    return meta


def encode_images(model: TCAE, sources: list[ImageSource], out: str | os.PathLike, model_id: str = "",
                  batch_size: int = 16, pad: str = "reflect", device: torch.device | str = "cpu",
                  progress: bool = True, tile: Tile = None) -> dict:
    """Write out/NAME.safetensors, the raw latent of each source with its metadata (module docstring),
    encoded in tiles as `tile` says (the tile side is recorded for decoding)."""
    from safetensors.torch import save_file

    names = output_names([s.name for s in sources], LATENT_SUFFIX)
    target = dict(zip((s.name for s in sources), names))
    out = _prepare_out(out)
    bar = _progress(len(sources), "encode", progress)
    shape = None
    tiled = 0
    for batch, z, side in encode_batches(model, sources, batch_size, pad, device, tile, bar):
        for p, latent in zip(batch, z):
            path = out / target[p.source.name]
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({LATENT_KEY: latent.contiguous()}, str(path),
                      metadata=_latent_metadata(model, model_id, p, pad, side))
            shape = list(latent.shape)
        tiled += len(batch) if side else 0
        bar.update(len(batch))
    bar.close()
    return {"images": len(sources), "out": str(out), "pad": pad, "last_latent_shape": shape, "tiled": tiled}


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
                   device: torch.device | str = "cpu", progress: bool = True, tile: Tile | bool = False) -> dict:
    """Write out/NAME.png for each latent file: decoded and cropped to the original size. `tile` False (the
    default) decodes with the tiling each latent was encoded with (its ``tile`` metadata); None, "auto" or
    an int override it (module docstring)."""
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
    tiled = 0
    for batch in _batches(files, lambda lf: (lf.shape, lf.meta.get("tile", "none")), batch_size):
        z = torch.stack([load_file(str(lf.path))[LATENT_KEY] for lf in batch])
        if tile is False:
            recorded = batch[0].meta.get("tile", "none")
            side = None if recorded == "none" else int(recorded)
        else:
            side = tile_for(model, tile, z.shape[-2] * f, z.shape[-1] * f)
        for lf, x in zip(batch, decode_batch(model, z, device, side, bar)):
            crop = x[:, :int(lf.meta["height"]), :int(lf.meta["width"])]
            save_png(to_uint8_hwc(crop).numpy(), out / target[lf.source])
        tiled += len(batch) if side else 0
        bar.update(len(batch))
    bar.close()
    return {"images": len(files), "out": str(out), "tiled": tiled}
