"""TC-AE: a ViT autoencoder with staged token compression (see shared PAPER.md).

Encoder, for an image (B, 3, H, W) in [-1, 1], patch size p and overall compression f:

    patch embed (p)            -> fine tokens   (H/p  x W/p),  width `fine_width`
    `fine_depth` blocks (M)    +  a [CLS] token carried through the encoder
    intermediate bottleneck    -> coarse tokens (H/2p x W/2p), width `coarse_width`   (staged only:
                                  2-layer conv, 2x2 merge; the single-stage baseline only changes width)
    `coarse_depth` blocks (N)
    final bottleneck           -> latent z (B, c, H/f, W/f): pixel-unshuffle + MLP

`TCAE.encoder` and `TCAE.decoder` are the two halves. The decoder mirrors the encoder:
MLP + pixel-shuffle, N blocks, 2x conv upsample (staged), M blocks, unpatchify.
Positions are 2D RoPE on each stage's own token grid, so any H, W divisible by f works at run time.

einops letters: b batch, n tokens, d width, c latent channels, y/x token grid, h/w latent grid,
r = tokens per latent position along one axis (the final bottleneck's unshuffle factor).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tcae.models.checkpoint_io import DataclassHubMixin
from tcae.models.layers import Transformer, make_norm


@dataclass
class TCAEConfig:
    """Architecture of a TC-AE tokenizer. `image_size` is nominal (FLOPs, training); any H, W divisible
    by `compression` works at run time."""

    image_size: int = 256
    in_channels: int = 3
    patch_size: int = 8
    compression: int = 32
    latent_channels: int = 128
    staged: bool = True
    fine_width: int = 512
    coarse_width: int = 768
    fine_depth: int = 4
    coarse_depth: int = 8
    decoder_fine_depth: int | None = None  # None: same as the encoder (symmetric)
    decoder_coarse_depth: int | None = None
    head_dim: int = 64
    mlp_ratio: float = 4.0
    mlp: str = "swiglu"
    norm: str = "layernorm"
    qk_norm: bool = True
    rope_theta: float = 100.0
    bottleneck_hidden: int | None = None  # hidden width of the final bottleneck MLP; None: coarse_width
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        stride = self.token_stride
        if self.compression % stride:
            raise ValueError(
                f"compression f={self.compression} must be a multiple of the token stride {stride} "
                f"(patch_size={self.patch_size}{' x 2 for the staged merge' if self.staged else ''})"
            )
        for name in ("fine_width", "coarse_width"):
            if getattr(self, name) % self.head_dim:
                raise ValueError(f"{name}={getattr(self, name)} is not divisible by head_dim={self.head_dim}")
        if self.image_size % self.compression:
            raise ValueError(f"image_size={self.image_size} is not divisible by compression f={self.compression}")

    @property
    def token_stride(self) -> int:
        """Pixels per encoder output token along one axis: p, or 2p after the staged 2x2 merge."""
        return self.patch_size * (2 if self.staged else 1)

    @property
    def unshuffle(self) -> int:
        """Tokens merged per latent position along one axis by the final bottleneck."""
        return self.compression // self.token_stride

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TCAEOutput:
    """`sample`: reconstruction (B, 3, H, W), roughly in [-1, 1]; `latent`: raw latent (B, c, H/f, W/f)."""

    sample: torch.Tensor
    latent: torch.Tensor


@dataclass
class EncoderTokens:
    """The encoder's final token sequence (where the SSL heads attach).

    `cls`: (B, coarse_width); `tokens`: (B, y*x, coarse_width), after the output norm; `grid`: (y, x).
    """

    cls: torch.Tensor
    tokens: torch.Tensor
    grid: tuple[int, int] = field(default=(0, 0))


class TokenMerge(nn.Module):
    """Intermediate bottleneck, encoder side: 2-layer conv, 2x2 merge (4x fewer tokens), width d1 -> d2."""

    def __init__(self, d_in: int, d_out: int, norm: str) -> None:
        super().__init__()
        self.norm = make_norm(norm, d_in)
        self.down = nn.Conv2d(d_in, d_out, kernel_size=2, stride=2)
        self.mix = nn.Conv2d(d_out, d_out, kernel_size=3, padding=1)
        self.cls_proj = nn.Linear(d_in, d_out)

    def forward(self, cls: torch.Tensor, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        x = rearrange(self.norm(x), "b (y x) d -> b d y x", y=grid[0])
        x = self.mix(F.gelu(self.down(x)))
        return self.cls_proj(cls), rearrange(x, "b d y x -> b (y x) d")


class TokenUnmerge(nn.Module):
    """Intermediate bottleneck, decoder side: 2-layer conv with 2x upsample (pixel-shuffle), d2 -> d1."""

    def __init__(self, d_in: int, d_out: int, norm: str) -> None:
        super().__init__()
        self.norm = make_norm(norm, d_in)
        self.mix = nn.Conv2d(d_in, d_in, kernel_size=3, padding=1)
        self.up = nn.Conv2d(d_in, 4 * d_out, kernel_size=1)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = rearrange(self.norm(x), "b (y x) d -> b d y x", y=grid[0])
        x = F.pixel_shuffle(self.up(F.gelu(self.mix(x))), 2)
        return rearrange(x, "b d y x -> b (y x) d")


def check_divisible(h: int, w: int, multiple: int, what: str) -> None:
    if h % multiple or w % multiple:
        raise ValueError(
            f"{what}: H and W must be divisible by {multiple}, got H={h}, W={w} "
            f"(nearest valid: {max(multiple, h // multiple * multiple)}x{max(multiple, w // multiple * multiple)})"
        )


class TCAEEncoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> latent (B, c, H/f, W/f); `tokens` stops at the final token sequence."""

    def __init__(self, cfg: TCAEConfig) -> None:
        super().__init__()
        self.config = cfg
        d1, d2, p, r, c = cfg.fine_width, cfg.coarse_width, cfg.patch_size, cfg.unshuffle, cfg.latent_channels
        block_kw = _block_kwargs(cfg)
        self.patch_embed = nn.Conv2d(cfg.in_channels, d1, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d1))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d1))
        self.fine = Transformer(d1, cfg.fine_depth, d1 // cfg.head_dim, **block_kw)
        self.merge = TokenMerge(d1, d2, cfg.norm) if cfg.staged else nn.Linear(d1, d2)
        self.coarse = Transformer(d2, cfg.coarse_depth, d2 // cfg.head_dim, **block_kw)
        self.norm = make_norm(cfg.norm, d2)
        hidden = cfg.bottleneck_hidden or d2
        self.to_latent = nn.Sequential(nn.Linear(d2 * r * r, hidden), nn.GELU(), nn.Linear(hidden, c))

    def tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderTokens:
        """Encoder up to its final token sequence (see `TCAE.encode_tokens`)."""
        cfg = self.config
        tokens = self.patch_embed(x)
        fine_grid = tokens.shape[-2:]
        tokens = rearrange(tokens, "b d y x -> b (y x) d")
        if mask is not None:
            out_grid = (fine_grid[0] * cfg.patch_size // cfg.token_stride,
                        fine_grid[1] * cfg.patch_size // cfg.token_stride)
            if mask.shape != (x.shape[0], *out_grid):
                raise ValueError(f"mask must have shape {(x.shape[0], *out_grid)}, got {tuple(mask.shape)}")
            if cfg.staged:
                mask = mask.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
            m = rearrange(mask, "b y x -> b (y x) 1").to(tokens.dtype)
            tokens = tokens * (1 - m) + self.mask_token.to(tokens.dtype) * m
        x_tok = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        x_tok = self.fine(x_tok, tuple(fine_grid), num_prefix=1)
        cls, tokens = x_tok[:, 0], x_tok[:, 1:]
        if cfg.staged:
            cls, tokens = self.merge(cls, tokens, tuple(fine_grid))
            grid = (fine_grid[0] // 2, fine_grid[1] // 2)
        else:
            cls, tokens, grid = self.merge(cls), self.merge(tokens), tuple(fine_grid)
        x_tok = self.norm(self.coarse(torch.cat([cls[:, None], tokens], dim=1), grid, num_prefix=1))
        return EncoderTokens(cls=x_tok[:, 0], tokens=x_tok[:, 1:], grid=grid)

    def tokens_to_latent(self, enc: EncoderTokens) -> torch.Tensor:
        """Final bottleneck: (B, y*x, d2) tokens -> latent (B, c, y/r, x/r)."""
        r = self.config.unshuffle
        y, x = enc.grid
        if y % r or x % r:
            raise ValueError(f"token grid {enc.grid} is not divisible by the final unshuffle factor {r}")
        z = rearrange(enc.tokens, "b (h r1 w r2) d -> b h w (r1 r2 d)", h=y // r, r1=r, r2=r)
        return rearrange(self.to_latent(z), "b h w c -> b c h w")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens_to_latent(self.tokens(x))


class TCAEDecoder(nn.Module):
    """Latent (B, c, h, w) -> image (B, 3, h*f, w*f), roughly in [-1, 1] (not clamped)."""

    def __init__(self, cfg: TCAEConfig) -> None:
        super().__init__()
        self.config = cfg
        d1, d2, p, r, c = cfg.fine_width, cfg.coarse_width, cfg.patch_size, cfg.unshuffle, cfg.latent_channels
        block_kw = _block_kwargs(cfg)
        dec_coarse = cfg.coarse_depth if cfg.decoder_coarse_depth is None else cfg.decoder_coarse_depth
        dec_fine = cfg.fine_depth if cfg.decoder_fine_depth is None else cfg.decoder_fine_depth
        hidden = cfg.bottleneck_hidden or d2
        self.from_latent = nn.Sequential(nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, d2 * r * r))
        self.coarse = Transformer(d2, dec_coarse, d2 // cfg.head_dim, **block_kw)
        self.unmerge = TokenUnmerge(d2, d1, cfg.norm) if cfg.staged else nn.Linear(d2, d1)
        self.fine = Transformer(d1, dec_fine, d1 // cfg.head_dim, **block_kw)
        self.norm = make_norm(cfg.norm, d1)
        self.to_pixels = nn.Linear(d1, p * p * cfg.in_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        r, h, w = cfg.unshuffle, z.shape[2], z.shape[3]
        t = self.from_latent(rearrange(z, "b c h w -> b h w c"))
        t = rearrange(t, "b h w (r1 r2 d) -> b (h r1 w r2) d", r1=r, r2=r)
        grid = (h * r, w * r)
        t = self.coarse(t, grid)
        if cfg.staged:
            t = self.unmerge(t, grid)
            grid = (grid[0] * 2, grid[1] * 2)
        else:
            t = self.unmerge(t)
        t = self.to_pixels(self.norm(self.fine(t, grid)))
        p = cfg.patch_size
        return rearrange(t, "b (y x) (p1 p2 c) -> b c (y p1) (x p2)", y=grid[0], p1=p, p2=p)


def _block_kwargs(cfg: TCAEConfig) -> dict:
    return dict(mlp_ratio=cfg.mlp_ratio, mlp=cfg.mlp, norm=cfg.norm, qk_norm=cfg.qk_norm, rope_theta=cfg.rope_theta)


# state-dict names of tcae 0.1 (flat modules) -> today's encoder./decoder. submodules; old files still load
_LEGACY_PREFIXES = {
    "patch_embed.": "encoder.patch_embed.", "cls_token": "encoder.cls_token", "mask_token": "encoder.mask_token",
    "enc_fine.": "encoder.fine.", "merge.": "encoder.merge.", "enc_coarse.": "encoder.coarse.",
    "enc_norm.": "encoder.norm.", "to_latent.": "encoder.to_latent.", "from_latent.": "decoder.from_latent.",
    "dec_coarse.": "decoder.coarse.", "unmerge.": "decoder.unmerge.", "dec_fine.": "decoder.fine.",
    "dec_norm.": "decoder.norm.", "to_pixels.": "decoder.to_pixels.",
}


def upgrade_legacy_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of a tcae 0.1 state dict (flat module names) to the encoder/decoder layout."""
    if not any(k.startswith(tuple(_LEGACY_PREFIXES)) for k in state):
        return state
    out = {}
    for k, v in state.items():
        for old, new in _LEGACY_PREFIXES.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


class TCAE(
    nn.Module,
    DataclassHubMixin,
    library_name="tcae",
    tags=["tcae", "image-tokenizer", "autoencoder"],
):
    """TC-AE tokenizer: `encoder` (TCAEEncoder) + `decoder` (TCAEDecoder) + per-channel latent statistics.
    `staged=False` gives the single-stage baseline (same class, one flag).

    encode: float (B, 3, H, W) in [-1, 1] -> raw latent (B, c, H/f, W/f)
    decode: latent (B, c, h, w) -> image (B, 3, h*f, w*f)
    """

    config_class = TCAEConfig
    model_kind = "TC-AE"
    has_tokens = True  # [CLS] + patch tokens for iBOT's heads (tcae.tokenizers.TrainableAutoencoder)

    def __init__(self, config: TCAEConfig) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = TCAEConfig(**config)
        self.config = config
        c = config.latent_channels
        self.encoder = TCAEEncoder(config)
        self.decoder = TCAEDecoder(config)
        # per-channel latent statistics, saved with the model; count 0 = not measured yet
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))
        self.register_buffer("latent_stats_count", torch.zeros((), dtype=torch.float64))
        self._init_weights()
        self.set_grad_checkpointing(config.grad_checkpointing)

    # ------------------------------------------------------------------ setup
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.encoder.cls_token, std=0.02)
        nn.init.trunc_normal_(self.encoder.mask_token, std=0.02)

    def describe(self) -> str:
        """One line for the training log: the architecture and its size."""
        c = self.config
        params = sum(p.numel() for p in self.parameters()) / 1e6
        return (f"{'staged' if c.staged else 'single-stage'} TC-AE p={c.patch_size} f={c.compression} "
                f"c={c.latent_channels} ({params:.1f}M params)")

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, Transformer):
                m.grad_checkpointing = enabled

    @property
    def decoder_head(self) -> nn.Module:
        """The decoder's last stage and output layers (fine blocks, norm, unpatchify): what
        `decoder_part=head` trains."""
        return nn.ModuleList([self.decoder.fine, self.decoder.norm, self.decoder.to_pixels])

    @property
    def decoder_last_layer(self) -> torch.Tensor:
        """Weight of the last decoder layer (for the GAN loss's adaptive weight)."""
        return self.decoder.to_pixels.weight

    @classmethod
    def upgrade_state_dict(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Called on every loaded weights file: renames tcae 0.1 keys."""
        return upgrade_legacy_state_dict(state)

    # ------------------------------------------------------------------ checks
    def _check_image(self, x: torch.Tensor, multiple: int, what: str) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"expected an image batch (B, {cfg.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        check_divisible(x.shape[-2], x.shape[-1], multiple, what)

    def check_image_size(self, height: int, width: int | None = None) -> None:
        """Raise ValueError unless a (height, width) image can be encoded (both divisible by f)."""
        check_divisible(height, height if width is None else width, self.config.compression, "image size")

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(c, h, w) of the latent of a (height, width) image."""
        f = self.config.compression
        return self.config.latent_channels, height // f, width // f

    # ------------------------------------------------------------------ encoder
    def encode_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderTokens:
        """Encoder up to its final token sequence, for SSL heads and diagnostics.

        x: (B, 3, H, W) in [-1, 1], H and W divisible by the token stride (p, or 2p when staged).
        mask: optional bool (B, y, x) on the *output* token grid (H/stride, W/stride); masked positions
        enter the encoder as the learned mask token (every fine patch under a masked output token).
        """
        self._check_image(x, self.config.token_stride, "encode_tokens")
        return self.encoder.tokens(x, mask)

    def tokens_to_latent(self, enc: EncoderTokens) -> torch.Tensor:
        """Final bottleneck: (B, y*x, d2) tokens -> latent (B, c, y/r, x/r)."""
        return self.encoder.tokens_to_latent(enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [-1, 1], H and W divisible by f -> raw latent (B, c, H/f, W/f)."""
        self._check_image(x, self.config.compression, "encode")
        return self.encoder(x)

    # ------------------------------------------------------------------ decoder
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent (B, c, h, w) -> image (B, 3, h*f, w*f), roughly in [-1, 1] (not clamped)."""
        cfg = self.config
        if z.ndim != 4 or z.shape[1] != cfg.latent_channels:
            raise ValueError(
                f"expected a latent (B, {cfg.latent_channels}, h, w), got shape {tuple(z.shape)}"
            )
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> TCAEOutput:
        """Reconstruct: (B, 3, H, W) -> TCAEOutput(sample (B, 3, H, W), latent (B, c, H/f, W/f))."""
        z = self.encode(x)
        return TCAEOutput(sample=self.decode(z), latent=z)

    # ------------------------------------------------------------------ latent statistics
    @torch.no_grad()
    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor, count: int = 1) -> None:
        """Store per-channel latent mean/std (each shape (c,)) in the model's buffers."""
        c = self.config.latent_channels
        mean, std = torch.as_tensor(mean).flatten(), torch.as_tensor(std).flatten()
        if mean.shape != (c,) or std.shape != (c,):
            raise ValueError(f"latent stats must have shape ({c},), got mean {tuple(mean.shape)}, "
                             f"std {tuple(std.shape)}")
        if not torch.all(std > 0):
            raise ValueError("latent std must be positive in every channel")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)
        self.latent_stats_count.fill_(float(count))

    @property
    def has_latent_stats(self) -> bool:
        return bool(self.latent_stats_count > 0)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent -> per-channel standardised latent (what a diffusion model should see)."""
        return (z - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std.view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)


