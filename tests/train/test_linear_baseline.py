"""tools/linear_baseline.py: PCA of tubelets, the linear reference for a tokenizer's latent count."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("linear_baseline")


def test_tubelets_round_trip_and_layout(tool):
    """Each row is one 4xPxP tubelet (all its frames, rows and columns), and untubelets puts every value back."""
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (8, 16, 24, 3), dtype=np.uint8)
    rows = tool.tubelets(video, 8)
    assert rows.shape == (2 * 2 * 3, 4 * 8 * 8 * 3)
    np.testing.assert_array_equal(rows[1].reshape(4, 8, 8, 3), video[:4, :8, 8:16])   # second column of the first row
    np.testing.assert_array_equal(tool.untubelets(rows, video.shape, 8), video)


def test_pca_keeps_what_its_coefficients_hold(tool):
    """Videos whose tubelets span 3 directions are rebuilt exactly (to rounding) from 3 coefficients and lossily
    from 1; a clip of 5 frames is padded to whole tubelets and comes back with 5."""
    rng = np.random.default_rng(1)
    shapes = rng.normal(size=(3, 4 * 4 * 4 * 3))

    def video() -> np.ndarray:
        rows = rng.normal(size=(2 * 4 * 4, 3)) * 4 @ shapes + 128   # 2x4x4 tubelets, well inside 0..255
        return np.round(tool.untubelets(rows, (8, 16, 16, 3), 4)).astype(np.uint8)

    train, clip = [video() for _ in range(4)], video()
    full = tool.reconstruct(clip, 4, *tool.fit_pca(train, 4, 3))
    one = tool.reconstruct(clip, 4, *tool.fit_pca(train, 4, 1))
    assert full.dtype == np.uint8 and np.abs(full.astype(int) - clip).max() <= 1
    assert np.abs(one.astype(int) - clip).mean() > 2
    assert tool.reconstruct(clip[:5], 4, *tool.fit_pca(train, 4, 3)).shape == (5, 16, 16, 3)


def test_bad_tubelet_setting_is_one_line(tool):
    with pytest.raises(SystemExit, match=r"--tubelet takes P:K"):
        tool.main(["--tubelet", "8x16"])
    with pytest.raises(SystemExit, match=r"P must divide 128"):
        tool.main(["--tubelet", "12:16"])
    for args in (["--frames", "0"], ["--size", "0"], ["--frames", "-3"]):   # tracebacks before
        with pytest.raises(SystemExit, match=r"^error: --size and --frames must be >= 1"):
            tool.main(args)
    with pytest.raises(SystemExit, match=r"^error: no eval segment of 100 frames fits"):
        tool.main(["--frames", "100", "--size", "32"])


def _static_video(tool, rng: np.random.Generator, shapes: np.ndarray, frames: int) -> np.ndarray:
    """A still ``(frames, 16, 16, 3)`` clip whose 4x4x4 tubelets (all four frames alike) span ``shapes``."""
    rows = rng.normal(size=(4 * 4, len(shapes))) * 4 @ shapes + 128
    frame = np.round(tool.untubelets(rows, (4, 16, 16, 3), 4)[0]).astype(np.uint8)
    return np.repeat(frame[None], frames, axis=0)


def test_padding_repeats_the_last_frame(tool):
    """A clip cut short of a whole tubelet is padded by repeating its last frame, as the tokenizers pad: a still
    clip of 5 frames, whose tubelets then stay in the span of still training tubelets, is rebuilt as exactly as
    one of 8. Padding with black frames puts the last tubelet outside that span and blurs its kept frame (a test of
    the shape alone passed with that padding)."""
    rng = np.random.default_rng(2)
    shapes = np.tile(rng.normal(size=(3, 1, 4 * 4 * 3)), (1, 4, 1)).reshape(3, -1)   # the same in all 4 frames
    train = [_static_video(tool, rng, shapes, 8) for _ in range(4)]
    mean, basis = tool.fit_pca(train, 4, 3)
    clip = _static_video(tool, rng, shapes, 5)
    out = tool.reconstruct(clip, 4, mean, basis)
    assert out.shape == clip.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - clip).max() <= 1
    # a clip whose frames differ matches the reference padded by hand with its last frame (not its first)
    moving = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    padded = np.concatenate([moving, moving[-1:].repeat(3, axis=0)])
    np.testing.assert_array_equal(tool.reconstruct(moving, 4, mean, basis),
                                  tool.reconstruct(padded, 4, mean, basis)[:5])


def test_more_coefficients_than_a_tubelet_holds_is_refused(tool):
    """K above a 4xPxP tubelet's 4*P*P*3 values cannot be kept: a one-line error, not an eigenvector slice that
    silently holds fewer. K equal to the values is the full basis and is accepted."""
    rng = np.random.default_rng(3)
    train = [rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8) for _ in range(2)]
    with pytest.raises(SystemExit, match=r"^error: 193 coefficients is more than a 4x4x4 tubelet's 192 values$"):
        tool.fit_pca(train, 4, 193)
    mean, basis = tool.fit_pca(train, 4, 192)
    assert mean.shape == (192,) and basis.shape == (192, 192)
    np.testing.assert_array_equal(tool.reconstruct(train[0], 4, mean, basis), train[0])   # full rank: exact


def _stub_segments(monkeypatch, calls: list) -> None:
    """The sample clips' segments replaced by seeded random ones of the size asked for (no decoding)."""
    import vitok.data.samples as samples

    def segments(kind, count):
        def make(num_frames=17, size=128):
            calls.append((kind, num_frames, size))
            rng = np.random.default_rng(len(kind))
            return [(f"{kind}{i}", rng.integers(0, 256, (num_frames, size, size, 3), dtype=np.uint8))
                    for i in range(count)]
        return make

    monkeypatch.setattr(samples, "train_segments", segments("train", 3))
    monkeypatch.setattr(samples, "eval_segments", segments("eval", 2))


