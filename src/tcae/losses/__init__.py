"""Training losses of the TC-AE tokenizer (one small file per loss, DINOv2 style).

    L = alpha * L_rec + L_iBOT
    L_rec  = l1_weight * L1 + perceptual_weight * LPIPS + gan_weight * w_adaptive * L_G
    L_iBOT = cls_weight * L_[CLS] + patch_weight * L_MIM

Every weight lives in the training config (`tcae.config.LossConfig`, `SSLConfig`).
"""

from tcae.losses.adversarial import (
    LeCam,
    PatchDiscriminator,
    adaptive_gan_loss,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
)
from tcae.losses.ibot import (
    Center,
    IBOTHead,
    IBOTLoss,
    sinkhorn_knopp,
    softmax_center,
    teacher_temperature,
)
from tcae.losses.perceptual import LPIPSLoss, build_perceptual, default_backbone_path, load_lpips
from tcae.losses.reconstruction import l1_loss

__all__ = [
    "Center",
    "IBOTHead",
    "IBOTLoss",
    "LPIPSLoss",
    "LeCam",
    "PatchDiscriminator",
    "adaptive_gan_loss",
    "adaptive_weight",
    "build_perceptual",
    "default_backbone_path",
    "hinge_d_loss",
    "hinge_g_loss",
    "l1_loss",
    "load_lpips",
    "sinkhorn_knopp",
    "softmax_center",
    "teacher_temperature",
]
