"""Model cards (README.md) for saved models, written by `save_pretrained` / `push_to_hub`.

The card says what the model is (with the paper), its license, latent shape and architecture, the
training data and steps, measured metrics and how to use it. What only the trainer or an evaluation
knows comes in as `card_info` (all keys optional):

- ``name``: display name; ``repo_id``: Hub repo the usage snippet loads (default: a local path)
- ``training_data``: data spec or description; ``steps``: optimisation steps; ``phase``: ``joint`` / ``decoder``
- ``image_size``: training resolution
- ``tokenizer``: (a DiT) the tokenizer whose latents it models; ``class_names``: (a DiT) its classes' names,
  class id order
- ``metrics``: {name: value} measured by `tcae eval`; ``metrics_data`` and ``metrics_image_size``: on what
- ``license``: SPDX-style id for the weights (default ``apache-2.0``, the code's license)
- ``notes``: free text, one paragraph

It is stored in the card's YAML header under ``tcae``, so a later save (e.g. `tcae diagnose --write-stats`
rewriting the weights) or `tcae push` keeps it (:func:`read_card_info`). Needs only huggingface_hub
(no jinja template).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from torch import nn

PAPER_URL = "https://arxiv.org/abs/2604.07340"
PAPER = f"[TC-AE (arXiv 2604.07340)]({PAPER_URL})"
DEFAULT_LICENSE = "apache-2.0"
CARD_KEY = "tcae"
CARD_INFO_KEYS = ("name", "repo_id", "training_data", "steps", "phase", "image_size", "tokenizer", "class_names",
                  "metrics", "metrics_data", "metrics_image_size", "license", "notes")


def read_card_info(path: str | os.PathLike) -> dict[str, Any]:
    """The `card_info` stored in a card written by :func:`build_model_card` ({} when there is none)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = ModelCard.load(path).data.to_dict()
    except Exception:  # a hand-written README without a YAML header: nothing of ours to keep
        return {}
    info = data.get(CARD_KEY)
    return dict(info) if isinstance(info, dict) else {}


