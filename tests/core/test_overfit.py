"""Each family overfits a clip quickly (loss falls 10x); the 1D model's prefixes of 1, 2, 4, 8 tokens improve in
turn."""
from __future__ import annotations

import pytest
import torch

import vitok

# name, overrides, clip (frames, height, width, batch), steps
CASES = {
    "vit-tiny": ({}, (8, 32, 32, 1), 60),
    "cnn-tiny": ({}, (5, 32, 32, 1), 60),
    # 8 clips, so the tokens must tell them apart; deterministic bottleneck: the prefix property, not the KL
    "vit1d-tiny": ({"clip_frames": 4, "variational": False}, (4, 16, 16, 8), 150),
}


def fit(name: str, clip, steps: int | None = None):
    overrides, (T, H, W, B), default_steps = CASES[name]
    torch.manual_seed(0)
    tok = vitok.create_model(name, **overrides)
    video = clip(T, H, W, batch=B, seed=3)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    first = None
    for _ in range(steps or default_steps):
        out = tok(video)
        loss = (out["recon"] - video).square().mean() + 1e-4 * out["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    return tok.freeze(), video, first


def error(tok, video, num_tokens=None) -> float:
    return (tok.decode(tok.encode(video, num_tokens=num_tokens)) - video).square().mean().item()


@pytest.mark.parametrize("name", ["vit-tiny", "cnn-tiny"])
def test_overfits_one_clip(clip, name):
    tok, video, first = fit(name, clip)
    assert error(tok, video) < first / 10


def test_1d_overfits_and_prefixes_decode(clip):
    tok, video, first = fit("vit1d-tiny", clip)
    errors = [error(tok, video, k) for k in range(1, tok.max_tokens + 1)]
    assert errors[-1] < first / 10
    assert errors[-1] < errors[0]  # all K tokens beat the first token alone
    assert errors[0] > errors[1] > errors[3] > errors[7]   # and prefixes of 1, 2, 4, 8 tokens improve in turn
    for k in (1, 5, tok.max_tokens):
        lat = tok.encode(video, num_tokens=k)
        assert lat.num_tokens == k and lat.z.shape == (8, 16, 8)
        assert (lat.z[:, k:] == 0).all()
        assert lat.mask is None if k == tok.max_tokens else lat.mask.sum(1).eq(k).all()
