"""Class-conditional image generation: DiT sampler in latent space, then the TC-AE decoder.

The DiT is trained on *normalised* latents, so a sample x is decoded as
`tokenizer.decode(x * std + mean)`. The statistics are the DiT's own buffers: `tcae train-dit` copies them
from the latent cache, which took them from the tokenizer.

Noise is drawn per sample from a generator seeded by (seed, sample index), so sample i is the same
whatever the batch size or device.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from tcae.diffusion.sampler import sample


def load_latent_stats(dit: nn.Module, tokenizer: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(mean (c,), std (c,), source) to denormalise DiT samples: the statistics stored in the DiT's own weights
    (what it was trained with). A tokenizer whose stored statistics differ is named in a warning: the
    samples are still decoded with the DiT's."""
    mean, std = dit.latent_mean.detach().float().cpu(), dit.latent_std.detach().float().cpu()
    if tokenizer is not None and getattr(tokenizer, "has_latent_stats", False):
        t_mean, t_std = tokenizer.latent_mean.detach().float().cpu(), tokenizer.latent_std.detach().float().cpu()
        if t_mean.shape == mean.shape and not (torch.allclose(t_mean, mean, rtol=1e-4, atol=1e-5)
                                               and torch.allclose(t_std, std, rtol=1e-4, atol=1e-5)):
            logging.getLogger("tcae.sample").warning(
                "the tokenizer's stored latent statistics differ from those this DiT was trained with "
                "(re-measured after its latents were cached?); decoding with the DiT's")
    return mean, std, "dit"


def class_ids(tokens: Sequence[str], num_classes: int, class_names: Sequence[str] | None = None) -> list[int]:
    """Class ids from `--classes` tokens: each a class name of the DiT (`class_names`, label -> name) or an id
    in 0..num_classes-1; "a,b" tokens are split at commas (and "0 1" at spaces unless it is a name). ValueError
    naming the valid names for an unknown one."""
    index = {name: i for i, name in enumerate(class_names or [])}
    parts = [t.strip() for arg in tokens for t in str(arg).split(",")]
    out = []
    for token in (w for t in parts for w in ([t] if t in index else t.split())):
        if token in index:
            out.append(index[token])
        elif token.lstrip("-").isdigit():
            out.append(int(token))
        else:
            known = (f"its classes are {', '.join(f'{i}={n!r}' for n, i in index.items())}" if index
                     else f"it records no class names: pass ids 0..{num_classes - 1}")
            raise ValueError(f"unknown class {token!r}: {known}")
    return out


def class_labels(num: int, num_classes: int, classes: Sequence[int] | None = None) -> torch.Tensor:
    """Labels (int64) of the samples to draw.

    With `classes`: `num` samples of each listed class, class by class (len(classes) * num labels).
    Without: `num` labels cycling through all classes (0, 1, ..., K-1, 0, ...), balanced as for the
    usual 50k-sample FID evaluation (50 per ImageNet class).
    """
    if num < 1:
        raise ValueError(f"the number of samples must be >= 1, got {num}")
    if classes is not None:
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"class(es) {bad} out of range: the DiT has {num_classes} classes (0..{num_classes - 1})")
        return torch.tensor(list(classes), dtype=torch.int64).repeat_interleave(num)
    return torch.arange(num, dtype=torch.int64) % num_classes


def sample_noise(indices: Sequence[int], shape: Sequence[int], seed: int) -> torch.Tensor:
    """Standard normal noise (len(indices), *shape); row j depends only on (seed, indices[j])."""
    g = torch.Generator()
    out = torch.empty(len(indices), *shape)
    for j, i in enumerate(indices):
        g.manual_seed((int(seed) << 32) + int(i))
        out[j] = torch.randn(*shape, generator=g)
    return out


@torch.no_grad()
def generate_images(
    dit: nn.Module,
    tokenizer: nn.Module,
    labels: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    steps: int = 50,
    sampler: str = "euler",
    cfg_scale: float = 1.0,
    cfg_interval: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    batch_size: int = 64,
    latent_size: tuple[int, int] | None = None,
    shift: float = 1.0,
    bf16: bool = False,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start index, images (B, 3, H, W) in [-1, 1], float32, clamped) batch by batch.

    dit, tokenizer: in eval mode, on the same device. labels: (N,) int64. mean/std: (c,) latent stats
    the DiT was trained with. latent_size: (h, w), default the DiT's (input_size, input_size).
    bf16: autocast the DiT (not the decoder) to bfloat16 on CUDA.
    """
    cfg = dit.config
    device = next(dit.parameters()).device
    if getattr(tokenizer, "config", None) is not None and tokenizer.config.latent_channels != cfg.in_channels:
        raise ValueError(f"the tokenizer has {tokenizer.config.latent_channels} latent channels but the DiT "
                         f"expects {cfg.in_channels}")
    if mean.numel() != cfg.in_channels or std.numel() != cfg.in_channels:
        raise ValueError(f"latent stats have {mean.numel()} channels, the DiT {cfg.in_channels}")
    h, w = latent_size or (cfg.input_size, cfg.input_size)
    mean, std = mean.to(device).view(1, -1, 1, 1), std.to(device).view(1, -1, 1, 1)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for start in range(0, len(labels), batch_size):
        idx = range(start, min(start + batch_size, len(labels)))
        noise = sample_noise(idx, (cfg.in_channels, h, w), seed).to(device)
        with amp:
            z = sample(dit, noise, labels[start:idx.stop].to(device), steps=steps, sampler=sampler,
                       cfg_scale=cfg_scale, cfg_interval=cfg_interval, shift=shift)
        images = tokenizer.decode(z.float() * std + mean)
        yield start, images.float().clamp(-1, 1)
