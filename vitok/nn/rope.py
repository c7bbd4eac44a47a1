"""Positions for (t, h, w) token grids, computed on the fly for any grid size: 3D axial RoPE, 3D sin/cos."""
from __future__ import annotations

import torch


def axial_split(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs given to the t, h, w axes: h and w get 3/8 of the pairs each, t the rest."""
    pairs = head_dim // 2
    n_hw = (3 * pairs) // 8
    if head_dim % 2 or n_hw < 1 or pairs - 2 * n_hw < 1:
        raise ValueError(f"head_dim {head_dim} too small or odd for 3D rotary embedding")
    return pairs - 2 * n_hw, n_hw, n_hw


def grid_angles(grid: tuple[int, int, int], dim: int, theta: float,
                device: torch.device | str | None = None) -> torch.Tensor:
    """(t*h*w, dim/2) rotation angles: each axis' integer position times its own frequency band."""
    axes = []
    for n, size in zip(axial_split(dim), grid):
        inv = theta ** (-torch.arange(n, device=device, dtype=torch.float32) / n)
        axes.append(torch.arange(size, device=device, dtype=torch.float32)[:, None] * inv)  # (size, n)
    t, h, w = grid
    return torch.cat([
        axes[0][:, None, None, :].expand(t, h, w, -1),
        axes[1][None, :, None, :].expand(t, h, w, -1),
        axes[2][None, None, :, :].expand(t, h, w, -1),
    ], dim=-1).reshape(t * h * w, -1)


def rope_3d(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0, extra: int = 0,
            device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (t*h*w + extra, head_dim/2), for raster-ordered grid tokens followed by `extra`
    position-free tokens (identity rotation; 1D latent tokens carry learned embeddings instead)."""
    angles = grid_angles(grid, head_dim, theta, device)
    if extra:
        angles = torch.cat([angles, angles.new_zeros(extra, angles.shape[1])])
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., L, head_dim) by the angles in cos/sin (L, head_dim/2); halves form the rotation pairs."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def sincos_3d(grid: tuple[int, int, int], dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Fixed sin/cos absolute embedding (t*h*w, dim) of a token grid, any size (for position-only query tokens
    such as a 1D decoder's mask tokens, which RoPE alone cannot tell apart before attention mixes them)."""
    angles = grid_angles(grid, dim, 10000.0, device)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
