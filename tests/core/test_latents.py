"""Latents: normalization, sampling, grids, collate, make_latents (the codec path)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import vitok
from vitok.data.errors import VitokError
from vitok.adapters import LatentDistribution
from vitok.latents import Latents, collate, gaussian_noise


@pytest.fixture(scope="module")
def grid_tok():
    torch.manual_seed(0)
    return vitok.create_model("vit-tiny").freeze()


@pytest.fixture(scope="module")
def tok1d():
    torch.manual_seed(0)
    return vitok.create_model("vit1d-tiny").freeze()


def test_normalized_roundtrip(clip):
    tok = vitok.create_model("vit-tiny").freeze()
    lat = tok.encode(clip(4, 16, 16))
    assert torch.equal(lat.normalized().z, lat.z)  # no statistics: identity
    mean, std = torch.linspace(-1, 1, 8), torch.linspace(0.5, 2, 8)
    tok.set_latent_stats(mean, std)
    assert tok.config.latent_mean == pytest.approx(mean.tolist())
    lat = tok.encode(clip(4, 16, 16))
    norm = lat.normalized()
    assert norm.is_normalized and norm.normalized() is norm
    torch.testing.assert_close(norm.z, (lat.z - mean) / std)
    torch.testing.assert_close(norm.logvar, lat.logvar - 2 * std.log())
    back = norm.denormalized()
    torch.testing.assert_close(back.z, lat.z)
    torch.testing.assert_close(tok.decode(norm), tok.decode(lat))  # decode accepts either space
    with pytest.raises(VitokError, match="latent_mean has 3 values"):
        tok.set_latent_stats([0.0] * 3, [1.0] * 3)
    with pytest.raises(VitokError, match="latent_std must be finite"):
        tok.set_latent_stats(mean, [float("nan")] * len(mean))
    # a refused call leaves the statistics as they were (a refused 3-channel call left 3 values: normalizing broke)
    assert tok.config.latent_mean == pytest.approx(mean.tolist())
    assert tok.config.latent_std == pytest.approx(std.tolist())
    again = tok.encode(clip(4, 16, 16))
    torch.testing.assert_close(again.normalized().z, (again.z - mean) / std)


def test_sample_mode_kl(grid_tok, clip):
    lat = grid_tok.encode(clip(4, 16, 16))
    assert lat.logvar is not None and lat.logvar.shape == lat.z.shape
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    s1, s2 = lat.sample(g1), lat.sample(g2)
    assert torch.equal(s1.z, s2.z) and not torch.equal(s1.z, lat.z) and s1.logvar is None
    assert torch.equal(lat.mode().z, lat.z) and lat.mode().logvar is None
    assert lat.kl().shape == (1,) and lat.kl().item() > 0
    assert lat.mode().kl().item() == 0


def test_sample_draws_from_the_generator_whatever_the_latents_device(grid_tok, clip):
    """A CPU generator drives the noise of latents on another device (drawn there, then moved), as diffusers does;
    'meta' stands in for a GPU: drawing on the latents' device ignored the CPU generator."""
    lat = grid_tok.encode(clip(4, 16, 16))
    far = dataclasses.replace(lat, z=lat.z.to("meta"), logvar=lat.logvar.to("meta"))
    g = torch.Generator().manual_seed(3)
    before = g.get_state().clone()
    assert far.sample(g).z.device.type == "meta"
    assert not torch.equal(g.get_state(), before)
    dist = LatentDistribution(lat.z.to("meta"), lat.logvar.to("meta"))
    again = g.get_state().clone()
    assert dist.sample(generator=g).device.type == "meta" and not torch.equal(g.get_state(), again)
    # the draw is the generator's: the same seed gives the same noise on the latents' own device
    eps = gaussian_noise(lat.z, torch.Generator().manual_seed(3))
    torch.testing.assert_close(eps, torch.randn(lat.z.shape, generator=torch.Generator().manual_seed(3)))


def test_as_grid(grid_tok, clip):
    lat = grid_tok.encode(clip(12, 16, 24))  # two chunks of 8 frames -> 2 latent frames each
    grid = lat.as_grid()
    assert grid.shape == (1, 8, 4, 2, 3)
    torch.testing.assert_close(grid[:, :, 0, 1, 2], lat.z[:, 5])
    with pytest.raises(VitokError, match="tile"):
        grid_tok.encode(clip(4, 72, 16)).as_grid()