def test_main_reports_each_setting_on_the_held_out_segments(tool, monkeypatch, capsys):
    """The normal run (whose figures the README quotes), on stubbed segments: one JSON row per --tubelet with the
    values a segment keeps (17 frames are 5 tubelets deep, padded: ceil, not floor) and the PSNR/SSIM of the
    reconstructions of the held-out segments by the PCA fitted on the training ones."""
    from vitok.train.evaluate import frame_psnr, frame_ssim

    calls = []
    _stub_segments(monkeypatch, calls)
    tool.main(["--tubelet", "8:16", "--tubelet", "4:5", "--size", "32", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert calls == [("train", 16, 32), ("eval", 17, 32)]
    assert [(r["patch"], r["keep"], r["values_per_segment"]) for r in rows] == [
        (8, 16, math.ceil(17 / 4) * (32 // 8) ** 2 * 16), (4, 5, 5 * 8 ** 2 * 5)]
    assert rows[0]["values_per_segment"] == 1280
    assert all(r["segments"] == 2 and r["train_segments"] == 3 for r in rows)

    import vitok.data.samples as samples
    train = [f for _, f in samples.train_segments(num_frames=16, size=32)]
    held_out = [f for _, f in samples.eval_segments(num_frames=17, size=32)]
    for row in rows:
        mean, basis = tool.fit_pca(train, row["patch"], row["keep"])
        recs = [tool.reconstruct(f, row["patch"], mean, basis) for f in held_out]
        assert row["psnr"] == pytest.approx(np.mean([frame_psnr(f, r) for f, r in zip(held_out, recs)]))
        assert row["ssim"] == pytest.approx(np.mean([frame_ssim(f, r) for f, r in zip(held_out, recs)]))
    assert rows[0]["psnr"] != rows[1]["psnr"]

    tool.main(["--tubelet", "8:16", "--size", "32", "--frames", "16"])   # the text form: 16 frames are 4 deep
    out = capsys.readouterr().out
    assert out.startswith("4x8x8 tubelets, 16 coefficients (1024 values per segment): PSNR ")
    assert "(2 held-out 16x32x32 segments; PCA fitted on 3 training segments)" in out
