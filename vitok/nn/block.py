"""Pre-norm transformer block (RMSNorm, attention, SwiGLU) and a stack of them with a final norm."""
from __future__ import annotations

import torch
from torch import nn

from vitok.nn.attention import Attention
from vitok.nn.mlp import SwiGLU, swiglu_hidden
from vitok.nn.norm import RMSNorm
from vitok.nn.rope import rope_3d


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """`depth` blocks over raster-ordered grid tokens (3D RoPE) plus optional trailing position-free tokens."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0, rope_theta: float = 10000.0):
        super().__init__()
        self.head_dim = width // heads
        self.rope_theta = rope_theta
        hidden = swiglu_hidden(width, mlp_ratio)
        self.blocks = nn.ModuleList(Block(width, heads, hidden) for _ in range(depth))
        self.norm = RMSNorm(width)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int], extra: int = 0) -> torch.Tensor:
        rope = rope_3d(grid, self.head_dim, self.rope_theta, extra, device=x.device)
        for block in self.blocks:
            x = block(x, rope)
        return self.norm(x)
