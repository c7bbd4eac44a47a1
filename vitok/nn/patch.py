"""Tubelet patchify/unpatchify and space-to-depth, as pure reshapes (the linear maps live in the models)."""
from __future__ import annotations

import torch


def patchify(x: torch.Tensor, pt: int, p: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(B,C,T,H,W) -> tokens (B, t*h*w, C*pt*p*p) in raster (t,h,w) order, and the grid (t,h,w)."""
    B, C, T, H, W = x.shape
    t, h, w = T // pt, H // p, W // p
    x = x.reshape(B, C, t, pt, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(B, t * h * w, C * pt * p * p), (t, h, w)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], pt: int, p: int) -> torch.Tensor:
    """Inverse of `patchify`: (B, t*h*w, C*pt*p*p) -> (B,C,t*pt,h*p,w*p)."""
    B = tokens.shape[0]
    t, h, w = grid
    C = tokens.shape[-1] // (pt * p * p)
    x = tokens.reshape(B, t, h, w, C, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(B, C, t * pt, h * p, w * p)


def space_to_depth(x: torch.Tensor, f: int) -> torch.Tensor:
    """(B,C,T,H,W) -> (B, C*f*f, T, H/f, W/f): fold f x f pixel blocks into channels."""
    B, C, T, H, W = x.shape
    x = x.reshape(B, C, T, H // f, f, W // f, f).permute(0, 1, 4, 6, 2, 3, 5)
    return x.reshape(B, C * f * f, T, H // f, W // f)


def depth_to_space(x: torch.Tensor, f: int) -> torch.Tensor:
    """Inverse of `space_to_depth`."""
    B, C, T, H, W = x.shape
    c = C // (f * f)
    x = x.reshape(B, c, f, f, T, H, W).permute(0, 1, 4, 5, 2, 6, 3)
    return x.reshape(B, c, T, H * f, W * f)
