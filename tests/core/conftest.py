"""Shared fixtures for the core tests: one CPU thread, deterministic smooth synthetic clips."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test in this folder runs on one torch thread."""


def smooth_clip(frames: int, height: int, width: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A moving colour pattern (B,3,T,H,W) in [-1,1]: smooth enough for tiny models to fit quickly."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames)[:, None, None].float()
    y = torch.arange(height)[None, :, None].float()
    x = torch.arange(width)[None, None, :].float()
    clips = []
    for _ in range(batch):
        a, b, c, d = (torch.rand(4, generator=g) * 0.3 + 0.1).tolist()
        phase = float(torch.rand(1, generator=g)) * 6.28
        r = torch.sin(a * x + 0.5 * t + phase) * torch.cos(b * y)
        gr = torch.cos(c * (x + y) - 0.4 * t + phase)
        bl = torch.sin(d * y - 0.3 * t + 0.1 * x)
        clips.append(0.8 * torch.stack([r, gr, bl]))
    return torch.stack(clips)


@pytest.fixture
def clip():
    return smooth_clip
