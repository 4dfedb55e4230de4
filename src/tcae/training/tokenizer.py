"""Tokenizer training, both phases of PAPER.md.

Phase `joint` (`tcae train`): L = alpha * L_rec + L_iBOT, with L_rec = L1 + lambda_p LPIPS + lambda_g GAN.
    The student encoder sees 2 global crops (crop 0 unmasked: it is also the reconstruction input; the
    other global crops block-masked) and the local crops; an EMA teacher sees the unmasked global crops.
Phase `decoder` (`tcae finetune-decoder`): encoder frozen, decoder (and discriminator) trained, no iBOT.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision.utils import make_grid

from tcae.config import model_overrides
from tcae.data import MultiCropCollate, MultiCropTransform, build_dataset, build_loader, local_crop_size
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
from tcae.training.ema import EMA, cosine_momentum
from tcae.training.loop import TrainLoop
from tcae.training.optim import param_groups

log = logging.getLogger("tcae.train")


class TokenizerStudent(nn.Module):
    """The trained network in one module (so DDP sees one forward): autoencoder + iBOT heads.

    forward(images (B,3,H,W) in [-1,1], global_crops (Vg*B,3,H,W) | None, masks (Vg*B,y,x) | None,
            local_crops (Vl*B,3,h,w) | None) -> dict with the reconstruction `rec` (B,3,H,W) and, with
    SSL, the head outputs `cls` (Vs*B, out_dim) and `patch` (Vg*B, n, patch_out_dim) (zero where
    unmasked: the patch head only runs on masked tokens, the only ones the loss reads).
    """

    def __init__(self, model: TCAE, cls_head: nn.Module | None, patch_head: nn.Module | None,
                 freeze_encoder: bool = False) -> None:
        super().__init__()
        self.model, self.cls_head, self.patch_head = model, cls_head, patch_head
        self.freeze_encoder = freeze_encoder

    def heads(self, enc: EncoderTokens, masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        cls = self.cls_head(enc.cls)
        patch = enc.tokens.new_zeros(*enc.tokens.shape[:2], self.patch_out_dim)
        if masks is not None:
            flat = masks.flatten(1)
            patch = patch.to(cls.dtype)
            patch[flat] = self.patch_head(enc.tokens[flat]).to(cls.dtype)
        return cls, patch

    @property
    def patch_out_dim(self) -> int:
        return self.patch_head.out_dim

    def forward(self, images, global_crops=None, masks=None, local_crops=None) -> dict[str, torch.Tensor]:
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
        cls, patch = self.heads(g, masks)
        if local_crops is not None:
            cls = torch.cat([cls, self.cls_head(m.encode_tokens(local_crops).cls)], dim=0)
        out.update(cls=cls, patch=patch)
        return out


class TokenizerTrainer(TrainLoop):
    """`tcae train` / `tcae finetune-decoder`."""

    def build(self) -> None:
        cfg = self.cfg
        if cfg.phase not in ("joint", "decoder"):
            raise ValueError(f"phase must be 'joint' or 'decoder', got {cfg.phase!r}")
        self.decoder_phase = cfg.phase == "decoder"
        self.ssl = bool(cfg.ssl.enabled) and not self.decoder_phase
        if self.decoder_phase:
            if not cfg.init:
                raise ValueError("finetune-decoder needs init=RUN_OR_MODEL_DIR (the phase-1 run or model)")
            try:  # a run directory (its model/) or a model directory
                model = TCAE.from_pretrained(cfg.init)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"init={cfg.init}: {e}") from None
        else:
            overrides = model_overrides(cfg.model)
            overrides.setdefault("image_size", cfg.data.image_size)
            model = create_model(cfg.model.name, **overrides)
        if cfg.data.image_size % model.config.compression:
            raise ValueError(f"data.image_size={cfg.data.image_size} is not divisible by the model's "
                             f"compression f={model.config.compression}")
        model.to(self.device)
        if self.decoder_phase:
            for p in model.encoder_parameters():
                p.requires_grad_(False)
        elif not self.ssl:
            model.mask_token.requires_grad_(False)  # unused without masking; DDP needs every param used

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
        self.student = TokenizerStudent(model, cls_head, patch_head, self.decoder_phase).to(self.device)
        self.model = model
        self.teacher = None
        if self.ssl:
            enc_ids = {id(p) for p in model.encoder_parameters()}
            names = {n for n, p in self.student.named_parameters()
                     if id(p) in enc_ids or n.startswith(("cls_head.", "patch_head."))}
            self.teacher = EMA(self.student, names)
            self.teacher.module.model.drop_decoder()  # the teacher only encodes
            self.teacher.to(self.device)
        self.ema = EMA(model).to(self.device)

        lc = cfg.loss
        self.perceptual = build_perceptual(lc.perceptual, backbone_weights=lc.lpips_weights)
        if self.perceptual is not None:
            self.perceptual.to(self.device).eval().requires_grad_(False)
        self.disc = None
        if lc.gan:
            self.disc = PatchDiscriminator(3, lc.disc_channels, lc.disc_layers).to(self.device)
            self.lecam = LeCam().to(self.device) if lc.lecam_weight > 0 else None
            self.disc_ddp = DDP(self.disc) if self.dist.enabled else self.disc
            self.add_optimizer("disc", torch.optim.AdamW(
                param_groups(self.disc, cfg.optim.weight_decay, lc.disc_lr or cfg.optim.lr),
                betas=tuple(cfg.optim.betas)))

        self.train_module = DDP(self.student) if self.dist.enabled else self.student
        if cfg.compile:
            self.train_module = torch.compile(self.train_module)
        self.add_optimizer("model", torch.optim.AdamW(
            param_groups(self.student, cfg.optim.weight_decay, cfg.optim.lr), betas=tuple(cfg.optim.betas)))
        self._build_data(model)

    def _build_data(self, model: TCAE) -> None:
        cfg, d = self.cfg, self.cfg.data
        if d.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size={d.batch_size} is not divisible by {self.dist.world_size} ranks")
        per_rank = d.batch_size // self.dist.world_size
        collate, transform = None, None
        if self.ssl:
            s = cfg.ssl
            local = s.local_size or local_crop_size(d.image_size, model.config.token_stride)
            transform = MultiCropTransform(d.image_size, local, s.num_global, s.num_local,
                                           tuple(s.global_scale), tuple(s.local_scale), s.color_augment)
            stride = model.config.token_stride
            collate = MultiCropCollate((d.image_size // stride, d.image_size // stride),
                                       tuple(s.mask_ratio), s.mask_sample_prob)
        channels = model.config.in_channels  # gray built-ins serve 1 channel to an in_channels=1 model
        ds = build_dataset(d.spec, d.image_size, train=True, transform=transform, seed=cfg.seed,
                           epoch_size=d.epoch_size, channels=channels)
        self.loader = build_loader(ds, per_rank, train=True, num_workers=d.num_workers,
                                   collate_fn=collate, seed=cfg.seed)
        # the val split of a built-in set serves the reconstruction grids; other data: data.val_spec
        val_spec = d.val_spec or (f"builtin:{d.spec.split(':')[1]}:val" if d.spec.startswith("builtin:") else None)
        self.val_images = None
        if val_spec:
            val = build_dataset(val_spec, d.image_size, train=False, channels=channels)
            n = min(8, len(val))
            self.val_images = torch.stack([val[i]["image"] for i in range(n)]).to(self.device)

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg, lc = self.cfg, self.cfg.loss
        dev = self.device
        kwargs = {}
        if self.ssl:
            kwargs = {"global_crops": batch["global_crops"].to(dev, non_blocking=True),
                      "masks": batch["masks"].to(dev, non_blocking=True),
                      "local_crops": batch["local_crops"].to(dev) if "local_crops" in batch else None}
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
            with torch.no_grad(), self.autocast():
                t = self.teacher.module
                tg = t.model.encode_tokens(kwargs["global_crops"])
                t_cls, t_patch = t.heads(tg, kwargs["masks"])
            temp = teacher_temperature(self.step, cfg.ssl.teacher_temp_warmup_steps,
                                       cfg.ssl.warmup_teacher_temp, cfg.ssl.teacher_temp)
            masks = kwargs["masks"].flatten(1)
            ib = self.ibot_loss(out["cls"].float(), t_cls.float(), out["patch"].float(), t_patch.float(),
                                masks, temp)
            terms["ibot_cls"], terms["ibot_mim"] = ib["ibot_cls"], ib["ibot_mim"]
            loss = loss + ib["loss"]
        terms = {"loss": loss, **terms}

        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                [p for p in self.student.parameters() if p.requires_grad], cfg.optim.grad_clip)
        if torch.isfinite(loss):
            opt.step()

        if gan_on:
            terms.update(self._disc_step(images, rec.detach()))
        with torch.no_grad():
            self.ema.update(self.model, cfg.ema_decay)
            if self.teacher is not None:
                self.teacher.update(self.student, cosine_momentum(self.step, cfg.steps, cfg.ssl.momentum))
        return terms

    def _disc_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
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
        opt = self.optimizers["disc"]
        opt.zero_grad(set_to_none=True)
        d_loss.backward()
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.cfg.optim.grad_clip)
        opt.step()
        return out

    # ------------------------------------------------------------------ state
    def model_signature(self) -> dict:
        return {"tcae": self.model.config.to_dict(), "phase": self.cfg.phase, "ssl": self.ssl,
                "gan": self.disc is not None}

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
        if self.val_images is None or self.writer is None:
            return
        ema = self.ema.module
        rec = ema(self.val_images).sample.clamp(-1, 1)
        grid = make_grid(torch.cat([self.val_images, rec]) * 0.5 + 0.5, nrow=len(self.val_images))
        self.writer.add_image("val/reconstruction", grid, self.step)
        mse = ((rec - self.val_images) / 2).pow(2).flatten(1).mean(1)
        self.writer.add_scalar("val/psnr_ema", float((-10 * torch.log10(mse)).mean()), self.step)

    def export(self) -> None:
        """runs/NAME/model/: the EMA autoencoder, loadable with TCAE.from_pretrained."""
        self.ema.module.save_pretrained(str(self.run_dir / "model"))
        log.info("saved the EMA model to %s", self.run_dir / "model")


def train_tokenizer(cfg: DictConfig) -> Path:
    """Run phase 1 or 2 as configured; returns the run directory."""
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    return TokenizerTrainer(cfg).fit()
