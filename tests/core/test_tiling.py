"""Spatial tiles: blend weights partition unity; tiled decode matches untiled and shows no seam."""
from __future__ import annotations

import pytest
import torch

import vitok
from vitok.geometry import Axis, blend_weights, plan, plan_axis


@pytest.mark.parametrize("fit", [False, True])
@pytest.mark.parametrize("size", [(64, 64), (100, 37), (130, 260)])
def test_blend_weights_sum_to_one(size, fit):
    g = plan(1, *size, clip_frames=1, unit_frames=lambda n: n, stride=8, tile_size=48, tile_overlap=0.25,
             fit_tiles=fit)
    total = torch.zeros(g.rows.padded, g.cols.padded)
    for i, j, y0, x0 in g.tiles():
        total[y0:y0 + g.rows.tile, x0:x0 + g.cols.tile] += blend_weights(g, i, j)
    torch.testing.assert_close(total, torch.ones_like(total))
    assert g.rows.padded >= size[0] and g.cols.padded >= size[1]


def test_blend_weights_sum_to_one_up_to_the_largest_overlap_a_config_takes():
    """Fitted tiles shrink, so their overlap is a larger share of them: past MAX_TILE_OVERLAP three tiles meet
    somewhere and the weights sum above 1 (0.45 does in 28 of the 2097 cases swept here); configs refuse such
    overlaps."""
    from vitok.config import MAX_TILE_OVERLAP
    from vitok.data.errors import VitokError
    from vitok.geometry import ramp

    for stride, tile in ((8, 64), (16, 128), (4, 32)):
        for size in range(1, 700):
            axis = plan_axis(size, stride, tile, MAX_TILE_OVERLAP, fit=True)
            total = torch.zeros(axis.padded)
            for i in range(axis.count):
                total[i * axis.step:i * axis.step + axis.tile] += ramp(axis, i)
            torch.testing.assert_close(total, torch.ones_like(total), msg=f"size {size}, stride {stride}")
    with pytest.raises(VitokError, match=r"tile_overlap must be in \[0, 0.4\]"):
        vitok.create_model("vit-tiny", tile_overlap=0.45)


