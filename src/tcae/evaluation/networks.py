"""The registry of feature networks by name: ``inception``, ``dinov2[:<timm name>]``,
``torchvision:<name>``, ``judge:<data>`` (:mod:`tcae.evaluation.judges`) -> a :class:`FeatureNetwork`,
and whether a metric's pretrained weights are on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from tcae.evaluation.features import (
    DINOV2_DEFAULT,
    CustomFeatures,
    DinoV2Features,
    FeatureNetwork,
    InceptionFeatures,
    TorchvisionFeatures,
    dinov2_weights_path,
    inception_weights_path,
    torchvision_weights_path,
)
from tcae.evaluation.judges import build_judge, judge_weights_path


def weights_available(metric: str, weights: str | os.PathLike | None = None) -> bool:
    """Whether the pretrained weights a metric needs are on disk (never downloads, never builds a net).

    ``metric``: "psnr"/"ssim" (always True), "lpips" (VGG16 in the torch hub cache), "rfid" or
    "fd:inception" (torch-fidelity's InceptionV3), "fd:torchvision:<name>", "fd:dinov2[:<name>]".
    ``weights``: an explicit file to check instead of the default location.
    """
    if metric in ("psnr", "ssim"):
        return True
    if weights is not None:
        return Path(weights).expanduser().is_file()
    name = metric[3:] if metric.startswith("fd:") else metric
    if name == "lpips":
        from tcae.losses.perceptual import default_backbone_path

        return default_backbone_path("vgg").is_file()
    if name == "rfid":
        name = "inception"
    try:
        feature_weights_path(name)
    except FileNotFoundError:
        return False
    return True


def feature_weights_path(spec: str, weights: str | os.PathLike | None = None) -> Path:
    """The weights file :func:`build_feature_network` would load for the name ``spec`` (no network
    is built). Raises :class:`MissingWeightsError` when it is not on disk, ValueError for an unknown
    name."""
    family, arg = _parse_network(spec)
    return _NETWORKS[family][0](arg, weights)


def _parse_network(spec: str) -> tuple[str, str]:
    """"inception" | "dinov2[:timm name]" | "torchvision:<name>" -> (family, argument); else ValueError."""
    name, _, arg = spec.partition(":")
    if name == "inception" and not arg:
        return name, ""
    if name == "dinov2":
        return name, arg or DINOV2_DEFAULT
    if name in ("torchvision", "judge") and arg:
        return name, arg
    raise ValueError(f"unknown feature network {spec!r}; expected 'inception', 'dinov2[:<timm name>]', "
                     "'torchvision:<model name>', 'judge:digits', 'judge:fashion[@DIR]' or an nn.Module")


def build_feature_network(spec: str | nn.Module, weights: str | os.PathLike | None = None) -> FeatureNetwork:
    """A :class:`FeatureNetwork` from a name (see the module docstring) or any ``nn.Module``.

    Args:
        spec: "inception", "dinov2[:timm name]", "torchvision:<name>", "judge:<data>", a FeatureNetwork (returned
            as is) or any nn.Module (wrapped as a custom network).
        weights: explicit weights file; None looks in the library's cache location.

    Raises:
        MissingWeightsError: the weights file is not on disk (message names file, path and URL).
        ValueError: unknown name.
    """
    if isinstance(spec, FeatureNetwork):
        return spec
    if isinstance(spec, nn.Module):
        return CustomFeatures(spec)
    family, arg = _parse_network(spec)
    return _NETWORKS[family][1](arg, weights)


# family -> (weights file resolver, network builder), both (argument, weights) -> ...
_NETWORKS = {
    "inception": (lambda arg, w: inception_weights_path(w), lambda arg, w: InceptionFeatures(w)),
    "dinov2": (dinov2_weights_path, DinoV2Features),
    "torchvision": (torchvision_weights_path, TorchvisionFeatures),
    "judge": (judge_weights_path, build_judge),
}
