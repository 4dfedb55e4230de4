"""Feature networks for Fréchet distances: InceptionV3 (FID), DINOv2, torchvision classifiers, custom.

Every network here is a :class:`FeatureNetwork`: ``forward(x)`` with x (B, 3, H, W) float in
[-1, 1] (any H, W; each network does its own resize and normalisation) returns
``{"features": (B, D) float32}`` plus ``"logits": (B, K)`` where the network is a classifier.
Only the InceptionV3 network (:class:`InceptionFeatures`) gives *FID*, and only its logits give
an Inception Score; a user-supplied module gives "frechet distance (custom network)".

Pretrained weights are never downloaded and a network is never silently left random: each
builder resolves a weights file (an explicit path, else the cache location the upstream library
uses) and raises :class:`MissingWeightsError` (a ``FileNotFoundError``) naming the file, where it
goes and where to get it.

Names accepted by :func:`build_feature_network`:

- ``"inception"``: torch-fidelity's ``inception-v3-compat`` (TF-FID port, bit-compatible with the
  original FID), pool features (2048) and ``logits_unbiased`` (1008). Images are quantised to
  uint8 first, as FID tools see saved PNGs.
- ``"dinov2"`` or ``"dinov2:<timm name>"``: timm DINOv2 ViT at 224 px, [CLS] features. Default
  ``vit_large_patch14_dinov2.lvd142m`` (ViT-L/14, the FD_DINOv2 of Stein et al. 2023 / EDM2);
  ``dinov2:vit_base_patch14_dinov2.lvd142m`` or ``..._small_...`` for lighter variants.
- ``"torchvision:<name>"``: any torchvision classifier (``torchvision.models.list_models``), its
  default weights' preprocessing, penultimate features (input of the last ``nn.Linear``) and logits.
- ``"judge:digits"``, ``"judge:fashion[@DIR]"``: the project's own classifiers of a data set's
  classes (:mod:`tcae.evaluation.judges`), trained here rather than downloaded: "FD-<data>" in their
  penultimate features and, from their logits, the class agreement of labelled samples.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tcae.util import to_uint8

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
DINOV2_DEFAULT = "vit_large_patch14_dinov2.lvd142m"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CUSTOM_LABEL = "frechet distance (custom network)"


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights of a feature/perceptual network are not on disk (never downloaded here)."""


