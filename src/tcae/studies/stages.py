"""The whole tokenizer -> latent diffusion pipeline as plain functions, shared by `tcae demo` and
`tcae repro`: train a tokenizer, evaluate and diagnose it, cache its latents, train a DiT, sample,
and judge the samples.

On offline machines the Inception network behind FID/IS is usually missing; labelled built-in data
then gets an honest substitute that is never called FID: a judge (`tcae.evaluation.judges`: an MLP on
scikit-learn's digits, a small CNN on Fashion-MNIST) gives the class agreement of class-conditional
samples and a Fréchet distance in its penultimate features ("FD-digits", "FD-fashion").
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from tcae.config import TRAIN_ALIASES, TrainConfig, load_config
from tcae.data import build_dataset
from tcae.data.spec import split_spec  # noqa: F401  (part of this module's API)
from tcae.device import resolve_device
from tcae.evaluation.features import FeatureNetwork
from tcae.models import flops
from tcae.tokenizers import load_tokenizer
from tcae.util import atomic_path, to_uint8_hwc

log = logging.getLogger("tcae.studies")


def train_tokenizer_stage(run_dir: Path, config: str, overrides: list[str]) -> Path:
    """Phase-1 training into run_dir/<name>; returns the model directory. Skipped when it exists."""
    from tcae.training.tokenizer import train_tokenizer

    cfg = load_config(TrainConfig, config, [f"run_dir={run_dir}", *overrides], TRAIN_ALIASES)
    model_dir = Path(cfg.run_dir) / cfg.name / "model"
    if not (model_dir / "model.safetensors").is_file():
        train_tokenizer(cfg)
    return model_dir


def evaluate_stage(model_dir: Path | str, val_spec: str, image_size: int, out_dir: Path,
                   train_spec: str | None = None, diag_spec: str | None = None, progress: bool = True) -> dict:
    """PSNR/SSIM (+ rFID/LPIPS only when their weights are present) on `val_spec`, a reconstruction
    grid, and the latent diagnostics on `train_spec` (its linear probe scored on the val split), whose
    latent statistics are written into the model; with `diag_spec` the diagnostics run on that spec
    instead (e.g. a test split, where the probe is scored) and nothing is written into the model.
    `model_dir`: any tokenizer spec (:func:`tcae.tokenizers.load_tokenizer`); writing statistics needs a
    tcae model."""
    from tcae.evaluation import diagnose, evaluate, weights_available

    model = load_tokenizer(str(model_dir))
    metrics = ["psnr", "ssim"] + [m for m in ("lpips", "rfid") if weights_available(m)]
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = evaluate(model, val_spec, image_size=image_size, metrics=tuple(metrics),
                   grid_path=str(out_dir / "reconstructions.png"), progress=progress)
    diag = diagnose(model, diag_spec or train_spec or val_spec, image_size=image_size,
                    write_stats_to=None if diag_spec else str(model_dir), progress=progress)
    return {"reconstruction": rec, "diagnostics": diag}


def latents_stage(model_dir: Path | str, data_spec: str, image_size: int, out_dir: Path,
                  device: str | torch.device | None = None) -> Path:
    """Cache normalisable latents of `data_spec` (resumable). The dataset is built with train=False
    (no augmentation), so a spec without a split means its val split: pass
    `split_spec(spec, "train")` to cache training latents."""
    from tcae.diffusion import cache_latents
    from tcae.diffusion.latents import tokenizer_source

    model = load_tokenizer(str(model_dir))
    ds = build_dataset(data_spec, image_size, train=False, channels=model.config.in_channels)
    cache_latents(model, ds, out_dir, batch_size=256, data_spec=data_spec, progress=False,
                  device=resolve_device(device), tokenizer_path=tokenizer_source(str(model_dir)))
    return out_dir


def dit_stage(run_dir: Path, latents: Path, overrides: list[str], config: str = "dit-tiny") -> Path:
    from tcae.config import DIT_ALIASES, DiTTrainConfig
    from tcae.training.dit import train_dit

    cfg = load_config(DiTTrainConfig, config, [f"run_dir={run_dir}", f"latents={latents}", *overrides],
                      DIT_ALIASES)
    model_dir = Path(cfg.run_dir) / cfg.name / "model"
    if not (model_dir / "model.safetensors").is_file():
        train_dit(cfg)
    return model_dir


def fit_batch(latents: Path, config: str, overrides: list[str]) -> list[str]:
    """`data.batch_size=N` when the cache holds fewer latents than the DiT config's batch (a small folder): the
    largest power of two that fits, so the DiT trains instead of refusing a run with no full batch; else []."""
    from tcae.config import DIT_ALIASES, DiTTrainConfig
    from tcae.diffusion.latents import read_latent_meta

    n = int(read_latent_meta(latents)["num_latents"])
    return batch_fitting(n, load_config(DiTTrainConfig, config, overrides, DIT_ALIASES).data.batch_size)


def batch_fitting(n: int, batch: int) -> list[str]:
    """`data.batch_size=N`, the largest power of two <= n, when `n` examples make no full batch of `batch`
    (a run with no full batch is refused); else []."""
    return [] if n >= batch else [f"data.batch_size={2 ** (n.bit_length() - 1)}"]


def sample_stage(dit_dir: Path, tokenizer_dir: Path | str, classes: list[int], per_class: int, cfg_scale: float,
                 steps: int, seed: int = 0, device: str | torch.device | None = None, dit=None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional samples as uint8 (N, H, W, 3) and their labels (N,), class-major.

    `dit`: a DiT to sample with instead of the one in `dit_dir` (e.g. an earlier EMA snapshot,
    :func:`dit_from_snapshot`); the latent statistics still come from `dit_dir`."""
    from tcae.diffusion import DiT
    from tcae.diffusion.generate import class_labels, generate_images, load_latent_stats

    device = resolve_device(device)
    dit = (dit if dit is not None else DiT.from_pretrained(str(dit_dir))).to(device).eval()
    tok = load_tokenizer(str(tokenizer_dir)).to(device).eval()
    mean, std, _ = load_latent_stats(dit, tok)
    labels = class_labels(per_class, dit.config.num_classes, classes)
    chunks = []
    with torch.no_grad():
        for _, images in generate_images(dit, tok, labels, mean, std, steps=steps, cfg_scale=cfg_scale,
                                         seed=seed):
            chunks.append(to_uint8_hwc(images))
    return torch.cat(chunks).numpy(), labels.numpy()