def test_as_grid_refuses_1d(tok1d, clip):
    with pytest.raises(VitokError, match="grid"):
        tok1d.encode(clip(4, 16, 16)).as_grid()


def test_to_device(grid_tok, clip):
    lat = grid_tok.encode(clip(4, 16, 16))
    moved = lat.to("meta", non_blocking=True)   # a device the latents are not on: a .to that did nothing fails
    assert moved.z.device.type == moved.logvar.device.type == "meta" and lat.z.device.type == "cpu"
    cast = lat.normalized().to(torch.float64)
    assert cast.z.dtype == cast.logvar.dtype == torch.float64 and cast.is_normalized
    assert (cast.frames, cast.height, cast.width, cast.layout, cast.grid, cast.model) == \
        (lat.frames, lat.height, lat.width, lat.layout, lat.grid, lat.model)
    torch.testing.assert_close(cast.z, lat.normalized().z.double())


def test_to_passes_non_blocking_to_every_tensor(grid_tok, clip, monkeypatch):
    """non_blocking reaches each tensor's own .to (z, logvar and the mask): a copy dropping it would block on
    every pinned-memory transfer, with nothing on a CPU-only run to show it."""
    lat = grid_tok.encode(clip(4, 16, 16))
    lat = dataclasses.replace(lat, mask=torch.ones(lat.z.shape[:2], dtype=torch.bool))
    seen = {}
    real = torch.Tensor.to

    def spy(self, *args, **kwargs):
        seen[id(self)] = kwargs.get("non_blocking")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    for flag in (True, False):
        seen.clear()
        moved = lat.to(torch.float64, non_blocking=flag)
        assert moved.z.dtype == moved.logvar.dtype == torch.float64 and moved.mask.dtype == torch.bool
        assert [seen.get(id(t)) for t in (lat.z, lat.logvar, lat.mask)] == [flag] * 3, flag


def test_gradients_flow_through_a_frozen_model(grid_tok, clip):
    """A loss through the frozen decoder (or encoder) reaches its input; the weights get no gradient, and inputs
    without one still run under inference_mode."""
    lat = grid_tok.encode(clip(4, 16, 16))
    assert not lat.z.requires_grad and not grid_tok.decode(lat).requires_grad
    z = lat.z.clone().requires_grad_()
    out = grid_tok.decode(dataclasses.replace(lat, z=z))
    assert out.requires_grad
    out.square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    video = clip(4, 16, 16).requires_grad_()
    grid_tok.encode(video).z.sum().backward()
    assert video.grad is not None and video.grad.abs().sum() > 0
    assert all(p.grad is None for p in grid_tok.parameters())
    with torch.no_grad():
        assert not grid_tok.decode(dataclasses.replace(lat, z=z)).requires_grad


def test_to_dtype_keeps_the_mask_boolean(tok1d, clip):
    """A dtype casts z and logvar only: a float mask would break decode's masking."""
    lat = tok1d.encode(clip(4, 16, 16), num_tokens=3)
    for half in (lat.to(torch.bfloat16), lat.to("cpu", torch.bfloat16), lat.to(dtype=torch.bfloat16)):
        assert half.z.dtype == half.logvar.dtype == torch.bfloat16 and half.mask.dtype == torch.bool
        assert torch.equal(half.mask, lat.mask)
        assert tok1d.decode(half).shape == (1, 3, 4, 16, 16)
    with pytest.raises(VitokError, match="floating"):
        lat.to(torch.int8)


def test_collate_same_geometry(tok1d, clip):
    a = tok1d.encode(clip(4, 16, 16, seed=1), num_tokens=3)
    b = tok1d.encode(clip(4, 16, 16, seed=2))
    batch = collate([a, b])
    assert batch.z.shape == (2, 16, 8) and batch.sizes is None
    assert batch.mask[0].sum() == 3 and batch.mask[1].all()
    assert batch.num_tokens == 16
    assert tok1d.decode(batch).shape == (2, 3, 4, 16, 16)


