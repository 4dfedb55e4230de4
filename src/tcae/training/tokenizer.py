"""Tokenizer training, both phases of PAPER.md.

Phase `joint` (`tcae train`): L = alpha * L_rec + L_iBOT, with L_rec = L1 + lambda_p LPIPS + lambda_g GAN.
    The student encoder sees 2 global crops (crop 0 unmasked: it is also the reconstruction input; the
    other global crops block-masked) and the local crops; an EMA teacher sees the unmasked global crops.
Phase `decoder` (`tcae finetune-decoder`): encoder frozen, decoder (and discriminator) trained, no iBOT.

The trainer takes any autoencoder through :class:`tcae.tokenizers.TrainableAutoencoder`: a TC-AE
(`model.name=tcae-...`) or a diffusers DC-AE (`model.name=dc-ae-...`, a conv autoencoder: no iBOT).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torchvision.utils import make_grid

from tcae.config import DEFAULT_MODEL, ConfigError, model_overrides, ssl_refusal
from tcae.data import (
    MaskedTokens,
    MultiCropCollate,
    MultiCropTransform,
    build_dataset,
    build_loader,
    eval_loader,
    local_crop_size,
)
from tcae.data.spec import split_spec, with_split
from tcae.losses import (
    IBOTHead,
    IBOTLoss,
    LeCam,
    PatchDiscriminator,
    adaptive_gan_loss,
    build_perceptual,
    hinge_d_loss,
    hinge_g_loss,
    l1_loss,
    teacher_temperature,
)
from tcae.models import TCAE, EncoderTokens, create_model
from tcae.models.dcae import is_dcae_name
from tcae.tokenizers import TrainableAutoencoder, create_dcae, diffusers_folder, load_diffusers_tokenizer
from tcae.training.ema import EMA, cosine_momentum, ema_decay_at
from tcae.training.loop import TrainLoop

log = logging.getLogger("tcae.train")


def iter_samples(dataset) -> Iterator[dict]:
    """The samples of a map-style dataset in index order, or of an iterable one in its order."""
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        return (dataset[i] for i in range(len(dataset)))
    return iter(dataset)


def ssl_heads(cls_head: nn.Module, patch_head: nn.Module, enc: EncoderTokens,
              masked: MaskedTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] head on every view's class token (V*B, K); patch head on the masked tokens only (M, K_p),
    gathered by host-computed indices (no device sync), the only ones the loss reads."""
    return cls_head(enc.cls), patch_head(masked.gather(enc.tokens))


class TokenizerStudent(nn.Module):
    """The trained network in one module (so DDP sees one forward): autoencoder + iBOT heads.

    forward(images (B,3,H,W) in [-1,1], global_crops (Vg*B,3,H,W) | None, masks (Vg*B,y,x) | None,
            masked MaskedTokens | None, local_crops (Vl*B,3,h,w) | None) -> dict with the reconstruction
    `rec` (B,3,H,W), the latent `z` and, with SSL, the head outputs `cls` (Vs*B, out_dim) and `patch`
    (M, patch_out_dim) on the M masked tokens.
    """

    def __init__(self, model: TrainableAutoencoder, cls_head: nn.Module | None, patch_head: nn.Module | None,
                 freeze_encoder: bool = False) -> None:
        super().__init__()
        self.model, self.cls_head, self.patch_head = model, cls_head, patch_head
        self.freeze_encoder = freeze_encoder

    def forward(self, images, global_crops=None, masks=None, masked=None, local_crops=None) -> dict[str, torch.Tensor]:
        m = self.model
        if global_crops is None:
            if self.freeze_encoder:
                with torch.no_grad():
                    z = m.encode(images)
            else:
                z = m.encode(images)
            return {"rec": m.decode(z), "z": z}
        b = images.shape[0]
        g = m.encode_tokens(global_crops, masks)
        z = m.tokens_to_latent(EncoderTokens(g.cls[:b], g.tokens[:b], g.grid))
        out = {"rec": m.decode(z), "z": z}
        cls, patch = ssl_heads(self.cls_head, self.patch_head, g, masked)
        if local_crops is not None:
            cls = torch.cat([cls, self.cls_head(m.encode_tokens(local_crops).cls)], dim=0)
        out.update(cls=cls, patch=patch)
        return out


