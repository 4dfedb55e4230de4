"""Perceptual loss: LPIPS (Zhang et al. 2018) through the `lpips` package.

    LPIPS(x, y) = sum_l  mean_{h,w} || w_l * (phi_l(x)_hw - phi_l(y)_hw) ||^2

phi_l: unit-normalised (over channels) features of layer l of an ImageNet backbone (VGG16 here),
w_l: the package's learned linear weights (shipped inside `lpips`).

The backbone is *not* downloaded: `lpips.LPIPS` is built with a random trunk (`pnet_rand=True`) and the
torchvision ImageNet weights are loaded from an explicit file or torch hub's cache
(`torch.hub.get_dir()/checkpoints/vgg16-397923af.pth`). A missing file is a `FileNotFoundError` that
says which file, where it goes and where it comes from -- LPIPS with a random trunk is never used silently.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

# lpips trunk name -> torchvision's ImageNet weights URL (VGG16_Weights.IMAGENET1K_V1 etc.), whose
# `features.*` entries the lpips trunk slices hold. Constants, so importing this module stays cheap
# (lpips and torchvision are imported only when a network is built); a test checks them against torchvision.
_BACKBONES = {
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}


def backbone_url(net: str = "vgg") -> str:
    """torchvision's download URL of the ImageNet backbone of the LPIPS trunk `net`."""
    if net not in _BACKBONES:
        raise ValueError(f"unknown LPIPS net {net!r}; expected one of {sorted(_BACKBONES)}")
    return _BACKBONES[net]


def default_backbone_path(net: str = "vgg") -> Path:
    """Where torchvision would cache the backbone: torch.hub.get_dir()/checkpoints/<file name of the URL>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / backbone_url(net).rsplit("/", 1)[-1]


def resolve_backbone_weights(net: str = "vgg", backbone_weights: str | os.PathLike | None = None) -> Path:
    """The backbone weights file: `backbone_weights` if given, else the torch hub cache path.

    Raises:
        FileNotFoundError: naming the file, the exact path where it goes and the URL it comes from.
    """
    url = backbone_url(net)
    if backbone_weights is not None:
        path = Path(backbone_weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS backbone weights file {str(path)!r} (passed explicitly) does not exist; the file "
                f"expected is torchvision's {url.rsplit('/', 1)[-1]} from {url}"
            )
        return path
    path = default_backbone_path(net)
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS ({net}) backbone weights {path.name!r} not found at {str(path)!r}. Download it from {url} "
            f"and put it at {str(path)!r} (torch hub's checkpoint cache), or pass its path explicitly "
            "(backbone_weights= / loss.lpips_weights=PATH). Weights are never downloaded automatically and "
            "LPIPS is never computed with a random backbone."
        )
    return path


class LPIPSLoss(nn.Module):
    """LPIPS distance as a frozen loss module; gradients flow to the inputs only.

    forward(pred (B, 3, H, W), target (B, 3, H, W)), both in [-1, 1] -> scalar: mean LPIPS over the batch.
    """

    def __init__(self, net: str = "vgg", backbone_weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        path = resolve_backbone_weights(net, backbone_weights)  # fail before building anything
        import lpips

        with warnings.catch_warnings():
            # lpips calls torchvision's deprecated `pretrained=` argument; with pnet_rand=True it is False
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.models")
            self.net = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        self._load_backbone(path)
        self.path = path
        # LPIPS is a fixed function: no parameter is trained and dropout in its linear heads stays off
        self.requires_grad_(False)
        self.eval()

    def _load_backbone(self, path: Path) -> None:
        """Copy torchvision `features.<i>.<param>` entries into lpips' `slice<k>.<i>.<param>` trunk."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        trunk = self.net.net
        target, missing = {}, []
        for key in trunk.state_dict():
            _, index, param = key.split(".", 2)  # "slice3.10.weight" -> index 10 of `features`
            src = f"features.{index}.{param}"
            if src in state:
                target[key] = state[src]
            else:
                missing.append(src)
        if missing:
            raise ValueError(f"{path} is not a torchvision {self.net.pnet_type} state dict: "
                             f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        trunk.load_state_dict(target, strict=True)

    def train(self, mode: bool = True) -> LPIPSLoss:
        # always eval: the calibrated linear heads carry dropout that must never be active
        return super().train(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.net(pred, target).mean()


def load_lpips(backbone_weights: str | os.PathLike | None = None, net: str = "vgg") -> LPIPSLoss:
    """LPIPS for evaluation: frozen, eval mode, no parameter requires grad."""
    return LPIPSLoss(net, backbone_weights).eval().requires_grad_(False)


def build_perceptual(kind: str, **kw) -> nn.Module | None:
    """Perceptual loss from the config: "none" -> None (off), "lpips" -> LPIPSLoss(**kw)."""
    kind = str(kind).lower()
    if kind == "none":
        return None
    if kind == "lpips":
        return LPIPSLoss(**kw)
    raise ValueError(f"unknown perceptual loss {kind!r}; expected 'lpips' or 'none'")
