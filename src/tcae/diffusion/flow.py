"""Flow matching (rectified flow / SiT linear interpolant) with velocity prediction.

Our convention, used everywhere in `tcae.diffusion` and stated only here:

    x_t = (1 - t) * x0 + t * noise,      t in [0, 1],  t = 0 is data, t = 1 is pure noise
    v   = d x_t / dt = noise - x0        (the model's regression target)

So a model `v = model(x_t, t, y)` is integrated from t = 1 (noise) down to t = 0 (data); see
`tcae.diffusion.sampler`. Timesteps are floats in [0, 1], never integers.

Timestep shift (optional, SD3-style "resolution-dependent shift"): t' = s t / (1 + (s - 1) t). With
s > 1 more training (and sampling) time is spent near the noise end, which larger latents (more
tokens, so more redundant signal at a given t) need. s = 1 is the identity. Train and sample with
the same s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

TIMESTEP_KINDS = ("logit_normal", "uniform")

# model(x_t (B, ...), t (B,) in [0, 1], y (B,) long) -> velocity (B, ...)
VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def shift_timesteps(t: torch.Tensor, shift: float = 1.0) -> torch.Tensor:
    """t' = shift * t / (1 + (shift - 1) * t): monotone map of [0, 1] onto itself (identity at shift 1)."""
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(
    n: int,
    kind: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    shift: float = 1.0,
) -> torch.Tensor:
    """n training timesteps in (0, 1), float32.

    kind: "logit_normal" (t = sigmoid(N(mean, std^2)), SD3 / LightningDiT: concentrates on the middle,
    where the velocity is hardest to predict) or "uniform" (t ~ U(0, 1), SiT).
    Random numbers are drawn on the generator's device (so a seeded generator reproduces them exactly)
    and moved to `device` (default: the generator's device, else CPU).
    """
    if kind not in TIMESTEP_KINDS:
        raise ValueError(f"unknown timestep kind {kind!r}; expected one of {TIMESTEP_KINDS}")
    gen_device = generator.device if generator is not None else (device or "cpu")
    if kind == "uniform":
        t = torch.rand(n, generator=generator, device=gen_device)
    else:
        t = torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=gen_device))
    t = shift_timesteps(t, shift)
    return t.to(device) if device is not None else t


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise, with t (B,) broadcast over the remaining dims of x0 (B, ...)."""
    t = t.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise


def flow_matching_loss(
    model: VelocityFn,
    x0: torch.Tensor,
    y: torch.Tensor,
    timestep_kind: str = "logit_normal",
    generator: torch.Generator | None = None,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 1.0,
    class_dropout: float | None = None,
) -> torch.Tensor:
    """Scalar MSE between model(x_t, t, y) and the velocity noise - x0, averaged over all elements.

    x0: clean (normalised) latents (B, c, h, w), or any (B, ...) for toy models; y: (B,) long labels.
    `model` may be a DiT, a DDP/compiled wrapper of one, or any callable (x, t, y) -> v.
    Noise and timesteps come from `generator` when given (exact-resume training passes a per-step one).
    class_dropout: label dropout for classifier-free guidance training: a float p draws the drop mask
    (each label -> null class with probability p) here, from `generator`, and passes it as
    `drop_labels=` (the model must accept that keyword, as `DiT.forward` does). None: no dropout
    (the DiT never drops labels by itself).
    The loss is computed in float32 even under autocast.
    """
    b = x0.shape[0]
    gen_device = generator.device if generator is not None else x0.device
    t = sample_timesteps(b, timestep_kind, logit_mean, logit_std, generator, shift=shift,
                         device=gen_device).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=torch.float32)
    noise = noise.to(device=x0.device, dtype=x0.dtype)
    x_t = interpolate(x0, noise, t)
    if class_dropout is None:
        pred = model(x_t, t, y)
    else:
        drop = torch.rand(b, generator=generator, device=gen_device) < class_dropout
        pred = model(x_t, t, y, drop_labels=drop.to(x0.device))
    return F.mse_loss(pred.float(), (noise - x0).float())
