"""ODE samplers for flow-matching velocity models, with classifier-free guidance (CFG).

Conventions are those of `tcae.diffusion.flow`: t = 1 is noise, t = 0 is data, dx/dt = v(x, t, y).
Sampling integrates from t = 1 to t = 0 over `steps` equal steps (optionally warped by the same
timestep shift used in training).

CFG: v = v_uncond + s * (v_cond - v_uncond), where the unconditional velocity uses the null class.
As in "Applying guidance in a limited interval improves sample and distribution quality in
diffusion models" (Kynkäänniemi et al., 2024) guidance is only applied while the model is evaluated
at a noise level t inside `cfg_interval` (inclusive); elsewhere the conditional velocity is used
alone. With s == 1 the unconditional pass is skipped entirely, so the result is exactly the
conditional model's.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from tcae.diffusion.flow import VelocityFn, shift_timesteps

SAMPLERS = ("euler", "heun")


def cfg_velocity(
    model_fn: VelocityFn, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float, null_class: int
) -> torch.Tensor:
    """Guided velocity for x (B, ...), t (B,), y (B,): one model call on the doubled batch
    [cond; uncond] (uncond labels = `null_class`). cfg_scale == 1 makes a single conditional call."""
    if cfg_scale == 1.0:
        return model_fn(x, t, y)
    out = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_class)]))
    v_cond, v_uncond = out.chunk(2)
    return v_uncond + cfg_scale * (v_cond - v_uncond)


def time_grid(steps: int, shift: float = 1.0) -> list[float]:
    """steps + 1 times from 1 (noise) to 0 (data), uniform before the optional shift."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return [float(v) for v in shift_timesteps(ts, shift)]


def _null_class(model: object, null_class: int | None) -> int:
    if null_class is not None:
        return int(null_class)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_classes"):
        return int(config.num_classes)  # the DiT's extra embedding row
    raise ValueError("classifier-free guidance needs the null class index: pass null_class= "
                     "(a DiT model provides it as config.num_classes)")


@torch.no_grad()
def sample(
    model: VelocityFn | nn.Module,
    noise: torch.Tensor,
    y: torch.Tensor,
    steps: int = 50,
    sampler: str = "euler",
    cfg_scale: float = 1.0,
    cfg_interval: tuple[float, float] = (0.0, 1.0),
    null_class: int | None = None,
    shift: float = 1.0,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t, y) from x(1) = noise to t = 0 and return x(0) (float32, noise's shape).

    model: a velocity model or callable (x (B, ...), t (B,) float in [0, 1], y (B,) long) -> (B, ...);
    put a DiT in eval mode first (in training mode it would drop labels at random).
    noise: (B, c, h, w) standard normal; y: (B,) long class labels.
    sampler: "euler" (1 model evaluation per step) or "heun" (2nd order: 2 evaluations per step,
    except the last step, which is an Euler step).
    cfg_scale: guidance scale s (1 = plain conditional); cfg_interval: (lo, hi) noise levels where
    guidance applies; null_class: unconditional label (default: model.config.num_classes).
    shift: timestep shift of the time grid (see `tcae.diffusion.flow`).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    lo, hi = cfg_interval
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"cfg_interval must satisfy 0 <= lo <= hi <= 1, got {cfg_interval}")
    if isinstance(model, nn.Module) and model.training:
        warnings.warn("sampling from a model in training mode (labels may be dropped at random); "
                      "call model.eval() first", stacklevel=2)
    null = _null_class(model, null_class) if cfg_scale != 1.0 else -1
    y = y.to(noise.device)

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        scale = cfg_scale if lo <= t <= hi else 1.0
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
        return cfg_velocity(model, x, tt, y, scale, null).float()

    ts = time_grid(steps, shift)
    x = noise.float()
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"{sampler} sampling", leave=False, disable=None)
    for i in iterator:
        t, t_next = ts[i], ts[i + 1]
        dt = t_next - t  # negative: we move from noise towards data
        v = velocity(x, t)
        if sampler == "heun" and i < steps - 1:
            v_next = velocity(x + dt * v, t_next)
            x = x + dt * 0.5 * (v + v_next)
        else:
            x = x + dt * v
    return x
