"""iBOT/DINOv2 block masking, drawn in the collate function.

:class:`BlockMaskGenerator` follows DINOv2's ``MaskingGenerator``: random rectangles (area at
least ``min_num_patches``, log-uniform aspect in [min_aspect, 1/min_aspect]) are added until
the requested number of patches is masked. One difference (**ours**): when no further rectangle
fits (the remainder is smaller than ``min_num_patches``, or the grid is crowded) the last few
patches are masked one by one, so the count is always exact and the mask ratio stays inside the
configured range.

:class:`MultiCropCollate` batches multi-crop samples and draws the masks. Design (**ours**):

- Global crop 0 of every sample is **never masked**: it is the reconstruction input
  (``batch["image"]``) of the autoencoder. Masks are drawn on global crops 1.. only.
- Of those ``n = (num_global - 1) * B`` views, ``int(n * mask_sample_prob)`` are masked. As in
  DINOv2 their ratios are spread evenly over the range: with ``probs = linspace(min, max,
  n_masked + 1)`` view ``i`` masks ``int(gy * gx * uniform(probs[i], probs[i + 1]))`` patches
  (clamped to ``[ceil(gy * gx * min), floor(gy * gx * max)]``); the masked views are then shuffled among the
  unmasked ones.
- The random draws come from the samples' ``"seed"`` values (set by the datasets from seed, epoch
  and index), so the masks of a batch are reproducible, e.g. when a run resumes, and do not
  depend on the number of DataLoader workers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


class BlockMaskGenerator:
    """Random block masks on a ``(gy, gx)`` patch grid (DINOv2 ``MaskingGenerator``).

    Args:
        grid: ``(gy, gx)``, the number of patches (tokens) per column and per row.
        min_num_patches: smallest rectangle, in patches.
        max_num_patches: largest rectangle; default half the grid (DINOv2's training setting).
        min_aspect: aspect ratios are log-uniform in ``[min_aspect, max_aspect]``.
        max_aspect: default ``1 / min_aspect``.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        self.height, self.width = int(grid[0]), int(grid[1])
        self.num_patches = self.height * self.width
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches if max_num_patches is not None else max(1, self.num_patches // 2)
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def _add_block(self, mask: np.ndarray, max_patches: int, rng: Any) -> int:
        """Try (10 times) to add one rectangle of <= ``max_patches`` new patches; return how many were added."""
        for _ in range(10):
            target = rng.uniform(self.min_num_patches, max_patches)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if 0 < h < self.height and 0 < w < self.width:
                top = rng.randint(0, self.height - h)
                left = rng.randint(0, self.width - w)
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= max_patches:
                    block[...] = True
                    return new
        return 0

    def __call__(self, num_masking_patches: int, rng: Any = None) -> np.ndarray:
        """A bool mask (gy, gx) with exactly ``num_masking_patches`` True (capped at the grid size).

        ``rng``: a ``random.Random`` (default: the ``random`` module's global generator).
        """
        rng = rng or random
        mask = np.zeros((self.height, self.width), dtype=bool)
        target = min(int(num_masking_patches), self.num_patches)
        count = 0
        while count < target:
            remaining = min(target - count, self.max_num_patches)
            if remaining < self.min_num_patches:
                break
            added = self._add_block(mask, remaining, rng)
            if added == 0:
                break
            count += added
        if count < target:  # top up patch by patch so the count is exact
            free = np.flatnonzero(~mask.ravel())
            mask.ravel()[rng.sample(list(free), target - count)] = True
        return mask

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(grid=({self.height}, {self.width}), min={self.min_num_patches}, "
            f"max={self.max_num_patches})"
        )


@dataclass
class MaskedTokens:
    """Where the masked tokens of a batch of views are, computed on the host from the masks (in the collate
    function, as DINOv2 does), so that gathering them on the device needs no host sync.

    `index`: long (M,), flat positions into (V * n) rows of the views' tokens (view-major, row-major grid);
    `weight`: float (M,), 1 / (masked tokens of the row's view): each masked view weighs the same;
    `num_views`: views with at least one masked token (a host int).
    """

    index: torch.Tensor
    weight: torch.Tensor
    num_views: int

    @classmethod
    def from_masks(cls, masks: torch.Tensor) -> MaskedTokens:
        """masks: bool (V, y, x) or (V, n), True = masked (on the CPU)."""
        flat = masks.reshape(masks.shape[0], -1).bool().cpu()
        counts = flat.sum(dim=1)
        index = flat.reshape(-1).nonzero().squeeze(1)
        weight = (1.0 / counts.clamp(min=1).float()).repeat_interleave(counts)
        return cls(index, weight, int((counts > 0).sum()))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskedTokens:
        return MaskedTokens(self.index.to(device, non_blocking=non_blocking),
                            self.weight.to(device, non_blocking=non_blocking), self.num_views)

    def pin_memory(self) -> MaskedTokens:  # DataLoader(pin_memory=True) calls this
        return MaskedTokens(self.index.pin_memory(), self.weight.pin_memory(), self.num_views)

    def gather(self, tokens: torch.Tensor) -> torch.Tensor:
        """(V, n, d) -> the masked rows (M, d), in `index` order."""
        return tokens.reshape(-1, tokens.shape[-1]).index_select(0, self.index)


class MultiCropCollate:
    """Collate multi-crop samples and draw iBOT block masks (see the module docstring).

    Args:
        mask_grid: ``(gy, gx)`` token grid of a global crop (global size / token stride).
        mask_ratio: ``(min, max)`` share of patches masked in a masked view.
        mask_sample_prob: share of the maskable views (global crops 1..) that get a mask.
        seed: mixed into the per-batch mask seed; with samples lacking ``"seed"`` it seeds a
            private generator (else Python's global ``random`` is used).
        **mask_kwargs: passed to :class:`BlockMaskGenerator` (``min_num_patches``, ``min_aspect``...).

    ``__call__(samples)`` returns, for B samples with ``num_global`` crops of size G and
    ``num_local`` crops of size L:

    - ``"global_crops"``: FloatTensor (num_global * B, 3, G, G), crop-major (every sample's crop 0,
      then every sample's crop 1, ...), values in [-1, 1];
    - ``"local_crops"``: FloatTensor (num_local * B, 3, L, L), crop-major; absent without local crops;
    - ``"masks"``: BoolTensor (num_global * B, gy, gx), True = masked; the first B rows are all False;
    - ``"masked"``: :class:`MaskedTokens` of those masks (indices and weights computed here, on the host);
    - ``"image"``: FloatTensor (B, 3, G, G), global crop 0 (a view of ``global_crops[:B]``);
    - ``"label"``: LongTensor (B,) (-1 where unlabelled).
    """

    def __init__(
        self,
        mask_grid: tuple[int, int],
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_sample_prob: float = 1.0,
        seed: int | None = None,
        **mask_kwargs: Any,
    ) -> None:
        lo, hi = float(mask_ratio[0]), float(mask_ratio[1])
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"mask_ratio must satisfy 0 <= min <= max <= 1, got {mask_ratio}")
        if not 0.0 <= mask_sample_prob <= 1.0:
            raise ValueError(f"mask_sample_prob must be in [0, 1], got {mask_sample_prob}")
        self.mask_grid = (int(mask_grid[0]), int(mask_grid[1]))
        self.mask_ratio = (lo, hi)
        self.mask_sample_prob = mask_sample_prob
        self.seed = seed
        self.generator = BlockMaskGenerator(self.mask_grid, **mask_kwargs)
        self._private_rng = random.Random(seed) if seed is not None else None

    def _rng(self, samples: Sequence[dict[str, Any]]) -> Any:
        seeds = [s.get("seed") for s in samples]
        if all(isinstance(s, int) for s in seeds):
            entropy = [(self.seed or 0) & ((1 << 64) - 1), *seeds]
            return random.Random(int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]))
        return self._private_rng or random

    def draw_masks(self, num_views: int, rng: Any) -> torch.Tensor:
        """Masks for ``num_views`` maskable views: BoolTensor (num_views, gy, gx)."""
        gy, gx = self.mask_grid
        n = gy * gx
        lo, hi = self.mask_ratio
        min_count = math.ceil(n * lo - 1e-9)
        max_count = max(min_count, math.floor(n * hi + 1e-9))
        n_masked = int(num_views * self.mask_sample_prob)
        probs = np.linspace(lo, hi, n_masked + 1)
        masks = [
            self.generator(min(max(int(n * rng.uniform(probs[i], probs[i + 1])), min_count), max_count), rng)
            for i in range(n_masked)
        ]
        masks += [np.zeros((gy, gx), dtype=bool)] * (num_views - n_masked)
        rng.shuffle(masks)
        if not masks:
            return torch.zeros(0, gy, gx, dtype=torch.bool)
        return torch.from_numpy(np.stack(masks))

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = len(samples)
        num_global = len(samples[0]["global_crops"])
        num_local = len(samples[0].get("local_crops") or [])
        global_crops = torch.stack([s["global_crops"][k] for k in range(num_global) for s in samples])
        gy, gx = self.mask_grid
        masks = torch.cat(
            [
                torch.zeros(batch, gy, gx, dtype=torch.bool),  # crop 0: the reconstruction input, never masked
                self.draw_masks((num_global - 1) * batch, self._rng(samples)),
            ]
        )
        out = {
            "global_crops": global_crops,
            "masks": masks,
            "masked": MaskedTokens.from_masks(masks),
            "image": global_crops[:batch],
            "label": torch.tensor([int(s.get("label", -1)) for s in samples], dtype=torch.long),
        }
        if num_local:
            out["local_crops"] = torch.stack([s["local_crops"][k] for k in range(num_local) for s in samples])
        return out

    def __repr__(self) -> str:
        return (
            f"MultiCropCollate(mask_grid={self.mask_grid}, mask_ratio={self.mask_ratio}, "
            f"mask_sample_prob={self.mask_sample_prob})"
        )
