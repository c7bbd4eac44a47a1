"""The one place where uint8 frames (T,H,W,3) and model tensors (B,3,T,H,W) in [-1, 1] meet."""
from __future__ import annotations

import numpy as np
import torch


def frames_to_tensor(frames: np.ndarray | torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 RGB frames ``(T,H,W,3)`` (or a batch ``(B,T,H,W,3)``) -> float32 ``(B,3,T,H,W)`` in [-1, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if x.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8, got {x.dtype}")
    if x.ndim == 4:
        x = x.unsqueeze(0)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (T,H,W,3) or (B,T,H,W,3), got {tuple(x.shape)}")
    x = x.to(device) if device is not None else x
    return x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float ``(3,T,H,W)`` or ``(1,3,T,H,W)`` in [-1, 1] -> uint8 ``(T,H,W,3)`` (rounded, clamped).

    A batch ``(B,3,T,H,W)`` with ``B > 1`` gives ``(B,T,H,W,3)``.
    """
    if x.ndim == 4:
        x = x.unsqueeze(0)
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"tensor must be (3,T,H,W) or (B,3,T,H,W), got {tuple(x.shape)}")
    y = x.detach()   # one float temporary at most: a float32 input is clamped into a copy, another dtype's cast
    y = y.clamp(-1, 1) if y.dtype == torch.float32 else y.float().clamp_(-1, 1)   # is that copy; then in place
    y = y.add_(1.0).mul_(127.5).round_().to(torch.uint8)
    y = y.permute(0, 2, 3, 4, 1).cpu().numpy()
    return y[0] if y.shape[0] == 1 else y
