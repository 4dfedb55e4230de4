"""A class-conditional diffusion transformer (DiT) for TC-AE latents, LightningDiT/SiT style.

    latent x (B, c, h, w)  --patch embed (p = 1 or 2)-->  tokens (B, (h/p)(w/p), D)
    condition  = timestep embedding(t) + class embedding(y)            (B, D)
    `depth` blocks: adaLN-zero modulated [RMSNorm -> attention (QK-norm, 2D RoPE)] and
                    [RMSNorm -> SwiGLU], each residual branch gated by the condition
    final layer: adaLN-modulated RMSNorm -> linear -> unpatchify -> velocity (B, c, h, w)

Velocity prediction with flow matching (see `tcae.diffusion.flow` for the t convention). There is
no absolute position embedding: 2D RoPE on the token grid lets any h, w divisible by p run.
adaLN-zero: every residual gate and the final layer start at zero, so a fresh model is the
identity in its blocks and outputs exactly 0.

The class table has one extra row, index `num_classes`, the "null" class used for classifier-free
guidance: during training labels are replaced by it with probability `class_dropout`. The model never
drops labels by itself: the trainer passes `class_dropout` to `flow_matching_loss`, which draws the
mask from its (per-step, seeded) generator and hands it to `forward(..., drop_labels=mask)`, so
resumed and distributed runs reproduce it exactly.

einops letters: b batch, n tokens, d width, c latent channels, y/x token grid, p1/p2 patch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from tcae.models.checkpoint_io import DataclassHubMixin
from tcae.models.layers import Attention, RMSNorm, Rope2D, SwiGLU
from tcae.models.presets import config_from_presets


@dataclass
class DiTConfig:
    """Architecture of a DiT. `input_size` (latent grid side) is nominal (the default sample shape,
    FLOPs); any h, w divisible by `patch_size` works at run time."""

    input_size: int = 8
    in_channels: int = 128
    patch_size: int = 1
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout: float = 0.1  # label -> null class probability in training (for CFG; drawn by the loss)
    qk_norm: bool = True
    rope_theta: float = 100.0  # small grids (8x8 tokens) need only low frequencies
    grad_checkpointing: bool = False
    # label -> class name (`tcae sample --classes NAME`), from the latent cache; None when the data has none
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.input_size % self.patch_size:
            raise ValueError(f"input_size={self.input_size} is not divisible by patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if (self.hidden_size // self.num_heads) % 4:
            raise ValueError(f"head dim {self.hidden_size // self.num_heads} must be divisible by 4 for 2D RoPE")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (use 1 for unconditional data), got {self.num_classes}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"class_dropout must be in [0, 1), got {self.class_dropout}")
        if self.class_names is not None:
            self.class_names = [str(n) for n in self.class_names]
            if len(self.class_names) != self.num_classes:
                raise ValueError(f"class_names has {len(self.class_names)} names for num_classes={self.num_classes}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- embedders
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features (B, dim) of t (B,) in [0, 1].

    t is scaled by 1000 first so that the frequencies span the range they were designed for (DiT's
    integer timesteps 0..999); without it most features would be constant over [0, 1].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t (B,) in [0, 1] -> (B, D): sinusoidal features, then a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_size))


class LabelEmbedder(nn.Module):
    """y (B,) long in [0, num_classes] -> (B, D); row `num_classes` is the null (unconditional) class.

    Labels are replaced by the null class only where `drop_labels` (bool (B,)) says so; there is no
    random dropping here (the training loss draws the mask, see the module docstring).
    """

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor, drop_labels: torch.Tensor | None = None) -> torch.Tensor:
        if drop_labels is not None:
            y = torch.where(drop_labels.to(device=y.device, dtype=torch.bool), self.num_classes, y)
        return self.embedding_table(y)


# ---------------------------------------------------------------------- blocks
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, N, D) * (1 + scale) + shift, with per-sample shift/scale (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated, and residual branches gated, by the
    condition c (adaLN-zero: the modulation layer starts at zero, so the block starts as identity)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, num_heads, qk_norm)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x: (B, N, D) tokens, c: (B, D) condition -> (B, N, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """Modulated norm + linear to p*p*c values per token; zero-initialised, so a new DiT outputs 0."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------- model
