"""The diffusers-shaped adapter: latent_dist / sample / config.scaling_factor, with the shapes pipelines expect."""
from __future__ import annotations

import pytest
import torch

import vitok
from vitok.adapters import LatentDistribution


@pytest.fixture(scope="module")
def grid():
    torch.manual_seed(0)
    tok = vitok.create_model("cnn-tiny").freeze()
    tok.set_latent_stats([0.5] * 16, [2.0] * 16)
    return vitok.DiffusersAdapter(tok)


def test_video_shapes(grid, clip):
    x = clip(9, 32, 48, batch=2)
    dist = grid.encode(x).latent_dist
    assert dist.mean.shape == (2, 16, 3, 4, 6)  # (B, C, t, h, w) like AutoencoderKLWan / CogVideoX
    g = torch.Generator().manual_seed(0)
    z = dist.sample(generator=g) * grid.config.scaling_factor
    assert z.shape == dist.mode().shape and dist.kl().shape == (2,)
    out = grid.decode(z / grid.config.scaling_factor).sample
    assert out.shape == x.shape
    assert grid.config.scaling_factor == 1.0 and grid.config.shift_factor == 0.0
    assert grid.config.spatial_compression_ratio == 8 and grid.config.temporal_compression_ratio == 4
    # the adapter hands out normalized latents and undoes it on decode
    lat = grid.tok.encode(x)
    torch.testing.assert_close(dist.mode(), lat.normalized().as_grid())
    torch.testing.assert_close(grid.decode(dist.mode()).sample, grid.tok.decode(lat))


def test_image_shapes(grid, clip):
    x = clip(1, 32, 40)[:, :, 0]
    dist = grid.encode(x).latent_dist
    assert dist.mean.shape == (1, 16, 4, 5)  # (B, C, h, w) like AutoencoderKL
    assert grid.decode(dist.mode()).sample.shape == (1, 3, 32, 40)


def test_vit_multi_chunk_shapes(clip):
    torch.manual_seed(0)
    adapter = vitok.DiffusersAdapter(vitok.create_model("vit-tiny").freeze())
    x = clip(16, 16, 16)
    z = adapter.encode(x).latent_dist.mode()
    assert z.shape == (1, 8, 4, 2, 2)
    assert adapter.decode(z).sample.shape == (1, 3, 16, 16, 16)


def test_1d_shapes(clip):
    torch.manual_seed(0)
    tok = vitok.create_model("vit1d-tiny").freeze()
    adapter = vitok.DiffusersAdapter(tok, sample_size=(8, 32, 32))
    z = adapter.encode(clip(8, 32, 32)).latent_dist.sample()
    assert z.shape == (1, 8, 16)  # (B, C, N)
    assert adapter.decode(z).sample.shape == (1, 3, 8, 32, 32)
    assert adapter.config.spatial_compression_ratio is None is adapter.config.temporal_compression_ratio
    # the tokens carry no geometry, so an input of another size than sample_size would decode wrong: refused
    with pytest.raises(vitok.VitokError, match=r"decode at sample_size=\(8, 32, 32\).*input is \(16, 32, 32\): "
                                               r"make the adapter with sample_size=\(16, 32, 32\)"):
        adapter.encode(clip(16, 32, 32))
    with pytest.raises(vitok.VitokError, match=r"input is \(1, 32, 32\)"):
        adapter.encode(clip(1, 32, 32)[:, :, 0])
    two_units = vitok.DiffusersAdapter(tok, sample_size=(16, 32, 32))
    longer = two_units.encode(clip(16, 32, 32)).latent_dist.mode()  # more tokens than one unit holds
    with pytest.raises(vitok.VitokError, match=r"32 latent tokens do not fit sample_size=\(8, 32, 32\)"):
        adapter.decode(longer)
    assert two_units.decode(longer).sample.shape == (1, 3, 16, 32, 32)
    # a prefix (the first k tokens of every unit, as `vitok extract --tokens k` keeps) decodes as the model's own
    video = clip(16, 32, 32)
    lat = tok.encode(video, num_tokens=5).normalized()
    prefix = lat.z.view(1, 2, 16, 8)[:, :, :5].reshape(1, 10, 8).transpose(1, 2)
    torch.testing.assert_close(two_units.decode(prefix, num_tokens=5).sample, tok.decode(lat))
    with pytest.raises(vitok.VitokError, match=r"10 latent tokens do not fit .* or pass num_tokens=5 if"):
        two_units.decode(prefix)   # not guessed: a whole latent of another geometry would decode as a prefix
    one_unit = adapter.encode(clip(8, 32, 32)).latent_dist.mode()   # 16 tokens: a full unit, or 8 of each of two
    with pytest.raises(vitok.VitokError, match=r"16 latent tokens do not fit sample_size=\(16, 32, 32\)"):
        two_units.decode(one_unit)
    images = vitok.DiffusersAdapter(tok, sample_size=(1, 32, 32))   # an image adapter: images in, images out
    x = clip(1, 32, 32)[:, :, 0]
    z = images.encode(x).latent_dist.mode()
    assert z.shape == (1, 8, 16) and images.decode(z).sample.shape == (1, 3, 32, 32)
    torch.testing.assert_close(images.decode(z).sample, tok.decode(tok.encode(x.unsqueeze(2)))[:, :, 0])