def test_fitted_tiles_cover_the_frame_with_least_padding():
    """Fitted tiles: as many as fixed ones, each a multiple of the stride no larger than the tile, covering the
    axis with under one stride of padding per tile (fixed tiles pad 720 px to 1024 at tile 256, overlap 64)."""
    assert plan_axis(720, 8, 256, 0.25) == Axis(256, 4, 192, 832)
    assert plan_axis(720, 8, 256, 0.25, fit=True) == Axis(232, 4, 168, 736)
    for size in range(1, 1300, 7):
        for tile, frac in ((256, 0.25), (256, 0.125), (64, 0.0), (48, 0.25)):
            fixed, fit = plan_axis(size, 8, tile, frac), plan_axis(size, 8, tile, frac, fit=True)
            padded = -(-size // 8) * 8
            assert fit.count == fixed.count and fit.tile <= fixed.tile and fit.tile % 8 == 0
            assert fit.overlap == fixed.overlap and padded <= fit.padded < padded + 8 * fit.count


def test_patchwise_model_tiles_exactly(clip):
    """A ViT without blocks maps each tubelet alone, so tiling must not change its output at all."""
    torch.manual_seed(0)
    tiled = vitok.create_model("vit-tiny", enc_depth=0, dec_depth=0, tile_size=32).freeze()
    whole = vitok.create_model("vit-tiny", enc_depth=0, dec_depth=0, tile_size=None).freeze()
    whole.load_state_dict(tiled.state_dict())
    video = clip(4, 70, 90)
    lat = tiled.encode(video)
    assert lat.layout[1:] == (3, 4)
    torch.testing.assert_close(tiled.decode(lat), whole.decode(whole.encode(video)), atol=1e-5, rtol=1e-5)


def _steps(e: torch.Tensor) -> torch.Tensor:
    """Mean |e[..., c] - e[..., c-1]| for every column c >= 1 (index c - 1)."""
    return (e[..., 1:] - e[..., :-1]).abs().mean(dim=(0, 1, 2, 3))


def _tiled_vs_whole(clip, overlap: float):
    torch.manual_seed(0)
    tiled = vitok.create_model("cnn-tiny", tile_size=128, tile_overlap=overlap).freeze()
    whole = vitok.create_model("cnn-tiny", tile_size=None).freeze()
    whole.load_state_dict(tiled.state_dict())
    video = clip(5, 64, 352)
    g = tiled.plan(5, 64, 352)
    assert tiled.encode(video).layout == (1, 1, g.cols.count) and g.cols.count >= 3
    edges = sorted({x for _, _, _, x0 in g.tiles() for x in (x0, x0 + g.cols.tile) if 0 < x < 352})
    return tiled.decode(tiled.encode(video)), whole.decode(whole.encode(video)), edges


def test_cnn_tiles_without_seams(clip):
    """A local (convolutional) model: tiled output stays close to untiled, and the difference between them
    has no step at tile borders (hard-cut tiles, overlap 0, do show one: the check can see a seam)."""
    a, b, edges = _tiled_vs_whole(clip, 0.25)
    texture = _steps(b).median()  # typical pixel-to-pixel change of the output itself
    assert (a - b).abs().mean() < 0.1 * b.abs().mean()
    assert _steps(a - b)[[e - 1 for e in edges]].max() < 0.05 * texture
    hard, b, edges = _tiled_vs_whole(clip, 0.0)
    assert _steps(hard - b)[[e - 1 for e in edges]].max() > 0.2 * texture


def test_untiled_call_matches_untiled_model(clip):
    """`encode(..., tiled=False)` codes whole frames without touching the config; `decode` follows the Latents."""
    torch.manual_seed(0)
    tok = vitok.create_model("vit-tiny", tile_size=32).freeze()
    whole = vitok.create_model("vit-tiny", tile_size=None).freeze()
    whole.load_state_dict(tok.state_dict())
    video = clip(4, 70, 90)
    lat = tok.encode(video, tiled=False)
    assert lat.layout == (1, 1, 1) and not lat.tiled and tok.config.tile_size == 32
    torch.testing.assert_close(tok.decode(lat), whole.decode(whole.encode(video)))
    assert tok.encode(video).layout[1:] == (3, 4)
    with pytest.raises(vitok.VitokError, match="1D models"):
        vitok.create_model("vit1d-tiny").freeze().encode(video, tiled=False)


def test_an_overlap_per_call_matches_a_model_configured_with_it(clip):
    """`encode(..., tile_overlap=f)` cuts tiles as a model whose config says f, without touching the config; the
    Latents carry it to `decode` and `make_latents` rebuilds them; a bad overlap is refused before any work."""
    torch.manual_seed(0)
    tok = vitok.create_model("cnn-tiny", tile_size=128, tile_overlap=0.25).freeze()
    other = vitok.create_model("cnn-tiny", tile_size=128, tile_overlap=0.0625).freeze()
    other.load_state_dict(tok.state_dict())
    video = clip(5, 64, 352)
    lat = tok.encode(video, tile_overlap=0.0625)
    ref = other.encode(video)
    assert lat.tile_overlap == 0.0625 and tok.config.tile_overlap == 0.25 and ref.tile_overlap is None
    assert lat.z.shape == ref.z.shape and lat.z.shape[1] < tok.encode(video).z.shape[1]   # fewer tokens
    torch.testing.assert_close(lat.z, ref.z)
    torch.testing.assert_close(tok.decode(lat), other.decode(ref))
    again = tok.make_latents(lat.z, 5, 64, 352, tile_overlap=0.0625)
    torch.testing.assert_close(tok.decode(again), other.decode(ref))
    assert tok.latent_shape(5, 64, 352, tile_overlap=0.0625) == tuple(lat.z.shape[1:])
    assert tok.encode(video, tile_overlap=0.25).tile_overlap is None   # the config's own: nothing to remember
    with pytest.raises(vitok.VitokError, match="do not fit"):   # tokens cut with one overlap, planned with another
        tok.make_latents(lat.z, 5, 64, 352)
    for bad in (0.5, -0.1, float("nan"), "0.1", True):
        with pytest.raises(vitok.VitokError, match=r"tile_overlap must be a number in \[0, 0.4\]"):
            tok.encode(video, tile_overlap=bad)


@pytest.mark.parametrize("T,H,W,frames,ph,pw", [(4, 16, 16, 20, 0, 0), (3, 5, 16, 4, 3, 9), (1, 2, 3, 4, 9, 30),
                                                (4, 16, 3, 8, 15, 2), (2, 1, 1, 4, 7, 7)])
def test_a_tile_padded_on_its_own_equals_its_part_of_the_padded_chunk(T, H, W, frames, ph, pw):
    """encode pads each tile from its own pixels (memory for one tile, not a whole padded chunk): the values must
    be those of pad_chunk, reflection and replication alike, for every tile position."""
    from vitok.geometry import pad_chunk, pad_region

    x = torch.randn(1, 3, T, H, W)
    full = pad_chunk(x, frames, H + ph, W + pw)
    for th, tw in ((1, 1), ((H + ph) // 2 or 1, (W + pw) // 2 or 1), (H + ph, W + pw)):
        for y0 in range(H + ph - th + 1):
            for x0 in range(W + pw - tw + 1):
                assert torch.equal(pad_region(x, frames, H + ph, W + pw, y0, x0, th, tw),
                                   full[..., y0:y0 + th, x0:x0 + tw]), (y0, x0, th, tw)


@pytest.mark.parametrize("arch", ["vit-tiny", "cnn-tiny"])
def test_several_chunks_of_tiles_decode_as_each_chunk_alone(clip, arch):
    """Chunks code independently: a video of two whole chunks and a short last one, cut into tiles, decodes to
    each chunk's own decode laid end to end (the decoder fills one output with each chunk's real frames); the short
    chunk is coded padded to a whole one by repeating its last frame."""
    torch.manual_seed(0)
    tok = vitok.create_model(arch, tile_size=32).freeze()
    n = tok.clip_frames
    video = clip(2 * n + 3, 40, 56)
    lat = tok.encode(video)
    assert lat.layout[0] == 3 and lat.layout[1] * lat.layout[2] > 1
    out = tok.decode(lat)
    last = video[:, :, 2 * n:]
    last = torch.cat([last, last[:, :, -1:].expand(-1, -1, n - 3, -1, -1)], dim=2)
    parts = [tok.decode(tok.encode(part)) for part in (video[:, :, :n], video[:, :, n:2 * n], last)]
    assert out.shape == video.shape
    torch.testing.assert_close(out, torch.cat(parts, dim=2)[:, :, :2 * n + 3], atol=1e-6, rtol=1e-6)
