"""RMSNorm whose weight follows the input's dtype."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` that casts its weight to the input's dtype: under bf16 autocast torch keeps its fused kernel
    (a float32 weight on a bfloat16 input falls back to a slower path with a warning); in float32 it is the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)