def torch_hub_checkpoint(filename: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` caches ``filename``: $TORCH_HOME/hub/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def resolve_weights(what: str, explicit: str | os.PathLike | None, default: Path, source: str,
                    option: str = "weights") -> Path:
    """The weights file to load: ``explicit`` if given (must exist), else ``default`` if it exists.

    Args:
        what: network name for the message; default: the cache location the upstream library uses;
        source: where to get the file (URL / command); option: how to pass a path explicitly.

    Raises:
        MissingWeightsError: naming the file, where it goes, where to get it and how to pass a path.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        raise MissingWeightsError(f"{what} weights file {str(path)!r} (passed with {option}) does not exist")
    if default.is_file():
        return default
    raise MissingWeightsError(
        f"{what} weights file {default.name!r} not found at {str(default)!r}. Get it from {source} and put "
        f"it there, or pass its path with {option}. Pretrained weights are never downloaded "
        "automatically and a network is never used with random weights."
    )


def inception_weights_path(weights: str | os.PathLike | None = None) -> Path:
    """The InceptionV3 (FID) weights file: ``weights`` or torch-fidelity's torch hub cache file.
    Raises :class:`MissingWeightsError` when it is not on disk."""
    default = torch_hub_checkpoint(INCEPTION_FILE)
    return resolve_weights("InceptionV3 (FID)", weights, default,
                           f"{INCEPTION_URL} (`curl -L --create-dirs -o {default} {INCEPTION_URL}`)",
                           option="--inception-weights / feature_weights=")


def dinov2_weights_path(model_name: str = DINOV2_DEFAULT, weights: str | os.PathLike | None = None) -> Path:
    """The weights file of timm DINOv2 ``model_name``: ``weights`` or the Hugging Face hub cache of
    ``timm/<name>`` (``model.safetensors``). Raises :class:`MissingWeightsError` when it is not on
    disk, ValueError for a name that is not a timm DINOv2 model. Builds no network."""
    import timm
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or "dinov2" not in model_name:
        raise ValueError(f"{model_name!r} is not a timm DINOv2 model (e.g. {DINOV2_DEFAULT})")
    repo = cfg.hf_hub_id or f"timm/{model_name}"
    cached = try_to_load_from_cache(repo, "model.safetensors")
    # not cached: name the place `huggingface-cli download` would put it
    default = Path(cached) if isinstance(cached, str) else (
        Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots" / "<revision>"
        / "model.safetensors")
    return resolve_weights(f"DINOv2 ({model_name})", weights, default,
                           f"`huggingface-cli download {repo} model.safetensors` (or Meta's {cfg.url})",
                           option="feature_weights=")


def _torchvision_default_weights(model_name: str) -> Any:
    import torchvision

    if model_name not in torchvision.models.list_models():
        raise ValueError(f"unknown torchvision model {model_name!r}; see torchvision.models.list_models()")
    try:
        return torchvision.models.get_model_weights(model_name).DEFAULT
    except (ValueError, AttributeError) as err:
        raise ValueError(f"torchvision model {model_name!r} has no pretrained weights enum") from err


def torchvision_weights_path(model_name: str, weights: str | os.PathLike | None = None) -> Path:
    """The weights file of torchvision classifier ``model_name``: ``weights`` or the torch hub cache
    file of its default weights' URL. Raises :class:`MissingWeightsError` when it is not on disk,
    ValueError for an unknown model. Builds no network."""
    default_weights = _torchvision_default_weights(model_name)
    url = default_weights.url
    return resolve_weights(f"torchvision {model_name} ({default_weights})", weights,
                           torch_hub_checkpoint(os.path.basename(url)), url, option="feature_weights=")


class FeatureNetwork(nn.Module):
    """Base: images (B, 3, H, W) in [-1, 1] -> {"features": (B, D) float32[, "logits": (B, K)]}.

    Attributes: ``name`` (spec it was built from), ``kind`` ("custom" -> custom network; else the
    family), ``label`` (human-readable distance name), ``dim`` (D or None). Only an
    :class:`InceptionFeatures` instance gives "FID" and the Inception Score (``is_fid``), whatever
    its ``kind`` or ``label`` say.
    """

    name: str = "custom"
    kind: str = "custom"
    label: str = CUSTOM_LABEL
    dim: int | None = None
    # True when the logits are over the generated data's own label ids (a judge): class-conditional
    # samples then get a class agreement (share classified as the class they were generated for)
    judges_labels: bool = False

    @property
    def is_fid(self) -> bool:
        """True only for the standard InceptionV3 network (the distance may be called FID, and its
        logits give the Inception Score)."""
        return isinstance(self, InceptionFeatures)

    def metric_key(self, prefix: str) -> str:
        """Result key of the Fréchet distance over this network: ``{prefix}fid`` for InceptionV3,
        ``{prefix}fd_custom`` for a custom network, else ``{prefix}fd_<name>`` with every run of
        non-alphanumerics in the name turned into ``_`` (``prefix``: "r" reconstruction, "g" generation).
        """
        if self.is_fid:
            return f"{prefix}fid"
        if self.kind == "custom":
            return f"{prefix}fd_custom"
        return f"{prefix}fd_" + re.sub(r"[^0-9a-zA-Z]+", "_", self.name).strip("_")

    def metric_label(self, prefix: str) -> str:
        """Human-readable name of that distance: ``{prefix}FID (InceptionV3)`` for InceptionV3,
        :data:`CUSTOM_LABEL` for a custom network (or a label that would claim FID), else
        ``{prefix}<label>`` (e.g. "rFD (DINOv2 ...)")."""
        if self.is_fid:
            return f"{prefix}FID (InceptionV3)"
        if self.kind == "custom" or self.label == CUSTOM_LABEL or "FID" in self.label.upper():
            return CUSTOM_LABEL
        return f"{prefix}{self.label}"


class InceptionFeatures(FeatureNetwork):
    """torch-fidelity's InceptionV3 ('inception-v3-compat'): 2048 pool features + 1008 unbiased logits."""

    kind, label, dim = "inception", "FID (InceptionV3)", 2048

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = inception_weights_path(weights)
        self.name = "inception"
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(path))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats, logits = self.net(to_uint8(x))  # resizes to 299 itself, TF-1.x compatible bilinear
        return {"features": feats.float(), "logits": logits.float()}


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


class DinoV2Features(FeatureNetwork):
    """timm DINOv2 ViT (pretrained=False, then the state dict from a file), [CLS] features at 224 px.

    Weights: an explicit ``.safetensors``/``.pth`` (timm's or Meta's original layout), else the
    Hugging Face hub cache of ``timm/<name>`` (``model.safetensors``).
    """

    kind = "dinov2"
    image_size = 224

    def __init__(self, model_name: str = DINOV2_DEFAULT, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn

        path = dinov2_weights_path(model_name, weights)
        self.net = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=self.image_size)
        state = checkpoint_filter_fn(_load_file(path), self.net)  # Meta layout -> timm, pos_embed 518 -> 224
        self.net.load_state_dict(state, strict=True)
        self.net.eval().requires_grad_(False)
        self.name, self.dim = f"dinov2:{model_name}", self.net.num_features
        self.label = f"FD (DINOv2 {model_name})"
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x.float().clamp(-1, 1) + 1) / 2
        x = F.interpolate(x, size=(self.image_size,) * 2, mode="bicubic", align_corners=False, antialias=True)
        return {"features": self.net((x - self.mean) / self.std).float()}


class TorchvisionFeatures(FeatureNetwork):
    """Any torchvision classifier: penultimate features (input of its last ``nn.Linear``) and logits.

    Preprocessing is that of the model's default weights (``weights.transforms()``: resize, center
    crop, ImageNet normalisation). Weights: explicit path, else the torch hub cache file of the
    default weights' URL.
    """

    kind = "torchvision"

    def __init__(self, model_name: str, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        import torchvision

        default_weights = _torchvision_default_weights(model_name)
        path = torchvision_weights_path(model_name, weights)
        self.net = torchvision.models.get_model(model_name, weights=None)
        self.net.load_state_dict(_load_file(path), strict=True)
        self.net.eval().requires_grad_(False)
        self.preprocess = default_weights.transforms()
        linears = [m for m in self.net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"torchvision model {model_name!r} has no nn.Linear classifier head")
        self._captured: dict[str, torch.Tensor] = {}
        linears[-1].register_forward_hook(self._capture)
        self.name, self.dim = f"torchvision:{model_name}", linears[-1].in_features
        self.label = f"FD (torchvision {model_name})"

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._captured["features"] = inputs[0]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.preprocess((x.float().clamp(-1, 1) + 1) / 2)
        logits = self.net(x)
        feats = self._captured.pop("features")
        return {"features": feats.flatten(1).float(), "logits": logits.float()}


class CustomFeatures(FeatureNetwork):
    """Wrap any module (B, 3, H, W) in [-1, 1] -> tensor (B, ...) or dict with "features" [and "logits"].

    Tensor outputs are flattened to (B, D). Distances from it are labelled as a custom network,
    never as FID.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.net = module
        self.name = f"custom:{type(module).__name__}"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(x)
        if isinstance(out, dict):
            res = {"features": out["features"].flatten(1).float()}
            if "logits" in out:
                res["logits"] = out["logits"].float()
            return res
        return {"features": out.flatten(1).float()}