class TokenizerTrainer(TrainLoop):
    """`tcae train` / `tcae finetune-decoder`."""

    def summary(self) -> str:
        return (f"{self.cfg.phase} phase: {self.model.describe()}, ssl={'on' if self.ssl else 'off'}, "
                f"data {self.cfg.data.spec} at {self.cfg.data.image_size} px, batch {self.cfg.data.batch_size}, "
                f"{self.cfg.steps} steps")

    def _build_model(self) -> TrainableAutoencoder:
        """Phase 1: a preset with model.* overrides (`tcae-...`: a TC-AE, `dc-ae-...`: a DC-AE), or (init=) a
        warm start from a run or model directory. Phase 2: the phase-1 model (init= is required). A model.*
        setting that contradicts init= is an error."""
        cfg = self.cfg
        overrides = model_overrides(cfg.model)
        if not cfg.init:
            if self.decoder_phase:
                raise ValueError("finetune-decoder needs init=RUN_OR_MODEL_DIR (the phase-1 run or model)")
            overrides.setdefault("image_size", cfg.data.image_size)
            if is_dcae_name(cfg.model.name):
                return create_dcae(cfg.model.name, **overrides)
            return create_model(cfg.model.name or DEFAULT_MODEL, **overrides)
        folder = diffusers_folder(cfg.init)
        try:  # a run directory (its model/) or a model directory: a TC-AE's, or a diffusers DC-AE folder
            model = load_diffusers_tokenizer(folder) if folder else TCAE.from_pretrained(cfg.init)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"init={cfg.init}: {e}") from None
        loaded = model.config.to_dict()
        clash = [f"model.{k}={v} (the init model has {loaded[k]})" for k, v in overrides.items()
                 if k not in ("image_size", "grad_checkpointing") and loaded.get(k) != v]
        if clash:
            raise ConfigError(f"init={cfg.init} gives the model's architecture, so these settings cannot apply: "
                              f"{', '.join(clash)}. Remove them, or drop init= to build a new model.")
        if overrides.get("grad_checkpointing"):
            if not hasattr(model, "set_grad_checkpointing"):
                raise ConfigError(f"model.grad_checkpointing=true: the init model ({model.describe()}) does not "
                                  "support gradient checkpointing")
            model.set_grad_checkpointing(True)
        log.info("init=%s: %s from its weights%s", cfg.init, "decoder phase" if self.decoder_phase else "warm start",
                 f" (model.name={cfg.model.name} is not used: the architecture is the init model's)"
                 if cfg.model.name else "")
        return model

    def build(self) -> None:
        cfg = self.cfg
        if cfg.phase not in ("joint", "decoder"):
            raise ValueError(f"phase must be 'joint' or 'decoder', got {cfg.phase!r}")
        self.decoder_phase = cfg.phase == "decoder"
        self.ssl = bool(cfg.ssl.enabled) and not self.decoder_phase
        model = self._build_model()
        if self.ssl and not model.has_tokens:
            raise ConfigError(ssl_refusal(model.describe()))
        if cfg.data.image_size % model.config.compression:
            raise ValueError(f"data.image_size={cfg.data.image_size} is not divisible by the model's "
                             f"compression f={model.config.compression}")
        model.to(self.device).train()  # (a loaded model comes in eval mode; DC-AE's BatchNorm must train)
        if cfg.decoder_part == "head":
            if not self.decoder_phase:
                raise ConfigError("decoder_part=head is for phase 2 (tcae finetune-decoder); phase 1 trains the "
                                  "whole autoencoder")
            model.requires_grad_(False)
            model.decoder_head.requires_grad_(True)
        if self.decoder_phase:
            model.encoder.requires_grad_(False)
        elif not self.ssl and model.has_tokens:
            model.encoder.mask_token.requires_grad_(False)  # unused without masking; DDP needs every param used

        cls_head = patch_head = None
        if self.ssl:
            s = cfg.ssl
            d = model.config.coarse_width
            cls_head = IBOTHead(d, s.out_dim, s.head_hidden_dim, s.head_bottleneck_dim)
            patch_head = cls_head if s.shared_head else IBOTHead(d, s.patch_out_dim, s.head_hidden_dim,
                                                                 s.head_bottleneck_dim)
            self.ibot_loss = IBOTLoss(s.out_dim, patch_head.out_dim, student_temp=s.student_temp,
                                      centering=s.centering, cls_weight=s.cls_weight,
                                      patch_weight=s.patch_weight, num_global_crops=s.num_global).to(self.device)
            self.guarded_buffers += [self.ibot_loss.cls_center.center, self.ibot_loss.patch_center.center]
        self.student = TokenizerStudent(model, cls_head, patch_head, self.decoder_phase).to(self.device)
        self.model = model
        # DINOv2's pattern: the teacher is an EMA copy of the student's encoder and heads, name for name
        self.ssl_modules = self.teacher = None
        if self.ssl:
            heads = {"cls_head": cls_head} if patch_head is cls_head else {"cls_head": cls_head,
                                                                            "patch_head": patch_head}
            self.ssl_modules = nn.ModuleDict({"encoder": model.encoder, **heads})
            self.teacher = EMA(self.ssl_modules).to(self.device)
        self.ema = EMA(model).to(self.device)

        lc = cfg.loss
        self.perceptual = build_perceptual(lc.perceptual, backbone_weights=lc.lpips_weights)
        if self.perceptual is not None:
            self.perceptual.to(self.device).eval().requires_grad_(False)
        self.disc = self.lecam = None
        if lc.gan:
            self.disc = PatchDiscriminator(3, lc.disc_channels, lc.disc_layers).to(self.device)
            self.lecam = LeCam().to(self.device) if lc.lecam_weight > 0 else None
            if self.lecam is not None:
                self.guarded_buffers += list(self.lecam.buffers())
            self.disc_ddp = self.wrap(self.disc)
            self.add_optimizer("disc", self.disc, lc.disc_lr or cfg.optim.lr, cfg.optim.weight_decay)
        if lc.gan and lc.adaptive_gan_weight and self.scaler is not None:
            raise ValueError("precision=fp16 with the adaptive GAN weight is not supported: the weight's gradients "
                             "are taken outside the fp16 loss scaling and would underflow. Use precision=bf16, or "
                             "loss.adaptive_gan_weight=false")
        if cfg.compile and lc.gan and lc.adaptive_gan_weight:
            # the adaptive weight differentiates through the compiled graph before loss.backward() (retained
            # graph), which compiled backwards with donated buffers refuse
            import torch._functorch.config

            torch._functorch.config.donated_buffer = False
        self.train_module = self.wrap(self.student)
        self.add_optimizer("model", self.student, cfg.optim.lr, cfg.optim.weight_decay)
        self._build_data(model)

    def _build_data(self, model: TrainableAutoencoder) -> None:
        cfg, d = self.cfg, self.cfg.data
        per_rank = self.micro_batch_size
        collate, transform = None, None
        if self.ssl:
            s = cfg.ssl
            local = s.local_size or local_crop_size(d.image_size, model.config.token_stride)
            transform = MultiCropTransform(d.image_size, local, s.num_global, s.num_local,
                                           tuple(s.global_scale), tuple(s.local_scale), s.color_augment,
                                           s.recon_view)
            stride = model.config.token_stride
            collate = MultiCropCollate((d.image_size // stride, d.image_size // stride),
                                       tuple(s.mask_ratio), s.mask_sample_prob)
        channels = model.config.in_channels  # gray built-ins serve 1 channel to an in_channels=1 model
        ds = build_dataset(d.spec, d.image_size, train=True, transform=transform, seed=cfg.seed,
                           epoch_size=d.epoch_size, channels=channels)
        self.loader = build_loader(ds, per_rank, train=True, num_workers=d.num_workers,
                                   collate_fn=collate, seed=cfg.seed)
        self.val_tag, self.val_images = self._grid_images(channels)

    def _grid_images(self, channels: int, n: int = 8) -> tuple[str, torch.Tensor | None]:
        """(TensorBoard tag prefix, (n, C, H, W) in [-1, 1]) of the fixed images the reconstruction grids show:
        the first n of data.val_spec, else of the training data's val split where it has one (built-ins, a
        folder with train/ and val/), else of the training data itself ("train_fixed": a fixed handful of
        training images, evaluation crops, the same at every step)."""
        d = self.cfg.data
        val_spec, tag = d.val_spec, "val"
        if not val_spec:
            val_spec = with_split(d.spec, "val")
            if val_spec == with_split(d.spec, "train"):  # no val split: the training data's own first images
                tag = "train_fixed"
        ds = build_dataset(val_spec, d.image_size, train=False, channels=channels)
        images = [sample["image"] for sample in itertools.islice(iter_samples(ds), n)]
        return tag, (torch.stack(images).to(self.device) if images else None)

    # ------------------------------------------------------------------ one step
    def forward_backward(self, batch: dict, loss_scale: float) -> dict[str, torch.Tensor]:
        cfg, lc = self.cfg, self.cfg.loss
        dev = self.device
        kwargs = {}
        if self.ssl:
            kwargs = {"global_crops": batch["global_crops"].to(dev, non_blocking=True),
                      "masks": batch["masks"].to(dev, non_blocking=True),
                      "masked": batch["masked"].to(dev, non_blocking=True),
                      "local_crops": batch["local_crops"].to(dev, non_blocking=True) if "local_crops" in batch
                      else None}
            images = kwargs["global_crops"][: len(batch["image"])]  # "image" is global crop 0: copied once
        else:
            images = batch["image"].to(dev, non_blocking=True)
        gan_on = self.disc is not None and self.step >= lc.gan_start
        with self.autocast():
            out = self.train_module(images, **kwargs)
        rec = out["rec"].float()
        terms: dict[str, torch.Tensor] = {}
        terms["l1"] = l1_loss(rec, images)
        rec_loss = lc.l1_weight * terms["l1"]
        if self.perceptual is not None:
            with self.autocast():
                terms["perceptual"] = self.perceptual(rec, images).float()
            rec_loss = rec_loss + lc.perceptual_weight * terms["perceptual"]
        if gan_on:
            self.disc.requires_grad_(False)
            with self.autocast():
                g_loss = hinge_g_loss(self.disc(rec).float())
            self.disc.requires_grad_(True)
            terms["gan_g"] = g_loss
            if lc.adaptive_gan_weight:
                rec_loss, terms["gan_w"] = adaptive_gan_loss(rec, rec_loss, g_loss, self.model.decoder_last_layer,
                                                             lc.gan_weight)
            else:
                rec_loss = rec_loss + lc.gan_weight * g_loss
        loss = cfg.loss.alpha * rec_loss
        if self.ssl:
            masked = kwargs["masked"]
            with torch.no_grad(), self.autocast():
                t = self.teacher.module
                tg = t["encoder"].tokens(kwargs["global_crops"])
                t_cls, t_patch = ssl_heads(t["cls_head"], t["patch_head"] if "patch_head" in t else t["cls_head"],
                                           tg, masked)
            temp = teacher_temperature(self.step, cfg.ssl.teacher_temp_warmup_steps,
                                       cfg.ssl.warmup_teacher_temp, cfg.ssl.teacher_temp)
            ib = self.ibot_loss(out["cls"].float(), t_cls.float(), out["patch"].float(), t_patch.float(),
                                masked.weight, masked.num_views, temp)
            terms["ibot_cls"], terms["ibot_mim"] = ib["ibot_cls"], ib["ibot_mim"]
            loss = loss + ib["loss"]
        self.backward(loss * loss_scale, "model")
        if gan_on:
            terms.update(self._disc_loss(images, rec.detach(), loss_scale))
        return {"loss": loss, **terms}

    def _disc_loss(self, real: torch.Tensor, fake: torch.Tensor, loss_scale: float) -> dict[str, torch.Tensor]:
        lc = self.cfg.loss
        with self.autocast():
            logits = self.disc_ddp(torch.cat([real, fake]))
        lr_, lf = logits.float().chunk(2)
        d_loss = hinge_d_loss(lr_, lf)
        out = {"gan_d": d_loss.detach()}
        if self.lecam is not None:
            reg = self.lecam(lr_, lf)
            self.lecam.update(lr_.detach(), lf.detach())
            d_loss = d_loss + lc.lecam_weight * reg
            out["lecam"] = reg.detach()
        self.backward(d_loss * loss_scale, "disc")
        return out

    def after_step(self, ok: torch.Tensor) -> None:
        with torch.no_grad():
            self.ema.update(self.model, ema_decay_at(self.step, self.cfg.ema_decay, self.cfg.ema_warmup), ok)
            if self.teacher is not None:
                self.teacher.update(self.ssl_modules, cosine_momentum(self.step, self.cfg.steps,
                                                                      self.cfg.ssl.momentum), ok)

    # ------------------------------------------------------------------ state
    def model_signature(self) -> dict:
        arch = self.model.config.to_dict()
        if not isinstance(self.model, TCAE):  # where it was loaded from and diffusers' bookkeeping do not matter
            arch = {k: v for k, v in arch.items() if k != "source"}
            arch["autoencoder"] = {k: v for k, v in arch["autoencoder"].items() if not k.startswith("_")}
        return {"tcae": arch, "phase": self.cfg.phase, "ssl": self.ssl, "gan": self.disc is not None}

    def state_extra(self) -> dict:
        st = {"student": self.student.state_dict(), "ema": self.ema.state_dict()}
        if self.teacher is not None:
            st["teacher"] = self.teacher.state_dict()
            st["ibot_loss"] = self.ibot_loss.state_dict()
        if self.disc is not None:
            st["disc"] = self.disc.state_dict()
            if self.lecam is not None:
                st["lecam"] = self.lecam.state_dict()
        return st

    def load_extra(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.ema.load_state_dict(state["ema"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
            self.ibot_loss.load_state_dict(state["ibot_loss"])
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            if self.lecam is not None:
                self.lecam.load_state_dict(state["lecam"])

    @torch.no_grad()
    def on_log_images(self) -> None:
        if self.val_images is None or self.logger is None:
            return
        ema = self.ema.module
        rec = ema.decode(ema.encode(self.val_images)).clamp(-1, 1)
        grid = make_grid(torch.cat([self.val_images, rec]) * 0.5 + 0.5, nrow=len(self.val_images))
        self.logger.image(f"{self.val_tag}/reconstruction", grid, self.step)
        mse = ((rec - self.val_images) / 2).pow(2).flatten(1).mean(1)
        self.logger.log({f"{self.val_tag}/psnr_ema": float((-10 * torch.log10(mse)).mean())}, self.step)

    @torch.no_grad()
    def measure_latent_stats(self, model: TrainableAutoencoder) -> None:
        """Per-channel latent mean/std of `model` over the first `latent_stats_images` training images
        (evaluation crops, no augmentation), stored in the model: every exported tokenizer carries the
        normalisation its latent diffusion model will use."""
        from tcae.evaluation.diagnostics import LatentChannelStats

        d = self.cfg.data
        ds = build_dataset(split_spec(d.spec, "train"), d.image_size, train=False,
                           channels=model.config.in_channels)
        stats = LatentChannelStats(model.config.latent_channels, self.device)
        for batch in eval_loader(ds, 64, d.num_workers, self.cfg.latent_stats_images, device=self.device):
            with self.autocast():
                stats.update(model.encode(batch["image"].to(self.device, non_blocking=True)).float())
        mean, std = stats.mean_std()
        model.set_latent_stats(mean, std.clamp_min(1e-6), stats.images)

    def export(self) -> None:
        """runs/NAME/model/: the EMA autoencoder with its latent statistics, loadable with TCAE.from_pretrained
        (a TC-AE) or diffusers' AutoencoderDC.from_pretrained (a DC-AE); `tcae.tokenizers.load_tokenizer` takes
        either."""
        model = self.ema.module
        if self.cfg.latent_stats_images > 0:
            self.measure_latent_stats(model)
        cfg = self.cfg
        model.save_pretrained(str(self.run_dir / "model"), card_info={
            "name": cfg.name, "training_data": cfg.data.spec, "steps": self.step, "phase": cfg.phase,
            "image_size": cfg.data.image_size})
        log.info("saved the EMA model to %s (latent statistics over %d images)", self.run_dir / "model",
                 int(model.latent_stats_count))


def train_tokenizer(cfg: DictConfig) -> Path:
    """Run phase 1 or 2 as configured; returns the run directory (its config.yaml is the resolved config)."""
    return TokenizerTrainer(cfg).fit()
