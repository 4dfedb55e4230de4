"""The whole tokenizer -> latent diffusion pipeline as plain functions, shared by `tcae demo` and
`tcae repro`: train a tokenizer, evaluate and diagnose it, cache its latents, train a DiT, sample,
and judge the samples.

On offline machines the Inception network behind FID/IS is usually missing; the built-in digits then
get an honest substitute that is never called FID: a small MLP digit classifier trained on
scikit-learn's digits judges samples (share recognised as their class) and its hidden features give a
Fréchet distance ("FD-digits").
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tcae.config import TRAIN_ALIASES, TrainConfig, load_config
from tcae.data import build_dataset
from tcae.device import resolve_device
from tcae.models import TCAE, flops

log = logging.getLogger("tcae.pipeline")


def train_tokenizer_stage(run_dir: Path, config: str, overrides: list[str]) -> Path:
    """Phase-1 training into run_dir/<name>; returns the model directory. Skipped when it exists."""
    from tcae.training.tokenizer import train_tokenizer

    cfg = load_config(TrainConfig, config, [f"run_dir={run_dir}", *overrides], TRAIN_ALIASES)
    model_dir = Path(cfg.run_dir) / cfg.name / "model"
    if not (model_dir / "model.safetensors").is_file():
        train_tokenizer(cfg)
    return model_dir


def evaluate_stage(model_dir: Path, val_spec: str, image_size: int, out_dir: Path,
                   train_spec: str | None = None) -> dict:
    """PSNR/SSIM (+ rFID/LPIPS only when their weights are present), a reconstruction grid, the latent
    diagnostics, and the latent statistics written into the model."""
    from tcae.evaluation import diagnose, evaluate, weights_available

    model = TCAE.from_pretrained(str(model_dir)).eval()
    metrics = ["psnr", "ssim"] + [m for m in ("lpips", "rfid") if weights_available(m)]
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = evaluate(model, val_spec, image_size=image_size, metrics=tuple(metrics),
                   grid_path=str(out_dir / "reconstructions.png"))
    diag = diagnose(model, train_spec or val_spec, image_size=image_size, write_stats_to=str(model_dir))
    return {"reconstruction": rec, "diagnostics": diag}


def split_spec(data_spec: str, split: str) -> str:
    """`data_spec` naming its `split` ("train", "val", or "test" where the data has one) explicitly
    where the spec grammar allows one.

    Built-in data and image folders with train/ and val/ sub-folders get ":train"/":val" appended (a
    spec that already names a split is returned unchanged); a folder without split sub-folders and
    WebDataset shards have no splits, so the spec is returned as it is (the same images either way).
    "test" exists for `builtin:fashion` only; asked of other data it is a ValueError.
    """
    from tcae.data import parse_spec
    from tcae.data.builtin import SPLITS

    parsed = parse_spec(data_spec)
    if split not in parsed.splits:
        raise ValueError(f"unknown split {split!r} for {data_spec!r} (known: {', '.join(parsed.splits)})")
    if parsed.split is not None or parsed.kind == "shards":
        return data_spec
    if parsed.kind == "folder" and not all((Path(parsed.target) / s).is_dir() for s in SPLITS):
        return data_spec
    return f"{data_spec}:{split}"


def latents_stage(model_dir: Path, data_spec: str, image_size: int, out_dir: Path,
                  device: str | torch.device | None = None) -> Path:
    """Cache normalisable latents of `data_spec` (resumable). The dataset is built with train=False
    (no augmentation), so a spec without a split means its val split: pass
    `split_spec(spec, "train")` to cache training latents."""
    from tcae.diffusion import cache_latents

    model = TCAE.from_pretrained(str(model_dir)).eval()
    ds = build_dataset(data_spec, image_size, train=False, channels=model.config.in_channels)
    cache_latents(model, ds, out_dir, batch_size=256, data_spec=data_spec, progress=False,
                  device=resolve_device(device))
    return out_dir


def dit_stage(run_dir: Path, latents: Path, overrides: list[str], config: str = "dit-tiny") -> Path:
    from tcae.training.dit import DIT_ALIASES, DiTTrainConfig, train_dit

    cfg = load_config(DiTTrainConfig, config, [f"run_dir={run_dir}", f"latents={latents}", *overrides],
                      DIT_ALIASES)
    model_dir = Path(cfg.run_dir) / cfg.name / "model"
    if not (model_dir / "model.safetensors").is_file():
        train_dit(cfg)
    return model_dir


def sample_stage(dit_dir: Path, tokenizer_dir: Path, classes: list[int], per_class: int, cfg_scale: float,
                 steps: int, seed: int = 0, device: str | torch.device | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional samples as uint8 (N, H, W, 3) and their labels (N,), class-major."""
    from tcae.diffusion import DiT, to_uint8
    from tcae.diffusion.generate import class_labels, generate_images, load_latent_stats

    device = resolve_device(device)
    dit = DiT.from_pretrained(str(dit_dir)).to(device).eval()
    tok = TCAE.from_pretrained(str(tokenizer_dir)).to(device).eval()
    mean, std, _ = load_latent_stats(dit_dir, tok)
    labels = class_labels(per_class, dit.config.num_classes, classes)
    chunks = []
    with torch.no_grad():
        for _, images in generate_images(dit, tok, labels, mean, std, steps=steps, cfg_scale=cfg_scale,
                                         seed=seed):
            chunks.append(to_uint8(images))
    return torch.cat(chunks).numpy(), labels.numpy()


