"""`tcae train-dit`: a flow-matching diffusion transformer on cached, normalised latents.

Same loop as the tokenizer (atomic checkpoints, exact resume, DDP, bf16, TensorBoard, progress bar).
The latent statistics the DiT was trained with (the cache's `normalization`, i.e. the tokenizer's) are
buffers of the DiT, saved in its weights, so sampling never guesses the latent scale.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from tcae.config import model_overrides
from tcae.data import build_loader
from tcae.diffusion import LatentDataset, create_dit, flow_matching_loss
from tcae.training.ema import EMA, ema_decay_at
from tcae.training.loop import TrainLoop


class DiTTrainer(TrainLoop):
    data_noun = "latents"

    def build(self) -> None:
        cfg = self.cfg
        self.dataset = LatentDataset(cfg.data.latents)
        c, h, w = self.dataset.latent_shape
        overrides = model_overrides(cfg.model)
        overrides.setdefault("input_size", h)
        overrides.setdefault("in_channels", c)
        overrides.setdefault("num_classes", max(self.dataset.num_classes, 1))
        if len(self.dataset.class_names) == overrides["num_classes"]:  # names travel: `tcae sample --classes NAME`
            overrides.setdefault("class_names", self.dataset.class_names)
        self.model = create_dit(cfg.model.name, **overrides).to(self.device)
        if (c, h) != (self.model.config.in_channels, self.model.config.input_size):
            raise ValueError(f"latents are {c}x{h}x{w} but the DiT expects {self.model.config.in_channels} "
                             f"channels on a {self.model.config.input_size} grid")
        self.model.set_latent_stats(self.dataset.stats["mean"], self.dataset.stats["std"])  # copied by the EMA
        self.ema = EMA(self.model).to(self.device)
        self.train_module = self.wrap(self.model)
        self.add_optimizer("model", self.model, cfg.optim.lr, cfg.optim.weight_decay)
        self.loader = build_loader(self.dataset, self.micro_batch_size, train=True,
                                   num_workers=cfg.data.num_workers, seed=cfg.seed)
        self._micro = 0

    def summary(self) -> str:
        c = self.model.config
        params = sum(p.numel() for p in self.model.parameters()) / 1e6
        return (f"DiT {c.hidden_size}x{c.depth} ({params:.1f}M params) on latents {self.cfg.data.latents} "
                f"{tuple(self.dataset.latent_shape)}, batch {self.cfg.data.batch_size}, {self.cfg.steps} steps")

    def forward_backward(self, batch, loss_scale: float) -> dict[str, torch.Tensor]:
        x0, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
        # noise, t and label dropout from the per-step generator (not the global RNG): exact resume under
        # DDP; the micro-batch index keeps accumulated micro-batches' draws apart
        salt = self._micro = (self._micro + 1) % self.grad_accum
        with self.autocast():
            loss = flow_matching_loss(self.train_module, x0, y, timestep_kind=self.cfg.timesteps,
                                      generator=self.step_generator(salt),
                                      class_dropout=self.model.config.class_dropout)
        loss = loss.float()
        self.backward(loss * loss_scale)
        return {"loss": loss}

    def after_step(self, ok: torch.Tensor) -> None:
        self.ema.update(self.model, ema_decay_at(self.step, self.cfg.ema_decay, self.cfg.ema_warmup), ok)

    def model_signature(self) -> dict:
        # what shapes the weights: class names are labels only (and checkpoints from before they existed resume)
        config = self.model.config.to_dict()
        config.pop("class_names", None)
        return {"dit": config}

    def state_extra(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict()}

    def load_extra(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])

    def export(self) -> None:
        """runs/NAME/model/: the EMA DiT, its latent statistics inside its weights; the model card names the
        latent cache (and the images it encodes), the steps, the tokenizer and the class names."""
        meta = self.dataset.meta
        data = f"latent cache {self.cfg.data.latents}" + (f" of {meta['data']}" if meta.get("data") else "")
        info = {"name": self.cfg.name, "training_data": data, "steps": self.step, "tokenizer": _tokenizer_name(meta)}
        if meta.get("class_names"):
            info["class_names"] = [str(n) for n in meta["class_names"]]
        self.ema.module.save_pretrained(str(self.run_dir / "model"), card_info=info)


def _tokenizer_name(meta: dict) -> str:
    """The tokenizer a latent cache was encoded with: its path where the cache records one, else its shape
    and the fingerprint of its encoder weights."""
    for key in ("tokenizer_path", "model"):
        if isinstance(meta.get(key), str):
            return meta[key]
    tok = meta.get("tokenizer") or {}
    kind = f"TC-AE f={tok['compression']}" if "compression" in tok else "a tokenizer"
    shape = "x".join(str(v) for v in meta.get("latent_shape", []))
    fingerprint = str(meta.get("tokenizer_fingerprint", ""))[:12]
    return f"{kind}, latents {shape}" + (f", encoder sha256 {fingerprint}" if fingerprint else "")


def train_dit(cfg: DictConfig):
    return DiTTrainer(cfg).fit()
