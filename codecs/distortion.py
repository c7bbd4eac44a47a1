"""What a quantization error in each latent channel costs in pixels: the weights of rate-distortion rounding.

A small error ``e`` in latent value ``i`` moves the decoded video by about ``J_i e`` (``J_i``: the decoder's Jacobian
column), a squared pixel error of ``|J_i|^2 e^2``. The quantizer's errors are in steps of the channel's scale
``std_c``, so a channel's weight is ``std_c^2`` times the mean ``|J_i|^2`` over its values. ``|J_i|^2`` is estimated
without forming ``J``: for random +-1 pixels ``r``, ``E[(r^T J)_i^2] = |J_i|^2`` (Hutchinson's estimator), one
backward pass through the decoder per probe.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np
import torch

PROBES = 2   # backward passes per clip; a channel's weight averages thousands of values, so few are enough
MAX_CLIPS = 32   # clips measured, spread evenly over those given
MAX_SIDE = 128   # each clip's central crop: the decoder's sensitivity, not the picture's size, is what is measured


def distortion_weights(tok: Any, std: np.ndarray, clips: Iterable[Any] | None = None, probes: int = PROBES,
                       seed: int = 0) -> np.ndarray:
    """Per channel, the pixel cost of a one-step error relative to the other channels (mean 1), for a model ``tok``
    quantized with per-channel scale ``std``. ``clips``: uint8 ``(T, H, W, 3)`` videos or float ``(B, 3, T, H, W)``
    tensors in [-1, 1], of which at most ``MAX_CLIPS``, each cut to the model's ``clip_frames`` and its central
    ``MAX_SIDE`` pixels square (default: the sample clips' 17x128x128 training segments; never the eval ones)."""
    from vitok.data.convert import frames_to_tensor

    if clips is None:
        from vitok.data.samples import train_segments

        clips = [frames for _, frames in train_segments(num_frames=tok.clip_frames)]
    clips = list(clips)
    clips = clips[::max(1, -(-len(clips) // MAX_CLIPS))]
    generator = torch.Generator().manual_seed(seed)
    total, count = None, 0
    for clip in clips:
        video = frames_to_tensor(clip) if isinstance(clip, np.ndarray) else clip
        video = _central(video[:, :, :tok.clip_frames]).to(tok.device)
        with torch.no_grad():
            latents = tok.encode(video)
        z = latents.z.detach().clone().requires_grad_(True)
        for _ in range(probes):
            with torch.enable_grad():
                out = tok.decode(dataclasses.replace(latents, z=z))
                signs = torch.randint(0, 2, out.shape, generator=generator).to(out) * 2 - 1
                (grad,) = torch.autograd.grad((out * signs).sum(), z)
            squares = grad.double().pow(2).reshape(-1, grad.shape[-1]).sum(0).cpu()
            total = squares if total is None else total + squares
            count += grad[..., 0].numel()
    if total is None:
        raise ValueError("distortion weights need at least one clip")
    weights = (total / count).numpy() * np.asarray(std, np.float64) ** 2
    return weights / weights.mean()


def _central(video: torch.Tensor) -> torch.Tensor:
    """The central ``MAX_SIDE`` x ``MAX_SIDE`` pixels (at most) of a ``(B, 3, T, H, W)`` video."""
    h, w = video.shape[-2:]
    top, left = max(0, (h - MAX_SIDE) // 2), max(0, (w - MAX_SIDE) // 2)
    return video[..., top:top + MAX_SIDE, left:left + MAX_SIDE]
