"""Decoding image files (paths or bytes) into 8-bit RGB PIL images.

Every data source (image folders, WebDataset shards, built-in photos) goes through
:func:`to_rgb`, so all of them agree on how unusual modes are handled:

- ``L``, ``1``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's own conversion to RGB.
- ``P`` / ``PA`` (palette): expanded through the palette; palette transparency is honoured.
- ``RGBA`` / ``LA`` / ``La`` / ``RGBa`` (alpha): **composited on white**. Dropping alpha would
  show whatever colour the fully transparent pixels happen to store (often black), which is
  not what the image looks like.
- ``I;16*`` / ``I`` / ``F`` (16-bit, 32-bit integer, float): the *value range* is rescaled to
  8 bits, never clipped: data within [0, 1] is taken as normalised floats (x 255), data within
  [0, 255] is kept, data within [0, 65535] is 16-bit (/ 257, so 65535 -> 255), anything else is
  min-max normalised.
- :func:`load_rgb` applies the EXIF orientation tag, so camera photos come out upright.

Truncated files raise (PIL's ``LOAD_TRUNCATED_IMAGES`` is left off on purpose): a half-grey
image would silently poison training; the datasets skip and count such files instead.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

#: File extensions (lower case) recognised as images by the folder scanner and shard reader: the formats
#: PIL reads without extra libraries. A multi-frame GIF or TIFF is read as its first frame (PIL's default).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

_ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}
_HIGH_DEPTH_MODES = {"I", "F"}  # plus every "I;16..." variant


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """Rescale a 16/32-bit integer or float single-channel image to 8-bit ``L``."""
    a = np.asarray(img, dtype=np.float64)
    if a.size == 0:
        return Image.new("L", img.size)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0 and img.mode == "F":
        a = a * 255.0
    elif lo >= 0.0 and hi <= 255.0 and not img.mode.startswith("I;16"):
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        a = a / 257.0  # exact 16-bit -> 8-bit scale: 65535 / 257 == 255
    else:
        a = (a - lo) / max(hi - lo, 1e-12) * 255.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit ``RGB`` (see the module docstring for the rules).

    The pixels are fully decoded here, so a truncated or corrupt file raises inside this call.
    """
    mode = img.mode
    if mode == "RGB":
        img.load()
        return img
    if mode in _HIGH_DEPTH_MODES or mode.startswith("I;16"):
        return _high_depth_to_l(img).convert("RGB")
    if mode == "P":
        # Palette images may carry transparency ("transparency" info); expand it to alpha.
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(source: str | os.PathLike | bytes | BinaryIO) -> Image.Image:
    """Open and fully decode an image (path, raw bytes or file object) as 8-bit RGB.

    Raises whatever PIL raises (``OSError``, ``SyntaxError``, ``ValueError``,
    ``Image.DecompressionBombError``...) for undecodable or truncated data.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    with Image.open(source) as img:
        ImageOps.exif_transpose(img, in_place=True)  # no-op without an orientation tag
        # to_rgb fully decodes the pixels (RGB input: img.load()), so the image it returns, even
        # the opened one itself, stays valid once the ``with`` block closes the file: no copy.
        return to_rgb(img)
