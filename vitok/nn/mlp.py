"""SwiGLU feed-forward layer (Llama style)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
    """Hidden size 2/3 * ratio * width rounded up to a multiple of 32 (768 -> 2048 at ratio 4)."""
    return 32 * math.ceil(2 * mlp_ratio * width / 3 / 32)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)