def test_collate_mixed_geometry(grid_tok, clip):
    a = grid_tok.encode(clip(4, 16, 16)).mode()
    b = grid_tok.encode(clip(12, 16, 24)).mode()
    batch = collate([a, b])
    assert batch.z.shape == (2, b.z.shape[1], 8)
    assert batch.mask[0].sum() == a.z.shape[1] and batch.mask[1].all()
    assert batch.sizes == [(4, 16, 16), (12, 16, 24)] and batch.layout is None
    torch.testing.assert_close(batch.z[0, : a.z.shape[1]], a.z[0])
    assert (batch.z[0, a.z.shape[1]:] == 0).all()
    with pytest.raises(VitokError, match="mixed"):
        grid_tok.decode(batch)
    # batches of mixed sizes collated again, with equal largest sizes: every item keeps its own
    c = grid_tok.encode(clip(4, 16, 20)).mode()
    again = collate([batch, collate([c, b])])
    assert again.batch_size == 4 and again.sizes == [(4, 16, 16), (12, 16, 24), (4, 16, 20), (12, 16, 24)]
    with pytest.raises(VitokError, match="log-variance"):
        collate([a, grid_tok.encode(clip(4, 16, 16))])


def test_collate_refuses_other_models(grid_tok, tok1d, clip):
    with pytest.raises(VitokError):
        collate([grid_tok.encode(clip(4, 16, 16)), tok1d.encode(clip(4, 16, 16))])


def test_make_latents_roundtrip(grid_tok, tok1d, clip):
    video = clip(9, 20, 30)
    for tok in (grid_tok, tok1d):
        lat = tok.encode(video)
        again = tok.make_latents(lat.z, 9, 20, 30)
        assert torch.equal(tok.decode(again), tok.decode(lat))
        with pytest.raises(VitokError, match="do not fit"):
            tok.make_latents(lat.z[:, 1:], 9, 20, 30)
    # 1D: a prefix-only tensor (units * k tokens) is zero-filled back to K per unit
    lat = tok1d.encode(video, num_tokens=5)
    units = lat.units
    prefix = lat.z.view(1, units, 16, 8)[:, :, :5].reshape(1, units * 5, 8)
    again = tok1d.make_latents(prefix, 9, 20, 30, num_tokens=5)
    assert torch.equal(again.z, lat.z) and torch.equal(again.mask, lat.mask)
    # ... and its (B, units * k) mask with it
    masked = tok1d.make_latents(prefix, 9, 20, 30, num_tokens=5, mask=torch.ones(1, units * 5, dtype=torch.bool))
    assert torch.equal(masked.z, lat.z) and torch.equal(masked.mask, lat.mask)
    with pytest.raises(VitokError, match=r"mask must be a bool tensor \(B, N\)"):
        tok1d.make_latents(prefix, 9, 20, 30, num_tokens=5, mask=torch.ones(1, units * 16, dtype=torch.bool))
    # ... and its logvar with it: a prefix's posterior samples and gives the KL of the encode's own
    assert lat.logvar is not None
    logvar = lat.logvar.view(1, units, 16, 8)[:, :, :5].reshape(1, units * 5, 8)
    posterior = tok1d.make_latents(prefix, 9, 20, 30, num_tokens=5, logvar=logvar)
    assert posterior.logvar.shape == lat.z.shape and torch.equal(posterior.kl(), lat.kl())
    assert posterior.sample(torch.Generator().manual_seed(0)).z.shape == lat.z.shape
    for bad, what in ((logvar[:, 1:], r"\(1, %d, 8\)" % (units * 5 - 1)), (logvar.numpy(), "ndarray")):
        with pytest.raises(VitokError, match=r"logvar must be a tensor shaped like z .*" + what):
            tok1d.make_latents(prefix, 9, 20, 30, num_tokens=5, logvar=bad)
    for bad, what in ((prefix[0], r"\(%d, 8\)" % (units * 5)), (prefix.numpy(), "ndarray")):
        with pytest.raises(VitokError, match=r"latents must be a tensor \(B, N, C\), got " + what):
            tok1d.make_latents(bad, 9, 20, 30, num_tokens=5)


