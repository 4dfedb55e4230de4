"""`tcae train-dit`: a flow-matching diffusion transformer on cached, normalised latents.

Same loop as the tokenizer (atomic checkpoints, exact resume, DDP, bf16, TensorBoard, progress bar).
The latent statistics the DiT was trained with are saved beside it (`model/latent_stats.json`), so
sampling never guesses the latent scale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel as DDP

from tcae.config import (
    FIELD_RULES,
    NON_NEGATIVE,
    POSITIVE,
    LoopConfig,
    OptimConfig,
    _optional_fields,
    model_overrides,
    one_of,
)
from tcae.data import build_loader
from tcae.diffusion import DiTConfig, LatentDataset, create_dit, flow_matching_loss
from tcae.training.ema import EMA
from tcae.training.loop import TrainLoop
from tcae.training.optim import param_groups

DiTModelSection = _optional_fields(DiTConfig, "DiTModelSection", [("name", str, field(default="dit-tiny"))])


@dataclass
class LatentDataConfig:
    latents: str = "latents"  # a directory written by `tcae cache-latents`
    batch_size: int = 64  # global
    num_workers: int = 0


@dataclass
class DiTTrainConfig(LoopConfig):
    name: str = "dit"
    model: DiTModelSection = field(default_factory=DiTModelSection)  # type: ignore[valid-type]
    data: LatentDataConfig = field(default_factory=LatentDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.0, warmup_steps=0,
                                                                   min_lr_ratio=1.0, betas=(0.9, 0.95)))
    timesteps: str = "logit_normal"  # or "uniform"
    ema_decay: float = 0.9999


FIELD_RULES[LatentDataConfig] = {"batch_size": POSITIVE, "num_workers": NON_NEGATIVE}
FIELD_RULES[DiTTrainConfig] = {"timesteps": one_of("logit_normal", "uniform")}

DIT_ALIASES = {"latents": "data.latents", "model": "model.name", "batch_size": "data.batch_size", "lr": "optim.lr"}


class DiTTrainer(TrainLoop):
    def build(self) -> None:
        cfg = self.cfg
        self.dataset = LatentDataset(cfg.data.latents)
        c, h, w = self.dataset.latent_shape
        overrides = model_overrides(cfg.model)
        overrides.setdefault("input_size", h)
        overrides.setdefault("in_channels", c)
        overrides.setdefault("num_classes", max(self.dataset.num_classes, 1))
        self.model = create_dit(cfg.model.name, **overrides).to(self.device)
        if (c, h) != (self.model.config.in_channels, self.model.config.input_size):
            raise ValueError(f"latents are {c}x{h}x{w} but the DiT expects {self.model.config.in_channels} "
                             f"channels on a {self.model.config.input_size} grid")
        self.ema = EMA(self.model).to(self.device)
        self.train_module = DDP(self.model) if self.dist.enabled else self.model
        if cfg.compile:
            self.train_module = torch.compile(self.train_module)
        self.add_optimizer("model", torch.optim.AdamW(
            param_groups(self.model, cfg.optim.weight_decay, cfg.optim.lr), betas=tuple(cfg.optim.betas)))
        if cfg.data.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size={cfg.data.batch_size} is not divisible by {self.dist.world_size} ranks")
        self.loader = build_loader(self.dataset, cfg.data.batch_size // self.dist.world_size, train=True,
                                   num_workers=cfg.data.num_workers, seed=cfg.seed)

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        x0, y = batch[0].to(self.device), batch[1].to(self.device)
        with self.autocast():
            # label dropout drawn from the per-step generator (not the global RNG): exact resume under DDP
            loss = flow_matching_loss(self.train_module, x0, y, timestep_kind=self.cfg.timesteps,
                                      generator=self.step_generator(),
                                      class_dropout=self.model.config.class_dropout)
        loss = loss.float()
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        terms = {"loss": loss}
        if self.cfg.optim.grad_clip > 0:
            terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        if torch.isfinite(loss):
            opt.step()
        self.ema.update(self.model, self.cfg.ema_decay)
        return terms

    def model_signature(self) -> dict:
        return {"dit": self.model.config.to_dict()}

    def state_extra(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict()}

    def load_extra(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])

    def export(self) -> None:
        out = self.run_dir / "model"
        self.ema.module.save_pretrained(str(out))
        stats = self.dataset.stats
        (out / "latent_stats.json").write_text(json.dumps(
            {"mean": [float(v) for v in stats["mean"]], "std": [float(v) for v in stats["std"]],
             "latents": str(self.cfg.data.latents)}, indent=2))


def train_dit(cfg: DictConfig):
    return DiTTrainer(cfg).fit()
