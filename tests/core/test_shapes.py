"""Every family through the one API: odd sizes and frame counts, images, determinism, chunking and tiling."""
from __future__ import annotations

import math

import pytest
import torch

import vitok
from vitok.data.errors import VitokError

FAMILIES = ["vit-tiny", "vit1d-tiny", "cnn-tiny"]
GEOMETRIES = [(1, 33, 47), (5, 33, 47), (17, 32, 32), (20, 70, 40)]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: vitok.create_model(name).freeze() for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_encode_decode_shapes(models, clip, name, geometry):
    tok = models[name]
    T, H, W = geometry
    video = clip(T, H, W, batch=2)
    lat = tok.encode(video)
    N, C = tok.latent_shape(T, H, W)
    assert lat.z.shape == (2, N, C) and C == tok.latent_channels
    assert (lat.frames, lat.height, lat.width) == (T, H, W)
    chunks = 1 if T <= tok.clip_frames else math.ceil(T / tok.clip_frames)
    assert lat.layout[0] == chunks
    assert N == lat.units * lat.tokens_per_unit
    if tok.max_tokens is None:
        assert lat.grid is not None and math.prod(lat.grid) == lat.tokens_per_unit
    else:
        assert lat.grid is None and lat.tokens_per_unit == tok.max_tokens
    out = tok.decode(lat)
    assert out.shape == video.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_deterministic(models, clip, name):
    tok = models[name]
    video = clip(6, 40, 24)
    a, b = tok.encode(video), tok.encode(video)
    assert torch.equal(a.z, b.z)
    assert torch.equal(tok.decode(a), tok.decode(b))


def test_chunks_are_independent(models, clip):
    """Each temporal chunk is coded alone: encoding the chunks separately gives the same tokens."""
    tok = models["cnn-tiny"]
    video = clip(2 * tok.clip_frames, 16, 16)
    whole = tok.encode(video).z
    parts = [tok.encode(video[:, :, i * tok.clip_frames:(i + 1) * tok.clip_frames]).z for i in range(2)]
    torch.testing.assert_close(whole, torch.cat(parts, dim=1))


def test_cnn_is_causal(models, clip):
    """The first latent frame depends on the first frame only, so images and videos share one model."""
    tok = models["cnn-tiny"]
    video = clip(9, 16, 16)
    image = tok.encode(video[:, :, :1]).as_grid()
    first = tok.encode(video).as_grid()[:, :, :1]
    torch.testing.assert_close(image, first)
    assert tok.latent_shape(1, 16, 16)[0] == 4 and tok.latent_shape(9, 16, 16)[0] == 3 * 4


def test_bad_inputs(models):
    tok = models["vit-tiny"]
    with pytest.raises(VitokError, match=r"float tensor \(B,3,T,H,W\) in \[-1,1\], got \(3, 4, 16, 16\)"):
        tok.encode(torch.zeros(3, 4, 16, 16))
    with pytest.raises(VitokError, match=r"float tensor in \[-1,1\], got torch.uint8"):
        tok.encode(torch.zeros(1, 3, 4, 16, 16, dtype=torch.uint8))
    with pytest.raises(VitokError, match="num_tokens"):
        tok.encode(torch.zeros(1, 3, 4, 16, 16), num_tokens=3)
    with pytest.raises(VitokError, match="num_tokens"):
        models["vit1d-tiny"].encode(torch.zeros(1, 3, 4, 16, 16), num_tokens=0)
    with pytest.raises(VitokError, match=r"video is empty: shape \(1, 3, 0, 16, 16\)"):
        tok.encode(torch.zeros(1, 3, 0, 16, 16))
    bad = torch.zeros(1, 3, 4, 16, 16)
    bad[0, 1, 2, 3, 4] = float("nan")
    with pytest.raises(VitokError, match="NaN or infinite"):
        tok.encode(bad)
    bad[0, 1, 2, 3, 4] = float("inf")
    with pytest.raises(VitokError, match="NaN or infinite"):
        models["cnn-tiny"].encode(bad)


def test_training_forward(clip):
    torch.manual_seed(0)
    for name in FAMILIES:
        tok = vitok.create_model(name).train()
        out = tok(clip(5, 24, 40, batch=2))
        assert out["recon"].shape == (2, 3, 5, 24, 40)
        assert out["kl"].ndim == 0 and out["kl"] >= 0
        assert out["latents"].z.requires_grad
        (out["recon"].square().mean() + out["kl"]).backward()
        assert tok.embed.weight.grad is not None if name != "cnn-tiny" else tok.encoder[0].weight.grad is not None


def test_forward_latents_decode_or_say_why_not(models, clip):
    """forward codes a clip as one unit; decode re-plans from the geometry. Within one unit the two agree; a clip
    longer than a unit (or a 1D model's tile) gets one line saying the layouts differ, not a silent re-split."""
    for name in FAMILIES:
        tok = models[name]
        out = tok(clip(tok.clip_frames, 24, 40))
        torch.testing.assert_close(tok.decode(out["latents"]), out["recon"])
    for name, (t, h, w) in (("vit-tiny", (5 * models["vit-tiny"].clip_frames, 16, 16)), ("vit1d-tiny", (4, 80, 80))):
        out = models[name](clip(t, h, w))
        with pytest.raises(VitokError, match=r"laid out as \(1, 1, 1\) units .*\(forward's latents"):
            models[name].decode(out["latents"])


def test_1d_encode_never_drops_tokens_at_random(clip):
    """Nested dropout belongs to the training forward only: encode() of a model in train mode keeps all K."""
    torch.manual_seed(0)
    tok = vitok.create_model("vit1d-tiny").train()
    assert tok.encode(clip(4, 16, 16, batch=4)).mask is None
    assert tok(clip(4, 16, 16, batch=64))["latents"].mask.sum(1).unique().numel() > 1


def test_range_check_does_not_copy_a_permuted_video(tmp_path):
    """`frames_to_tensor` gives a permuted view; checking its range made a contiguous copy (aminmax), doubling the
    memory a long video needs. Measured in a fresh process: peak RSS growth of encode far below the video's size."""
    import subprocess
    import sys

    script = (
        "import resource, torch, vitok\n"
        "torch.set_num_threads(1)\n"
        "tok = vitok.create_model('vit-tiny').freeze()\n"
        "video = torch.rand(1, 20, 512, 512, 3).mul_(2).sub_(1).permute(0, 4, 1, 2, 3)  # 60 MiB, channels last\n"
        "tok.encode(video[:, :, :4, :64, :64])  # warm up: allocator and model buffers\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "tok.encode(video)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=tmp_path)   # not the checkout: its vitok/ folder would shadow the installed package
    assert float(out.stdout.split()[-1]) < 40, out.stdout   # a copy of the video: 60 MiB; the tiles' work: ~20