def test_a_batch_codes_as_its_clips_alone(grid_tok, tok1d, clip):
    """Clips in one batch get the latents and reconstructions each gets alone (odd size, several tiles)."""
    video = torch.cat([clip(5, 20, 37, seed=1), clip(5, 20, 37, seed=2)])
    for tok in (grid_tok, tok1d):
        both = tok.encode(video).mode()
        out = tok.decode(both)
        for i in range(2):
            one = tok.encode(video[i:i + 1]).mode()
            torch.testing.assert_close(both.z[i:i + 1], one.z, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out[i:i + 1], tok.decode(one), atol=1e-5, rtol=1e-5)


def test_decode_refuses_a_mask_or_logvar_that_does_not_fit_z(tok1d, clip):
    """z replaced by a generator's fewer samples kept the template's mask, which broadcast them to its batch."""
    lat = tok1d.encode(torch.cat([clip(4, 16, 16, seed=1), clip(4, 16, 16, seed=2)]), num_tokens=4)
    with pytest.raises(VitokError, match=r"mask has shape \(2, 16\), their z \(1, 16, 8\)"):
        tok1d.decode(dataclasses.replace(lat.mode().normalized(), z=lat.z[:1]))
    with pytest.raises(VitokError, match=r"logvar has shape \(2, 16, 8\), their z \(1, 16, 8\)"):
        tok1d.decode(dataclasses.replace(lat, z=lat.z[:1], mask=lat.mask[:1]))


def test_latents_is_plain_dataclass():
    z = torch.zeros(1, 4, 2)
    lat = Latents(z=z, frames=1, height=8, width=8, layout=(1, 1, 1), grid=(1, 2, 2))
    assert lat.num_tokens == 4 and lat.channels == 2 and lat.batch_size == 1
    assert lat.normalized().is_normalized and lat.normalized().denormalized().z is z


def test_decode_refuses_another_models_latents_and_bare_tensors(grid_tok):
    """Two models whose latents have the same shape: decoding one's with the other gave garbage silently."""
    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    lat = grid_tok.encode(video)
    other = vitok.create_model("vit-tiny", latent_channels=lat.z.shape[-1])
    other.config.name = "some-other-model"
    with pytest.raises(VitokError, match="latents were made by model 'vit-tiny', this is 'some-other-model'"):
        other.freeze().decode(lat)
    with pytest.raises(VitokError, match="decode takes the vitok.Latents .* got Tensor"):
        grid_tok.decode(lat.z)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_decode_refuses_non_finite_latents(grid_tok, bad):
    """A diverged generator's NaN latents gave a NaN video, found only when it was written or scored."""
    lat = grid_tok.encode(torch.rand(1, 3, 8, 32, 32) * 2 - 1)
    z = lat.z.clone()
    z[0, 3, 1] = bad
    with pytest.raises(VitokError, match="latents hold NaN or infinite values"):
        grid_tok.decode(dataclasses.replace(lat, z=z))
    assert torch.isfinite(grid_tok.decode(lat)).all()


def test_encode_takes_any_integer_token_count_and_warns_on_a_0_255_video(tok1d):
    import numpy as np

    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    ref = tok1d.encode(video, num_tokens=4)
    for k in (np.int64(4), torch.tensor(4)):
        assert torch.equal(tok1d.encode(video, num_tokens=k).z, ref.z)
    for bad in (4.5, True):
        with pytest.raises(VitokError, match="num_tokens must be an integer"):
            tok1d.encode(video, num_tokens=bad)
    with pytest.warns(UserWarning, match=r"read as \(B,3,T,H,W\) 3 pixels wide; if it is \(B,T,H,W,3\)"):
        tok1d.encode(torch.zeros(1, 3, 32, 32, 3))   # 3 frames, channels last
    import warnings

    from vitok.data import frames_to_tensor

    with warnings.catch_warnings():   # a 3-px-wide video as frames_to_tensor gives it (the codecs, extract) is one
        warnings.simplefilter("error")
        tok1d.encode(frames_to_tensor(np.zeros((4, 32, 3, 3), dtype=np.uint8)))
    with pytest.warns(UserWarning, match="video values reach 25[0-9.]*: vitok models take \\[-1, 1\\]"):
        tok1d.encode((video + 1) * 127.5)
