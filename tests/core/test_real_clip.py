"""All three families through the same API on a real sample clip (odd crop, frames not a multiple of 4)."""
from __future__ import annotations

import pytest
import torch

import vitok
from vitok.data.convert import frames_to_tensor, tensor_to_frames


@pytest.fixture(scope="module")
def frames():
    from vitok.data.io import read_video
    from vitok.data.samples import sample_path

    video, _ = read_video(sample_path("carphone"), num_frames=6)
    return video[:, :61, :83]  # (T, H, W, 3) uint8, odd size


@pytest.mark.parametrize("name", ["vit-tiny", "vit1d-tiny", "cnn-tiny"])
def test_family_on_real_clip(frames, name):
    torch.manual_seed(0)
    tok = vitok.create_model(name).freeze()
    video = frames_to_tensor(frames)
    lat = tok.encode(video)
    out = tensor_to_frames(tok.decode(lat))
    assert out.shape == frames.shape and out.dtype == frames.dtype
    assert lat.z.shape[1:] == tok.latent_shape(*frames.shape[:3])
