"""The training loop every `tcae` trainer shares: run directory, seeding, bf16 autocast, DDP, exact resume
from atomic checkpoints, a non-finite-loss stop, TensorBoard scalars and a progress bar.

A trainer subclasses `TrainLoop` and fills in `build`, `train_step`, `state_extra` / `load_extra`, and
`export` (what goes in `runs/NAME/model/`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from tcae.config import save_config
from tcae.data import set_loader_epoch
from tcae.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tcae.training.distributed import all_reduce_mean, any_rank, barrier, init_distributed
from tcae.training.schedule import warmup_cosine

log = logging.getLogger("tcae.train")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; the run stops and the last good checkpoint is left as it was."""


class TrainLoop:
    """Shared loop. Subclasses set `self.optimizers` (name -> optimizer, each stepped with the same
    warm-up + cosine schedule), `self.loader`, and the modules they checkpoint."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.dist = init_distributed(cfg.device)
        self.device = self.dist.device
        self.run_dir = Path(cfg.run_dir) / cfg.name
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.step = 0
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.base_lrs: dict[str, list[float]] = {}
        self._seed_everything(cfg.seed + self.dist.rank)
        self.amp_dtype = self._amp_dtype(cfg.precision)
        self.writer: SummaryWriter | None = None
        self.build()

    # ------------------------------------------------------------------ hooks for subclasses
    def build(self) -> None:
        raise NotImplementedError

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the loss terms (tensors) to log. 'loss' is the total."""
        raise NotImplementedError

    def state_extra(self) -> dict:
        return {}

    def load_extra(self, state: dict) -> None:
        pass

    def export(self) -> None:
        """Write the deliverable model (rank 0 only)."""

    def on_log_images(self) -> None:
        """Write image grids to TensorBoard (rank 0 only)."""

    def model_signature(self) -> dict:
        """What must match for a checkpoint to be resumable into this run (e.g. the model config)."""
        return {}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _amp_dtype(self, precision: str) -> torch.dtype | None:
        if precision == "auto":
            return torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else None
        if precision == "bf16":
            return torch.bfloat16
        if precision == "fp32":
            return None
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")

    def autocast(self):
        """bf16 autocast when enabled (weights and optimizer stay fp32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def step_generator(self, salt: int = 0) -> torch.Generator:
        """A generator seeded by (seed, rank, step): per-step randomness that resume reproduces exactly."""
        g = torch.Generator(device=self.device)
        g.manual_seed(hash((self.cfg.seed, self.dist.rank, self.step, salt)) % 2**62)
        return g

    def add_optimizer(self, name: str, opt: torch.optim.Optimizer) -> None:
        self.optimizers[name] = opt
        self.base_lrs[name] = [g["lr"] for g in opt.param_groups]

    def set_lr(self) -> float:
        o = self.cfg.optim
        mult = warmup_cosine(self.step, self.cfg.steps, o.warmup_steps, o.min_lr_ratio)
        for name, opt in self.optimizers.items():
            for g, base in zip(opt.param_groups, self.base_lrs[name]):
                g["lr"] = base * mult
        return mult

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "signature": self.model_signature(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "config": OmegaConf.to_container(self.cfg),
            **self.state_extra(),
        }

    def save(self) -> Path | None:
        path = None
        if self.is_main:
            path = save_checkpoint(self.state_dict(), self.ckpt_dir, self.step, self.cfg.keep_last)
        barrier()
        return path

    def resume(self) -> None:
        mode = str(self.cfg.resume)
        if mode == "never":
            return
        path = latest_checkpoint(self.ckpt_dir) if mode == "auto" else Path(mode)
        if path is None:
            return
        if not path.is_file():
            raise FileNotFoundError(f"resume={mode}: checkpoint {path} not found")
        state = load_checkpoint(path)
        if state.get("signature") != self.model_signature():
            raise ValueError(
                f"checkpoint {path} was written by a different model config and cannot be resumed:\n"
                f"  checkpoint: {state.get('signature')}\n  this run:   {self.model_signature()}\n"
                "(use a new name=, or resume=never to start over in a fresh run directory)"
            )
        self.load_extra(state)
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step = int(state["step"])
        if self.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------ the loop
    def batches(self):
        """Endless batches in a data order fixed by (seed, epoch); resumes mid-epoch at self.step."""
        per_epoch = len(self.loader)
        if per_epoch == 0:
            raise ValueError("the training data yields no full batch: lower batch_size or add data")
        epoch, offset = divmod(self.step, per_epoch)
        while True:
            skip = set_loader_epoch(self.loader, epoch, offset)  # streams cannot seek: skip by hand
            for i, batch in enumerate(self.loader):
                if i >= skip:
                    yield batch
            epoch, offset = epoch + 1, 0

    def fit(self) -> Path:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        if self.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
            self.writer = SummaryWriter(str(self.run_dir / "tb"))
        start = self.step
        bar = tqdm(total=cfg.steps, initial=start, disable=not (self.is_main and cfg.progress),
                   dynamic_ncols=True, desc=cfg.name)
        t0, seen = time.perf_counter(), 0
        data = self.batches()
        while self.step < cfg.steps:
            batch = next(data)
            lr_mult = self.set_lr()
            terms = self.train_step(batch)
            loss = float(terms["loss"].detach())
            if any_rank(not math.isfinite(loss), self.device):
                last = latest_checkpoint(self.ckpt_dir)
                raise NonFiniteLossError(
                    f"non-finite loss at step {self.step}: "
                    + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                    + f". Stopped; the last good checkpoint is {last or 'none (no checkpoint yet)'}. "
                    "Try a lower lr, grad clipping or precision=fp32."
                )
            self.step += 1
            seen += self.images_per_step
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                # every rank joins the reduction; the logged loss is the global-batch mean
                scalars = {k: float(all_reduce_mean(torch.as_tensor(v, device=self.device).detach().float()))
                           for k, v in terms.items()}
            if self.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                for k, v in scalars.items():
                    self.writer.add_scalar(f"train/{k}", v, self.step)
                self.writer.add_scalar("train/lr_mult", lr_mult, self.step)
                self.writer.add_scalar("train/images_per_s", rate, self.step)
                with open(self.run_dir / "scalars.jsonl", "a") as f:  # for plots without TensorBoard
                    f.write(json.dumps({"step": self.step, "lr_mult": lr_mult, "images_per_s": rate,
                                        **scalars}) + "\n")
                bar.set_postfix({**{k: f"{v:.4f}" for k, v in scalars.items()}, "img/s": f"{rate:.1f}"})
            if self.is_main and cfg.image_every and self.step % cfg.image_every == 0:
                self.on_log_images()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
            bar.update(1)
        bar.close()
        if self.is_main:
            self.on_log_images()
            self.export()
            self.writer.close()
        barrier()
        return self.run_dir

    @property
    def images_per_step(self) -> int:
        """Images per optimisation step over all ranks (for the images/s figure)."""
        return self.cfg.data.batch_size