def check_card_info(info: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(info) - set(CARD_INFO_KEYS))
    if unknown:
        raise ValueError(f"unknown card_info key(s) {unknown}; known: {', '.join(CARD_INFO_KEYS)}")
    if "metrics" in info and not isinstance(info["metrics"], dict):
        raise ValueError(f"card_info['metrics'] must be a dict name -> value, got {type(info['metrics']).__name__}")
    return info


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _params_m(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M"


def _metrics_section(info: dict[str, Any], generator: bool = False) -> list[str]:
    """The Metrics section; `generator`: a DiT, measured on its samples (`tcae sample`, `tcae eval-gen`)."""
    metrics = info.get("metrics") or {}
    command = "tcae eval-gen" if generator else "tcae eval"
    if not metrics:
        how = ("`tcae sample` draws samples and `tcae eval-gen` measures gFID / FD on them" if generator
               else "`tcae eval` measures them; `tcae push --eval-json` adds them here")
        return ["## Metrics", "", f"No measured metrics were given with this model ({how}).", ""]
    where = []
    if info.get("metrics_data"):
        where.append(f"on `{info['metrics_data']}`")
    if info.get("metrics_image_size"):
        where.append(f"at {info['metrics_image_size']} px")
    lines = ["## Metrics", "", f"Measured with `{command}`{' ' + ' '.join(where) if where else ''}:", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    return [*lines, ""]


def _tokenizer_body(model: Any, info: dict[str, Any], license_id: str) -> str:
    cfg = model.config
    f, c, size = cfg.compression, cfg.latent_channels, info.get("image_size") or cfg.image_size
    _, h, w = model.latent_shape(size, size)
    repo = info.get("repo_id") or "path/to/model"
    name = info.get("name") or info.get("repo_id") or "TC-AE tokenizer"
    dec_c = cfg.coarse_depth if cfg.decoder_coarse_depth is None else cfg.decoder_coarse_depth
    dec_f = cfg.fine_depth if cfg.decoder_fine_depth is None else cfg.decoder_fine_depth
    stats = ("measured: per-channel mean/std stored in the weights (`model.normalize` / `model.denormalize`)"
             if model.has_latent_stats else "not measured (`tcae diagnose --write-stats` measures them)")
    steps = info.get("steps")
    phase = info.get("phase")
    training = "not recorded"
    if info.get("training_data") or steps:
        training = f"`{info.get('training_data', 'unknown data')}`"
        if steps:
            training += f", {steps} steps"
        if phase:
            training += f" (phase `{phase}`{': encoder frozen, decoder fine-tuned' if phase == 'decoder' else ''})"
    how = ("in two stages (patch tokens, then a 2x2 token merge)" if cfg.staged
           else "in one stage (the single-stage baseline)")
    lines = [
        f"# {name}", "",
        f"A **TC-AE** image tokenizer ({PAPER}): a ViT autoencoder that compresses an image {how}"
        " and is trained jointly with iBOT self-supervision, so that its latent space suits latent diffusion.",
        f"It maps an RGB image (3, H, W) in [-1, 1], H and W divisible by f = {f}, to a latent "
        f"({c}, H/{f}, W/{f}) and back.", "",
        "| | |", "|---|---|",
        f"| latent | {c} x H/{f} x W/{f} ({c}x{h}x{w} at {size}x{size}) |",
        f"| compression f | {f} (patch size {cfg.patch_size}, {'staged' if cfg.staged else 'single-stage'}) |",
        f"| encoder | widths {cfg.fine_width}/{cfg.coarse_width}, depths {cfg.fine_depth}+{cfg.coarse_depth} |",
        f"| decoder | depths {dec_c}+{dec_f} |",
        f"| parameters | {_params_m(model)} |",
        f"| latent statistics | {stats} |",
        f"| training | {training} |",
        f"| license | {license_id} |", "",
    ]
    if info.get("notes"):
        lines += [str(info["notes"]), ""]
    lines += _metrics_section(info)
    lines += [
        "## Usage", "",
        "```python",
        "import torch",
        "import tcae",
        "",
        f'model = tcae.TCAE.from_pretrained("{repo}")',
        f"x = torch.rand(1, 3, {size}, {size}) * 2 - 1".ljust(40) + "# RGB in [-1, 1], H and W divisible by f",
        "z = model.encode(x)".ljust(40) + f"# raw latent (1, {c}, {h}, {w})",
        "x_hat = model.decode(z)".ljust(40) + f"# (1, 3, {size}, {size})",
        "```", "",
        "Folders of images of any size (padded to a multiple of f and cropped back):", "",
        "```bash",
        "pip install tcae",
        f"tcae reconstruct --model {repo} --data images/ --out reconstructions/",
        f"tcae encode --model {repo} --data images/ --out latents/",
        "```", "",
    ]
    return "\n".join(lines)


def _generic_body(model: Any, info: dict[str, Any], license_id: str) -> str:
    kind = getattr(model, "model_kind", type(model).__name__)
    repo = info.get("repo_id") or "path/to/model"
    cls = type(model).__name__
    module = type(model).__module__.rsplit(".", 1)[0]
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else vars(model.config)
    lines = [f"# {info.get('name') or info.get('repo_id') or kind}", "",
             f"A {kind} from the `tcae` library ({PAPER}).", "", "| | |", "|---|---|",
             f"| parameters | {_params_m(model)} |"]
    if info.get("training_data") or info.get("steps"):
        lines.append(f"| training | `{info.get('training_data', 'unknown data')}`, {info.get('steps', '?')} steps |")
    if info.get("tokenizer"):
        lines.append(f"| tokenizer | `{info['tokenizer']}` |")
    if info.get("class_names"):
        names = list(info["class_names"])
        shown = ", ".join(f"{i} `{n}`" for i, n in enumerate(names[:20]))
        lines.append(f"| classes | {len(names)}: {shown}{', ...' if len(names) > 20 else ''} |")
    lines += [f"| license | {license_id} |", "", "Config: " + ", ".join(f"`{k}={v}`" for k, v in config.items()), ""]
    generator = kind == "DiT"
    lines += _metrics_section(info, generator)
    lines += ["## Usage", "", "```python", f"from {module} import {cls}", "",
              f'model = {cls}.from_pretrained("{repo}")', "```", ""]
    if generator:
        tok = info.get("tokenizer") or "TOKENIZER"
        lines += ["```bash", f"tcae sample --dit {repo} --model {tok} --num 64 --out samples/",
                  "tcae eval-gen --samples samples/samples.npz --ref REFERENCE --out eval-gen/", "```", ""]
    return "\n".join(lines)


def build_model_card(model: nn.Module, card_info: dict[str, Any] | None = None) -> ModelCard:
    """The README.md model card of `model` (a TCAE gets the tokenizer card; other models a short one)."""
    info = check_card_info(dict(card_info or {}))
    license_id = info.get("license") or DEFAULT_LICENSE
    hub_info = getattr(model, "_hub_mixin_info", None)
    tags = list(getattr(getattr(hub_info, "model_card_data", None), "tags", None) or ["tcae"])
    data = ModelCardData(library_name="tcae", license=license_id, tags=tags, **{CARD_KEY: info})
    tokenizer = hasattr(model, "latent_shape") and hasattr(model, "has_latent_stats")
    body = (_tokenizer_body if tokenizer else _generic_body)(model, info, license_id)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