# ---------------------------------------------------------------------------- digits judge
@dataclass
class DigitsJudge:
    """An MLP classifier on scikit-learn's 8x8 digits (0..16) that judges generated digit images."""

    clf: object
    val_accuracy: float
    real_features: np.ndarray

    @staticmethod
    def to_digits_space(images_uint8: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 64) in the digits' 0..16 scale (gray, area-downsampled to 8x8)."""
        x = torch.from_numpy(images_uint8).float().mean(-1)[:, None] / 255.0
        x = F.adaptive_avg_pool2d(x, 8)
        return (x.flatten(1) * 16).numpy()

    @classmethod
    def fit(cls, seed: int = 0) -> DigitsJudge:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier

        d = load_digits()
        xtr, xva, ytr, yva = train_test_split(d.data, d.target, test_size=0.2, random_state=seed,
                                              stratify=d.target)
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=seed).fit(xtr, ytr)
        judge = cls(clf, float(clf.score(xva, yva)), np.empty(0))
        judge.real_features = judge.features(xva)
        return judge

    def features(self, x64: np.ndarray) -> np.ndarray:
        return np.maximum(x64 @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0.0)

    def judge(self, images_uint8: np.ndarray, labels: np.ndarray) -> dict:
        from tcae.evaluation import frechet_distance

        x = self.to_digits_space(images_uint8)
        pred = self.clf.predict(x)
        per_class = {int(c): int(((pred == c) & (labels == c)).sum()) for c in np.unique(labels)}
        f = self.features(x)
        fd = frechet_distance(f.mean(0), np.cov(f, rowvar=False),
                              self.real_features.mean(0), np.cov(self.real_features, rowvar=False))
        return {"recognised_per_class": per_class, "per_class_total": int(len(labels) // len(per_class)),
                "recognised_share": float((pred == labels).mean()), "fd_digits": float(fd),
                "judge_val_accuracy": self.val_accuracy}


def tokenizer_cost(model_dir: Path, image_size: int) -> dict:
    model = TCAE.from_pretrained(str(model_dir))
    return flops(model, image_size).as_dict()


class Timer:
    """Wall-clock seconds of named stages."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = round(time.perf_counter() - self.t, 1)

        return _Ctx()


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    tmp.replace(path)
