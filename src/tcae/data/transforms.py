"""Image transforms: PIL RGB image -> float tensor (3, S, S) in [-1, 1].

- :func:`train_transform`: random resized crop (area scale 0.5-1, aspect 3/4-4/3) + horizontal flip.
- :func:`eval_transform`: resize the shorter side to S + center crop; deterministic.
- :class:`MultiCropTransform`: iBOT/DINO multi-crop, ``num_global`` crops at the training size and
  ``num_local`` smaller crops whose size the encoder accepts (see :func:`local_crop_size`).

All randomness comes from torch's global generator, which the datasets seed per sample (see
:mod:`tcae.data.base`), so every transform here is reproducible given (seed, epoch, index).
Resampling is bicubic with antialiasing (PIL), as in DINO/iBOT and ADM's ImageNet pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.v2 as T
from PIL import Image

_BICUBIC = T.InterpolationMode.BICUBIC


def to_tensor() -> T.Transform:
    """PIL RGB (uint8) -> FloatTensor (3, H, W) in [-1, 1]."""
    return T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize([0.5] * 3, [0.5] * 3)])


def train_transform(image_size: int, scale: tuple[float, float] = (0.5, 1.0), flip: bool = True) -> T.Transform:
    """Random resized crop (area ``scale``, aspect 3/4-4/3) to ``image_size`` + horizontal flip.

    Output: FloatTensor (3, image_size, image_size) in [-1, 1].
    """
    steps: list[T.Transform] = [T.RandomResizedCrop(image_size, scale=scale, interpolation=_BICUBIC)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, to_tensor()])


def eval_transform(image_size: int) -> T.Transform:
    """Resize the shorter side to ``image_size``, center crop; deterministic.

    Output: FloatTensor (3, image_size, image_size) in [-1, 1].
    """
    return T.Compose([T.Resize(image_size, interpolation=_BICUBIC), T.CenterCrop(image_size), to_tensor()])


def local_crop_size(global_size: int, token_stride: int, fraction: float = 0.4) -> int:
    """Side of the local crops: the largest multiple of ``token_stride`` <= ``fraction * global_size``.

    ``token_stride`` is the pixel stride the encoder needs its input to divide by (patch size
    times every token-merge factor), so local crops are valid encoder inputs. At least
    ``2 * token_stride``. DINO's 96 px for 224 px is a fraction of ~0.43; e.g. (256, 16) -> 96.
    """
    if global_size < token_stride or global_size % token_stride:
        raise ValueError(f"global_size {global_size} is not a multiple of token_stride {token_stride}")
    size = int(fraction * global_size) // token_stride * token_stride
    return max(size, 2 * token_stride)


def _photometric(size: int, blur_p: float, solarize_p: float) -> T.Transform:
    """DINO's colour augmentation (jitter 0.8, grayscale 0.2, blur, solarisation)."""
    kernel = max(3, (size // 10) | 1)  # odd, ~ DINO's PIL blur radius 0.1-2 at 224 px
    steps: list[T.Transform] = [
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p),
    ]
    if solarize_p > 0:
        steps.append(T.RandomSolarize(128, p=solarize_p))
    return T.Compose(steps)


class MultiCropTransform:
    """iBOT multi-crop: ``num_global`` crops of ``global_size`` and ``num_local`` of ``local_size``.

    Each crop is an independent random resized crop (area ``global_scale`` / ``local_scale`` of
    the image, aspect 3/4-4/3) with a horizontal flip. With ``color_augment`` the DINO colour
    augmentations are applied to every view **except global crop 0**: crop 0 is the
    autoencoder's reconstruction input and must look like the data distribution. With
    ``recon_view="full"`` crop 0 is the whole image (:func:`eval_transform`: resized to
    ``global_size``, center crop, no flip), the images evaluation reconstructs.

    ``__call__(img)`` returns ``{"global_crops": [FloatTensor (3, G, G)] * num_global,
    "local_crops": [FloatTensor (3, L, L)] * num_local}``, values in [-1, 1].
    """

    def __init__(
        self,
        global_size: int,
        local_size: int,
        num_global: int = 2,
        num_local: int = 4,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        color_augment: bool = False,
        recon_view: str = "crop",
    ) -> None:
        if recon_view not in ("crop", "full"):
            raise ValueError(f"recon_view must be 'crop' or 'full', got {recon_view!r}")
        if num_global < 1:
            raise ValueError("num_global must be >= 1 (global crop 0 is the reconstruction input)")
        self.global_size, self.local_size = global_size, local_size
        self.num_global, self.num_local = num_global, num_local
        tail = to_tensor()

        def view(size: int, scale: Sequence[float], photometric: T.Transform | None) -> T.Transform:
            steps = [T.RandomResizedCrop(size, scale=tuple(scale), interpolation=_BICUBIC), T.RandomHorizontalFlip()]
            return T.Compose([*steps, *([photometric] if photometric else []), tail])

        clean_global = view(global_size, global_scale, None)
        aug_global = clean_global
        if color_augment:
            aug_global = view(global_size, global_scale, _photometric(global_size, 0.5, 0.2))
        recon = eval_transform(global_size) if recon_view == "full" else clean_global
        self.global_views = [recon] + [aug_global] * (num_global - 1)
        self.local_view = view(local_size, local_scale, _photometric(local_size, 0.5, 0.0) if color_augment else None)

    def __call__(self, img: Image.Image) -> dict[str, list[torch.Tensor]]:
        return {
            "global_crops": [t(img) for t in self.global_views],
            "local_crops": [self.local_view(img) for _ in range(self.num_local)],
        }

    def __repr__(self) -> str:
        return (
            f"MultiCropTransform(global={self.num_global}x{self.global_size}, local={self.num_local}x{self.local_size})"
        )