class DiT(
    nn.Module,
    DataclassHubMixin,
    library_name="tcae",
    tags=["tcae", "diffusion-transformer", "flow-matching"],
):
    """Class-conditional flow-matching DiT on (normalised) TC-AE latents.

    forward: x (B, c, h, w) noisy latent, t (B,) float in [0, 1] (1 = noise), y (B,) long
    in [0, num_classes] (num_classes = null class) -> velocity (B, c, h, w), h and w divisible by p.
    """

    config_class = DiTConfig
    model_kind = "DiT"

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = DiTConfig(**config)
        self.config = cfg = config
        d = cfg.hidden_size
        self.x_embedder = nn.Conv2d(cfg.in_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth))
        self.rope = Rope2D(d // cfg.num_heads, cfg.rope_theta)
        self.final_layer = FinalLayer(d, cfg.patch_size, cfg.in_channels)
        # the per-channel statistics of the tokenizer latents it was trained on (x = (z - mean) / std), saved
        # with its weights so a copied or downloaded DiT always denormalises its samples the same way
        self.register_buffer("latent_mean", torch.zeros(cfg.in_channels))
        self.register_buffer("latent_std", torch.ones(cfg.in_channels))
        self.grad_checkpointing = cfg.grad_checkpointing
        self.initialize_weights()

    @torch.no_grad()
    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the (c,) mean/std of the latents this DiT models (its training data's normalisation)."""
        c = self.config.in_channels
        mean, std = torch.as_tensor(mean).flatten(), torch.as_tensor(std).flatten()
        if mean.shape != (c,) or std.shape != (c,) or not torch.all(std > 0):
            raise ValueError(f"latent stats must be ({c},) with std > 0, got {tuple(mean.shape)}, {tuple(std.shape)}")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, N(0, 0.02) embeddings, zero adaLN and output layers."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like a linear layer on flattened patches
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected a latent (B, {cfg.in_channels}, h, w), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(f"latent grid {h}x{w} is not divisible by the DiT patch size {cfg.patch_size}")

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, drop_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Velocity (B, c, h, w) at noisy latent x (B, c, h, w), time t (B,) or scalar in [0, 1], labels y (B,).

        drop_labels: optional bool (B,): True replaces that label by the null class (label dropout for
        classifier-free guidance; `flow_matching_loss(..., class_dropout=p)` draws it in training).
        None keeps every label, in training mode too.
        """
        self._check_input(x)
        b, _, h, w = x.shape
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t
        p = self.config.patch_size
        grid = (h // p, w // p)

        tokens = rearrange(self.x_embedder(x), "b d y x -> b (y x) d")
        c = self.t_embedder(t) + self.y_embedder(y, drop_labels)
        rope = self.rope.cos_sin(grid, 0, x.device)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, rope, use_reentrant=False)
            else:
                tokens = block(tokens, c, rope)
        out = self.final_layer(tokens, c)
        return rearrange(out, "b (y x) (p1 p2 c) -> b c (y p1) (x p2)", y=grid[0], p1=p, p2=p)


# ---------------------------------------------------------------------- presets
# Every preset is a full DiTConfig; `create_dit(name, **overrides)` replaces fields (the trainer sets
# input_size, in_channels and num_classes from the cached latents).
DIT_PRESETS: dict[str, DiTConfig] = {
    # CPU tests and demo, on tcae-tiny latents (64 px -> 4x4x32).
    "dit-tiny": DiTConfig(input_size=4, in_channels=32, hidden_size=128, depth=4, num_heads=4, num_classes=10),
    # ImageNet 256 px latents of tcae-s/b (8x8x128, 64 tokens at p=1); widths/depths of DiT-S/B/L/XL.
    "dit-s": DiTConfig(input_size=8, in_channels=128, hidden_size=384, depth=12, num_heads=6),
    "dit-b": DiTConfig(input_size=8, in_channels=128, hidden_size=768, depth=12, num_heads=12),
    "dit-l": DiTConfig(input_size=8, in_channels=128, hidden_size=1024, depth=24, num_heads=16),
    "dit-xl": DiTConfig(input_size=8, in_channels=128, hidden_size=1152, depth=28, num_heads=16),
}


def list_dits() -> list[str]:
    """Names of the shipped DiT presets."""
    return sorted(DIT_PRESETS)


def dit_config(name: str, **overrides) -> DiTConfig:
    """The config of preset `name` with `overrides` applied; unknown names or fields are a ValueError."""
    return config_from_presets(DIT_PRESETS, name, "DiT", **overrides)


def create_dit(name: str, **overrides) -> DiT:
    """A freshly initialised DiT from a preset name, e.g. create_dit('dit-b', patch_size=2)."""
    return DiT(dit_config(name, **overrides))
