"""Transformer building blocks shared by the TC-AE tokenizer and the diffusion transformer.

Shapes use einops letters, explained once here:
    b = batch, n = tokens, d = model width, h = heads, k = head dim,
    y/x = token grid rows/columns.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no bias, no mean subtraction)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(kind: str, dim: int) -> nn.Module:
    """`layernorm` or `rmsnorm`."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=1e-6)
    if kind == "rmsnorm":
        return RMSNorm(dim)
    raise ValueError(f"unknown norm {kind!r}; expected 'layernorm' or 'rmsnorm'")


@lru_cache(maxsize=64)
def _rope_tables(head_dim: int, grid_h: int, grid_w: int, num_prefix: int, theta: float, device: str):
    """Full-width tables (num_prefix + y*x, 1, head_dim) of axial 2D RoPE in the rotate-half form:
    [cos, cos] and [-sin, sin] of the angles, half the frequencies rotating by row, half by column;
    the prefix tokens get angle 0 (no rotation). The 1 broadcasts over heads in (b, n, h, k) layout.
    Built once per (grid, device) and reused by every block and call."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    ang = torch.cat([ys.reshape(-1, 1) * freqs, xs.reshape(-1, 1) * freqs], dim=1).float()
    ang = torch.cat([ang.new_zeros(num_prefix, ang.shape[1]), ang], dim=0)
    cos, sin = ang.cos(), ang.sin()
    cos_full, sin_full = torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)
    return cos_full[:, None].to(device), sin_full[:, None].to(device)


class Rope2D(nn.Module):
    """Axial 2D rotary position embedding for a (y, x) token grid, so any grid size works at run time.

    The first `num_prefix` tokens (e.g. [CLS]) are left unrotated: they have no position.
    """

    def __init__(self, head_dim: int, theta: float = 100.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def cos_sin(self, grid: tuple[int, int], num_prefix: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(cos_full, sin_full), each (num_prefix + y*x, 1, head_dim) float32: what `Attention` takes."""
        return _rope_tables(self.head_dim, grid[0], grid[1], num_prefix, self.theta, str(device))


def _rotate(x: torch.Tensor, cos_full: torch.Tensor, sin_full: torch.Tensor) -> torch.Tensor:
    """x * [cos, cos] + [x2, x1] * [-sin, sin], in float32 (the tables' dtype), back to x's dtype.

    Bitwise equal to the pairwise form [x1 cos - x2 sin, x1 sin + x2 cos] (a + (-b) == a - b and
    addition commutes exactly in IEEE arithmetic), with fewer passes over memory; a bf16/fp16 x is
    promoted inside the multiplies instead of by a separate float32 copy.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos_full + torch.cat([x2, x1], dim=-1) * sin_full).type_as(x)


class Attention(nn.Module):
    """Multi-head self-attention with optional QK-norm and RoPE, via PyTorch SDPA."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x: (b, n, d); rope: (cos_full, sin_full) from `Rope2D.cos_sin`, each (n, 1, k). Returns (b, n, d).

        q, k, v stay strided views of the fused qkv output in (b n h k) order and reach SDPA as
        (b h n k) transposes: the CPU flash kernel and the CUDA kernels take strides, and SDPA's
        output transposed back to (b n h k) is contiguous, so no layout copies are made.
        """
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class SwiGLU(nn.Module):
    """Gated MLP: W2(silu(W1 x) * W3 x). Hidden width is 2/3 of `hidden` to match a GELU MLP's cost."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        hidden = int(2 * hidden / 3)
        hidden = 8 * math.ceil(hidden / 8)
        self.w13 = nn.Linear(dim, 2 * hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class GeluMLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


def make_mlp(kind: str, dim: int, hidden: int) -> nn.Module:
    """`swiglu` or `gelu`."""
    if kind == "swiglu":
        return SwiGLU(dim, hidden)
    if kind == "gelu":
        return GeluMLP(dim, hidden)
    raise ValueError(f"unknown mlp {kind!r}; expected 'swiglu' or 'gelu'")


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, mlp: str = "swiglu",
        norm: str = "layernorm", qk_norm: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, dim)
        self.attn = Attention(dim, num_heads, qk_norm)
        self.norm2 = make_norm(norm, dim)
        self.mlp = make_mlp(mlp, dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of `Block`s on a token grid with 2D RoPE; `grad_checkpointing` trades compute for memory."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, mlp: str = "swiglu",
        norm: str = "layernorm", qk_norm: bool = True, rope_theta: float = 100.0,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, mlp, norm, qk_norm) for _ in range(depth)
        )
        self.rope = Rope2D(dim // num_heads, rope_theta)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix: int = 0) -> torch.Tensor:
        """x: (b, num_prefix + y*x, d) -> same shape."""
        rope = self.rope.cos_sin(grid, num_prefix, x.device)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
        return x
