"""Overlapping tiles: run a tokenizer on images (or latents) larger than it was trained on, in bounded memory.

The image is cut into tiles that start on whole latent positions and are spaced evenly (so every tile is
full size and no padding is ever encoded); each tile goes through the model on its own, and the outputs
are blended with linear ramps across each overlap (weights sum to 1). Where one tile alone covers an
output element, it equals that tile's output exactly. Memory and time are one tile's computation per
tile plus the float32 output, whatever the image size. Used by ``tcae reconstruct/encode/decode --tile``
(:mod:`tcae.inference`) and by the diffusers wrapper's ``enable_tiling``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def default_stride(tile: int, f: int) -> int:
    """The distance between tile starts for a tile of `tile` pixels at compression `f`: a quarter of the tile
    overlaps (at least f, at most half), in multiples of f (the diffusers wrapper's default)."""
    overlap = min(max(f, tile // 4 // f * f), tile // 2 // f * f)
    return tile - overlap


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of tiles of `tile` covering [0, length), evenly spaced, consecutive starts at most `stride`
    apart (all in one unit, e.g. latent positions). One tile when length <= tile."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return [round(k * (length - tile) / (n - 1)) for k in range(n)]


def ramp(size: int, left: int, right: int) -> torch.Tensor:
    """Blend weights (size,) of one tile: 1 inside, rising linearly over its `left` overlap and falling
    over its `right` one, so two tiles' weights sum to 1 across an overlap they share."""
    i = torch.arange(size, dtype=torch.float32) + 0.5
    w = torch.ones(size)
    if left:
        w = torch.minimum(w, i / left)
    if right:
        w = torch.minimum(w, (size - i) / right)
    return w


def blend_tiles(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], unit_in: int, unit_out: int,
                tile: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """``fn`` applied to overlapping tiles of ``x`` (B, C, H, W), outputs blended into one (B, C', H', W').

    Positions are counted in units (one latent position): a unit is `unit_in` elements of x and
    `unit_out` of fn's output along each axis. `tile`, `stride`: (h, w) in units. Each output element is
    the weighted mean of the tiles covering it (:func:`ramp` weights), so where one tile alone covers it,
    it equals that tile's output exactly. Memory: one tile's computation plus the float32 output.
    """
    hu, wu = x.shape[-2] // unit_in, x.shape[-1] // unit_in
    th, tw = min(tile[0], hu), min(tile[1], wu)
    ys, xs = tile_starts(hu, th, stride[0]), tile_starts(wu, tw, stride[1])

    def weights(starts: list[int], k: int, size: int) -> torch.Tensor:
        left = starts[k - 1] + size - starts[k] if k > 0 else 0
        right = starts[k] + size - starts[k + 1] if k + 1 < len(starts) else 0
        return ramp(size * unit_out, left * unit_out, right * unit_out)

    out = total = None
    for i, y0 in enumerate(ys):
        wy = weights(ys, i, th)
        for j, x0 in enumerate(xs):
            piece = fn(x[..., y0 * unit_in:(y0 + th) * unit_in, x0 * unit_in:(x0 + tw) * unit_in])
            if out is None:
                out = piece.new_zeros(*piece.shape[:2], hu * unit_out, wu * unit_out, dtype=torch.float32)
                total = torch.zeros(hu * unit_out, wu * unit_out, device=piece.device)
            w = (wy[:, None] * weights(xs, j, tw)[None, :]).to(piece.device)
            rows = slice(y0 * unit_out, (y0 + th) * unit_out)
            cols = slice(x0 * unit_out, (x0 + tw) * unit_out)
            out[..., rows, cols] += piece.float() * w
            total[rows, cols] += w
            del piece  # free the tile's output before the next tile runs
    return (out / total).to(x.dtype)
