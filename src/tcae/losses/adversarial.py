"""Adversarial loss: PatchGAN discriminator, hinge loss, adaptive weight, LeCam regularisation.

    L_D   = mean relu(1 - D(x)) + mean relu(1 + D(x_hat))                     (hinge, discriminator)
    L_G   = -mean D(x_hat)                                                    (hinge, generator)
    w     = clamp(||grad_W L_rec|| / (||grad_W L_G|| + 1e-4), 0, max_w)      (W: last decoder layer;
                                                                              taming-transformers)
    L     = L_rec + lambda_g * w * L_G                                        (`adaptive_gan_loss`)
    R_LC  = mean relu(D(x) - ema_fake)^2 + mean relu(ema_real - D(x_hat))^2  (LeCam, Tseng et al. 2021)

The generator's adversarial term is lambda_g * w * L_G, switched on from a start step (`loss.gan_start`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tcae import dist


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming `NLayerDiscriminator`): one real/fake logit per overlapping patch.

    forward(x (B, in_channels, H, W)) -> logits (B, 1, H', W'); H' = H / 2^num_layers - 2
    (e.g. 32 px -> 2x2, 64 px -> 6x6, 256 px -> 30x30 with num_layers=3).

    Normalisation is GroupNorm, not pix2pix's BatchNorm: BatchNorm statistics depend on the batch, so
    under DDP each rank normalises with its own statistics (and its running buffers are broadcast from
    rank 0), the generator step (fake only) and the discriminator step (real + fake) would see differently
    normalised logits, and real/fake images in one batch would leak into each other's outputs. GroupNorm
    is per sample: the same function on any number of ranks and any batch composition, with no buffers.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        kw, pad = 4, 1
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, kw, stride=2, padding=pad),
                                   nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < num_layers else 1  # the last hidden conv keeps the resolution (minus 1)
            layers += [nn.Conv2d(base_channels * prev, base_channels * mult, kw, stride=stride, padding=pad,
                                 bias=False),  # the norm's affine shift makes a bias redundant
                       _group_norm(base_channels * mult), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(base_channels * mult, 1, kw, stride=1, padding=pad))
        self.main = nn.Sequential(*layers)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # pix2pix / taming initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: mean relu(1 - real) + mean relu(1 + fake) (any logit shapes) -> scalar."""
    return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: -mean D(x_hat) -> scalar."""
    return -logits_fake.mean()


def adaptive_weight(rec_grad: torch.Tensor, g_grad: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """w = ||rec_grad|| / (||g_grad|| + 1e-4), clamped to [0, max_weight], detached (taming-transformers, VQGAN).

    rec_grad, g_grad: the gradients of L_rec and L_G at the last decoder layer's weight (same shape).
    With torch.distributed initialised both are averaged over the ranks first (every rank must call
    this), so w is the global batch's weight -- what one process with the whole batch computes -- and
    the same on every rank.
    """
    grads = torch.stack([rec_grad.detach().float(), g_grad.detach().float()])
    if dist.world_size() > 1:
        grads = dist.all_reduce_mean(grads)
    return (grads[0].norm() / (grads[1].norm() + 1e-4)).clamp(0.0, max_weight)


def adaptive_gan_loss(output: torch.Tensor, rec_loss: torch.Tensor, g_loss: torch.Tensor,
                      last_layer: torch.Tensor, gan_weight: float, max_weight: float = 1e4
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """L = rec_loss + gan_weight * w * g_loss with the adaptive weight w, backpropagating the losses once.

    `output`: the decoder output, the only way both losses reach the trained parameters (e.g. the
    reconstruction fed to L1, LPIPS and the discriminator); `last_layer`: the decoder's last weight.
    Each loss is differentiated to `output` once; w's last-layer gradients are vector-Jacobian products
    from there through that layer alone; and L carries its gradient as `output * dL/d output`. So a
    backward of L runs LPIPS's VGG and the discriminator backward zero more times, where the direct
    form (w from d loss / d W, then loss.backward()) runs each of them twice.

    Returns (L: the value of the direct loss, with the same gradients, w: detached scalar).
    """
    rec_out = torch.autograd.grad(rec_loss, output, retain_graph=True)[0]
    g_out = torch.autograd.grad(g_loss, output, retain_graph=True)[0]
    rec_grad, g_grad = (torch.autograd.grad(output, last_layer, grad_outputs=g, retain_graph=True)[0]
                        for g in (rec_out, g_out))
    w = adaptive_weight(rec_grad, g_grad, max_weight)
    linear = (output * (rec_out + gan_weight * w * g_out)).sum()
    return linear - linear.detach() + (rec_loss + gan_weight * w * g_loss).detach(), w


class LeCam(nn.Module):
    """LeCam regularisation (Tseng et al., CVPR 2021) for the discriminator, with EMAs of its mean logits.

    forward(logits_real, logits_fake) -> mean relu(real - ema_fake)^2 + mean relu(ema_real - fake)^2;
    update(logits_real, logits_fake): ema <- decay * ema + (1 - decay) * mean logit (averaged over ranks
    when torch.distributed is initialised, so every rank keeps the same EMAs). EMAs start at 0 as in the
    reference implementation; they are buffers, so they are saved with the state dict.
    """

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        means = torch.stack([logits_real.detach().float().mean(), logits_fake.detach().float().mean()])
        means = dist.all_reduce_mean(means)
        self.ema_real.lerp_(means[0].to(self.ema_real.dtype), 1.0 - self.decay)
        self.ema_fake.lerp_(means[1].to(self.ema_fake.dtype), 1.0 - self.decay)

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        return (F.relu(logits_real - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - logits_fake).pow(2).mean())