def test_matches_diffusers_distribution(grid, clip):
    """The same mean, std and KL as diffusers' own class (the [test] extra installs it). diffusers sums the KL over
    dims 1-3 only, which for a video latent (B, C, T, H, W) leaves one value per column; ours is one per item, the
    same numbers summed over W, and identical for an image latent (B, C, H, W)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    dist = grid.encode(clip(5, 16, 16)).latent_dist
    ref = DiagonalGaussianDistribution(torch.cat([dist.mean, dist.logvar], dim=1))
    assert ref.mode().shape == dist.mode().shape and dist.kl().shape == (1,)
    torch.testing.assert_close(ref.std, dist.std)
    torch.testing.assert_close(ref.kl().sum(-1), dist.kl())
    image = LatentDistribution(dist.mean[:, :, 0], dist.logvar[:, :, 0])
    ref = DiagonalGaussianDistribution(torch.cat([image.mean, image.logvar], dim=1))
    torch.testing.assert_close(ref.kl(), image.kl())
    assert float(dist.kl()[0]) > 0


def test_whole_frames_unless_tiling_enabled(clip):
    """Like diffusers' AutoencoderKL: no tiling by default, so frames above the model's tile size still give one
    latent grid; enable_tiling() restores the tokenizer's tiles (then the grid view is refused clearly)."""
    torch.manual_seed(0)
    tok = vitok.create_model("vit-tiny").freeze()  # tile_size 64
    seen = []  # the tokenizer's config is never touched, so other threads using `tok` keep its tiles
    encode_unit, decode_unit = tok.encode_unit, tok.decode_unit
    tok.encode_unit = lambda *a: (seen.append(tok.config.tile_size), encode_unit(*a))[1]
    tok.decode_unit = lambda *a: (seen.append(tok.config.tile_size), decode_unit(*a))[1]
    vae = vitok.DiffusersAdapter(tok)
    x = clip(8, 80, 96)
    dist = vae.encode(x).latent_dist
    assert dist.mean.shape == (1, 8, 2, 10, 12)
    assert vae.decode(dist.mode()).sample.shape == x.shape
    assert seen and set(seen) == {64}
    vae.enable_tiling()
    with pytest.raises(vitok.VitokError, match=r"80x96 frames split into 2x2 tiles .*tok\.encode/tok\.decode"):
        vae.encode(x)
    small = clip(8, 48, 64)   # one tile: tiling changes nothing
    assert vae.encode(small).latent_dist.mean.shape == (1, 8, 2, 6, 8)
    vae.disable_tiling()
    assert vae.encode(x).latent_dist.mean.shape == (1, 8, 2, 10, 12)


def test_latents_of_the_wrong_layout_are_refused_by_name(grid):
    for z in (torch.zeros(1, 16, 16), torch.zeros(1, 5, 2, 2, 2), "z"):
        with pytest.raises(vitok.VitokError, match=r"DiffusersAdapter: latents must be \(B, C, t, h, w\) or"):
            grid.decode(z)


def test_an_empty_geometry_is_a_vitok_error():
    tok = vitok.create_model("vit-tiny")
    with pytest.raises(vitok.VitokError, match="empty video geometry 0x32x32"):
        tok.make_latents(torch.zeros(1, 4, 8), 0, 32, 32)