def reconstruct_split(tokenizer_dir: Path | str, data_spec: str, image_size: int, batch_size: int = 250,
                      device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reconstructions of every image of `data_spec` (in order) as uint8 (N, H, W, 3), quantised like
    samples (:func:`tcae.util.to_uint8_hwc`), and the images' labels (N,)."""
    from tcae.data import eval_loader

    device = resolve_device(device)
    tok = load_tokenizer(str(tokenizer_dir)).to(device).eval()
    ds = build_dataset(data_spec, image_size, train=False, channels=tok.config.in_channels)
    images, labels = [], []
    with torch.no_grad():
        for batch in eval_loader(ds, batch_size, device=device):
            x = batch["image"].to(device)
            rec = tok.decode(tok.encode(x))
            images.append(to_uint8_hwc(rec.expand(-1, 3, -1, -1) if rec.shape[1] == 1 else rec))
            labels.append(batch["label"])
    return torch.cat(images).numpy(), torch.cat(labels).numpy()


# ---------------------------------------------------------------------------- judging samples
def judge_samples(images: np.ndarray, labels: np.ndarray, judge: FeatureNetwork, reference_spec: str,
                  image_size: int, reference_cache: dict | None = None, allow_unbalanced: bool = False) -> dict:
    """A judge's verdict on class-conditional samples, through `tcae eval-gen`'s code path.

    images: uint8 (N, H, W, 3); labels (N,); judge: a :class:`tcae.evaluation.Judge`;
    reference_spec: the real data the Fréchet distance compares against (e.g. the test split).
    Returns {"fd_judge": FD-<data> in the judge's penultimate features (not FID), "fd_name",
    "class_agreement": share of samples the judge assigns to their label, "class_agreement_per_class"
    and "per_class_total" (counts per class), "judge": the judge's provenance and accuracy,
    "num_samples", "reference", "feature_trace": tr Σ of the images' judge features}. `allow_unbalanced`: images
    that are not class-balanced samples (e.g.
    the reconstructions of a real split, whose classes are as the split has them).
    """
    from tcae.evaluation.gen_eval import evaluate_samples

    res = evaluate_samples(images, reference_spec, image_size=image_size, feature_network=judge, labels=labels,
                           progress=False, reference_cache=reference_cache, allow_unbalanced=allow_unbalanced)
    key = judge.metric_key("g")
    return {"fd_judge": res["metrics"][key], "fd_name": f"FD-{judge.data}",
            "class_agreement": res["metrics"]["class_agreement"],
            "class_agreement_per_class": res["class_agreement_per_class"], "per_class_total": res["per_class_total"],
            "judge": res["judge"], "num_samples": res["num_samples"], "reference": res["reference"],
            "feature_trace": res["feature_trace"]}


def dit_snapshots(dit_run: Path, every: int, extra: tuple[int, ...] | list[int] = ()) -> list[Path]:
    """EMA snapshots of a finished `tcae train-dit` run at every `every` steps (and the `extra` steps) before its last:
    `dit_run/ema/step-N.safetensors` (the EMA DiT the run would have exported at step N, its config
    in the metadata). Made once from the training checkpoints, which are then deleted (all but the
    newest, which resuming needs): a snapshot is a quarter of a checkpoint (no model, no optimizer)."""
    from safetensors.torch import save_file

    from tcae.training.checkpoint import list_checkpoints, load_checkpoint

    snap_dir = Path(dit_run) / "ema"
    snap_dir.mkdir(parents=True, exist_ok=True)
    ckpts = list_checkpoints(Path(dit_run) / "checkpoints")
    for ckpt in ckpts[:-1]:
        step = int(ckpt.stem.split("-")[1])
        target = snap_dir / f"step-{step:08d}.safetensors"
        if (step % every == 0 or step in extra) and not target.is_file():
            state = load_checkpoint(ckpt)
            try:
                config = state["signature"]["dit"]
                ema = {k.removeprefix("module."): v.contiguous() for k, v in state["ema"].items()
                       if k.startswith("module.")}
            except (KeyError, TypeError) as err:
                raise ValueError(f"{ckpt} is not a DiT training checkpoint (no {err})") from None
            with atomic_path(target) as tmp:
                save_file(ema, str(tmp), metadata={"config": json.dumps(config), "step": str(step)})
        ckpt.unlink()
    return sorted(snap_dir.glob("step-*.safetensors"))


def dit_from_snapshot(path: Path):
    """The EMA DiT of a :func:`dit_snapshots` file, in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from tcae.diffusion import DiT
    from tcae.diffusion.dit import DiTConfig

    with safe_open(str(path), "pt") as f:
        config = json.loads((f.metadata() or {})["config"])
    dit = DiT(DiTConfig(**config))
    dit.load_state_dict(load_file(str(path)))
    return dit.eval()


def tokenizer_cost(model_dir: Path | str, image_size: int) -> dict:
    """Encode/decode FLOPs of one image (any tokenizer spec)."""
    return flops(load_tokenizer(str(model_dir)), image_size).as_dict()


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


