"""Distortion weights: the pixel cost of a one-step quantization error per latent channel, estimated with random
probes, agree with the decoder's exact Jacobian."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitok.codecs.distortion import distortion_weights


@pytest.mark.parametrize("name", ["vit-tiny", "cnn-tiny"])
def test_weights_match_the_decoders_jacobian(name):
    import vitok
    from vitok.data.convert import frames_to_tensor

    torch.manual_seed(0)
    tok = vitok.create_model(name).freeze()
    clip = np.random.default_rng(0).integers(0, 256, (tok.clip_frames, 32, 32, 3), dtype=np.uint8)
    latents = tok.encode(frames_to_tensor(clip)).mode()
    std = np.linspace(0.5, 2.0, tok.latent_channels)   # a channel's error is in steps of its scale
    n, eps = latents.z[0].numel(), 1e-2   # every Jacobian column by central differences, in one batch
    basis = torch.eye(n).reshape(n, *latents.z.shape[1:]) * eps
    with torch.no_grad():
        columns = (tok.decode(latents._replace(z=latents.z + basis)) -
                   tok.decode(latents._replace(z=latents.z - basis))) / (2 * eps)
    norms = columns.reshape(n, -1).double().pow(2).sum(1).reshape(latents.z.shape[1:]).mean(0).numpy()
    exact = norms * std ** 2
    exact /= exact.mean()
    estimate = distortion_weights(tok, std, [clip], probes=64)
    assert estimate.shape == exact.shape and estimate.mean() == pytest.approx(1)
    assert np.abs(estimate / exact - 1).max() < 0.15, (estimate, exact)
    assert exact.max() / exact.min() > 3   # the channels differ: a check that uniform weights would fail
    assert np.array_equal(distortion_weights(tok, std, [clip], probes=2),
                          distortion_weights(tok, std, [clip], probes=2))   # seeded: the same tables each time
    with pytest.raises(ValueError, match="at least one clip"):
        distortion_weights(tok, std, [])
