"""vitok.data.io: round trips on real and generated files, awkward sources, every bad input, streaming."""
from __future__ import annotations

import os
import tracemalloc
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageOps

from vitok.data.errors import VideoReadError, VideoWriteError, VitokError
from vitok.data.io import (FrameTimingWarning, HDRWarning, flushed_packets, frame_times, iter_video, probe_video,
                           read_frames_dir, read_video, resize_frames, write_video)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def write_raw(path: Path, frames: np.ndarray, codec: str, pix_fmt: str, *, src_format: str = "rgb24",
              rotation: int | None = None, pts: list[int] | None = None, options: dict | None = None,
              gop: int | None = None) -> Path:
    """Write a test file directly with PyAV (what write_video does not offer: gray, alpha, rotation, VFR, faststart,
    a keyframe every ``gop`` frames)."""
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if gop is not None:
            s.codec_context.gop_size = gop
        if pts is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format=src_format)
            vf.pts = i if pts is None else pts[i]
            if pts is not None:
                vf.time_base = Fraction(1, 1000)
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    return path


def write_hdr(path: Path, frames: np.ndarray, codec: str, trc: int) -> Path:
    """Write 10-bit BT.2020 video tagged with transfer ``trc`` (16: PQ, 18: HLG), as HDR cameras and masters do."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25, options={"x265-params": "log-level=error"} if codec == "libx265" else {})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p10le"
        cc = s.codec_context
        cc.color_trc, cc.color_primaries, cc.colorspace = trc, 9, 9
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p10le")
            vf.pts = i
            c.mux(s.encode(vf))
        c.mux(flushed_packets(s, len(frames)))   # x265 gives a 2-frame stream garbage decode times
    return path


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- round trips -----------------------------------------------------------------------------------------------

def test_real_clip_probe_and_read(carphone_path, carphone_clip):
    info = probe_video(carphone_path)
    assert (info.width, info.height, info.num_frames, info.fps) == (176, 144, 120, Fraction(30000, 1001))
    assert info.codec == "h264" and info.rotation == 0 and not info.is_image
    assert info.sample_aspect_ratio == Fraction(128, 117)   # QCIF's pixels show wider than tall; read as stored
    assert info.duration == pytest.approx(4.004)
    assert carphone_clip.shape == (8, 144, 176, 3) and carphone_clip.dtype == np.uint8


def test_ffv1_round_trip_is_exact(tmp_path, carphone_clip):
    path = tmp_path / "clip.mkv"
    write_video(path, carphone_clip, Fraction(30000, 1001), codec="ffv1")
    frames, info = read_video(path)
    assert np.array_equal(frames, carphone_clip)
    assert info.codec == "ffv1" and info.fps == Fraction(30000, 1001) and info.num_frames == 8


def test_h264_round_trip_is_close(tmp_path, carphone_clip):
    path = tmp_path / "clip.mp4"
    write_video(path, carphone_clip, 30, crf=14)
    frames, info = read_video(path)
    assert frames.shape == carphone_clip.shape and info.pix_fmt == "yuv420p"
    assert psnr(frames, carphone_clip) > 35


def test_write_accepts_chunks_and_frames(tmp_path, tiny_frames):
    path = tmp_path / "chunks.mkv"
    write_video(path, (c for c in (tiny_frames[:4], tiny_frames[4], tiny_frames[5:])), 25, codec="ffv1")
    assert np.array_equal(read_video(path)[0], tiny_frames)


@pytest.mark.parametrize("codec,suffix", [("ffv1", ".mkv"), ("h264", ".mp4"), ("vp9", ".webm"), ("av1", ".mkv")])
def test_odd_size(tmp_path, codec, suffix):
    frames = noise((3, 17, 33, 3))
    path = tmp_path / f"odd{suffix}"
    write_video(path, frames, 25, codec=codec, crf=20, preset="8" if codec == "av1" else "medium")
    back, info = read_video(path)
    assert back.shape == frames.shape and (info.width, info.height) == (33, 17)
    if codec == "ffv1":
        assert np.array_equal(back, frames)
    if codec == "h264":
        assert info.pix_fmt == "yuv444p"  # x264 cannot subsample odd sizes: full chroma keeps the exact geometry


def test_h265_ten_bit(tmp_path, carphone_clip):
    path = tmp_path / "ten.mp4"
    write_video(path, carphone_clip[:3, :64, :64], 25, codec="h265", pix_fmt="yuv420p10le", crf=10, preset="ultrafast")
    frames, info = read_video(path)
    assert info.pix_fmt == "yuv420p10le" and info.codec == "hevc" and frames.dtype == np.uint8
    assert psnr(frames, carphone_clip[:3, :64, :64]) > 35


def test_ffv1_ten_bit_odd(tmp_path, carphone_clip):
    src = np.ascontiguousarray(carphone_clip[:3, :17, :33])
    frames, info = read_video(write_raw(tmp_path / "ten.mkv", src, "ffv1", "yuv420p10le"))
    assert info.pix_fmt == "yuv420p10le" and frames.shape == src.shape and psnr(frames, src) > 30


def test_grayscale_video_and_image(tmp_path):
    gray = noise((2, 17, 33))
    frames, info = read_video(write_raw(tmp_path / "gray.mkv", gray, "ffv1", "gray", src_format="gray"))
    assert info.pix_fmt == "gray" and frames.shape == (2, 17, 33, 3)
    assert np.array_equal(frames, np.repeat(gray[..., None], 3, axis=3))
    Image.fromarray(gray[0], "L").save(tmp_path / "gray.png")
    still, info = read_video(tmp_path / "gray.png")
    assert info.is_image and info.num_frames == 1 and np.array_equal(still[0], frames[0])


@pytest.mark.parametrize("codec,suffix,pix_fmt", [("ffv1", ".mkv", "bgra"), ("qtrle", ".mov", "argb")])
def test_alpha_video_drops_alpha(tmp_path, codec, suffix, pix_fmt):
    rgba = noise((3, 17, 33, 4))
    frames, info = read_video(write_raw(tmp_path / f"alpha{suffix}", rgba, codec, pix_fmt, src_format="rgba"))
    assert info.pix_fmt == pix_fmt and np.array_equal(frames, rgba[..., :3])


def test_still_images(tmp_path):
    rgba = noise((17, 33, 4))
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    frames, info = read_video(tmp_path / "a.png")
    assert info.is_image and (info.width, info.height) == (33, 17) and np.array_equal(frames[0], rgba[..., :3])
    Image.fromarray(rgba[..., :3]).save(tmp_path / "b.jpg", quality=95)
    frames, info = read_video(tmp_path / "b.jpg", size=(16, 8))
    assert info.codec == "mjpeg" and frames.shape == (1, 8, 16, 3)


def test_rotation_metadata_is_applied(tmp_path, tiny_frames):
    frames, info = read_video(write_raw(tmp_path / "rot.mkv", tiny_frames, "ffv1", "bgr0", rotation=90))
    assert info.rotation == 90 and (info.width, info.height) == (24, 32)
    assert np.array_equal(frames, np.rot90(tiny_frames, 1, axes=(1, 2)))  # counter-clockwise, like ffmpeg
    crop, _ = read_video(tmp_path / "rot.mkv", crop=(2, 3, 10, 12))
    assert np.array_equal(crop, frames[:, 3:15, 2:12])


def shown(frames: np.ndarray, matrix: list[int]) -> np.ndarray:
    """``frames`` as a display matrix shows them, by its definition (FFmpeg's display.h, QuickTime's tkhd): coded
    pixel (x, y) goes to (a*x + c*y, b*x + d*y), shifted to start at 0."""
    a, b, _, c, d = (v // 65536 for v in matrix[:5])
    y, x = np.mgrid[0:frames.shape[1], 0:frames.shape[2]]
    sx, sy = a * x + c * y, b * x + d * y
    sx, sy = sx - sx.min(), sy - sy.min()
    out = np.empty((len(frames), sy.max() + 1, sx.max() + 1, 3), frames.dtype)
    out[:, sy, sx] = frames[:, y, x]
    return out


@pytest.mark.parametrize("abcd", [(1, 0, 0, 1), (0, 1, -1, 0), (-1, 0, 0, -1), (0, -1, 1, 0),   # rotations
                                  (-1, 0, 0, 1), (1, 0, 0, -1), (0, 1, 1, 0), (0, -1, -1, 0)])  # mirrors
def test_display_matrix_rotations_and_mirrors(tmp_path, tiny_frames, abcd):
    """A mirroring matrix (a horizontal flip: a=-1, d=1) was read as a half turn; every one of the eight is shown as
    the matrix says (lossless PNG in .mov, so the pixels compare exactly)."""
    a, b, c, d = abcd
    matrix = [a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30]
    path = tmp_path / "m.mov"
    with av.open(str(path), "w") as out:
        s = out.add_stream("png", rate=25)
        s.width, s.height, s.pix_fmt = tiny_frames.shape[2], tiny_frames.shape[1], "rgb24"
        s.set_display_matrix(matrix)
        for k, f in enumerate(tiny_frames[:3]):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = k
            out.mux(s.encode(vf))
        out.mux(s.encode(None))
    frames, info = read_video(path)
    expected = shown(tiny_frames[:3], matrix)
    assert np.array_equal(frames, expected)
    assert (info.height, info.width) == expected.shape[1:3] and info.mirrored == (a * d - b * c < 0)
    assert np.array_equal(np.rot90(tiny_frames[:3, :, ::-1] if info.mirrored else tiny_frames[:3],
                                   info.rotation // 90, axes=(1, 2)), frames)   # what VideoInfo says it did


def test_jpeg_exif_orientations_match_pillow(tmp_path):
    """EXIF orientations 2, 4, 5 and 7 mirror: they were shown unflipped or upside down. Each of 1-8 now shows as
    Pillow's exif_transpose shows the same decoded picture."""
    picture = noise((12, 20, 3), seed=3)
    for k in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = k
        Image.fromarray(picture).save(tmp_path / f"o{k}.jpg", quality=95, exif=exif)
    coded = read_video(tmp_path / "o1.jpg")[0][0]   # orientation 1: the picture as coded
    for k in range(1, 9):
        upright = Image.fromarray(coded)
        upright.getexif()[0x0112] = k
        assert np.array_equal(read_video(tmp_path / f"o{k}.jpg")[0][0], np.asarray(ImageOps.exif_transpose(upright))), k
    assert [k for k in range(1, 9) if probe_video(tmp_path / f"o{k}.jpg").mirrored] == [2, 4, 5, 7]


def test_pixel_aspect_is_read_in_display_orientation_and_written(tmp_path, tiny_frames):
    """Frames are read as stored; the pixel aspect is reported (inverted by a quarter turn) and written again."""
    with av.open(str(tmp_path / "rot.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = tiny_frames.shape[2], tiny_frames.shape[1], "yuv444p"
        s.codec_context.sample_aspect_ratio = Fraction(4, 3)
        s.set_display_rotation(90)
        for f in tiny_frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    frames, info = read_video(tmp_path / "rot.mp4")
    assert info.rotation == 90 and info.sample_aspect_ratio == Fraction(3, 4)
    assert frames.shape[1:3] == (tiny_frames.shape[2], tiny_frames.shape[1])   # no resampling
    write_video(tmp_path / "out.mp4", frames, 25, sample_aspect_ratio=info.sample_aspect_ratio)
    assert probe_video(tmp_path / "out.mp4").sample_aspect_ratio == Fraction(3, 4)
    assert probe_video(write_raw(tmp_path / "square.mkv", tiny_frames, "ffv1", "bgr0")).sample_aspect_ratio == 1
    with pytest.raises(VideoWriteError, match="sample_aspect_ratio must be positive"):
        write_video(tmp_path / "bad.mp4", frames, 25, sample_aspect_ratio=Fraction(0))
    assert not (tmp_path / "bad.mp4").exists()


def test_variable_frame_rate(tmp_path, tiny_frames):
    """Every frame once, in order, with one notice that they are not evenly timed (they were retimed silently)."""
    pts = [0, 40, 60, 200, 210, 400, 440, 500, 620]
    path = write_raw(tmp_path / "vfr.mkv", tiny_frames, "ffv1", "bgr0", pts=pts)
    with pytest.warns(FrameTimingWarning, match=r"vfr.mkv: frame times jump from 0.060 s to 0.200 s") as caught:
        frames, info = read_video(path)
    assert len([w for w in caught if w.category is FrameTimingWarning]) == 1   # once per read, not per gap
    assert np.array_equal(frames, tiny_frames) and info.fps > 0
    assert np.allclose(frame_times(path), np.array(pts) / 1000)


def test_timing_notice_words_and_yardstick(tmp_path, tiny_frames):
    """A repeated frame time is said to repeat (it was said to go back); a rate the stream does not state (mpegts
    guesses 2000 fps for 1000) is no yardstick for a notice, so files write_video makes there read silently."""
    path = write_raw(tmp_path / "dup.mkv", tiny_frames[:4], "ffv1", "bgr0", pts=[0, 40, 40, 80])
    with pytest.warns(FrameTimingWarning, match="frame times repeat from 0.040 s to 0.040 s"):
        read_video(path)
    write_video(tmp_path / "fast.ts", noise((6, 32, 32, 3)), 1000, codec="h264")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrameTimingWarning)
        assert len(read_video(tmp_path / "fast.ts")[0]) == 6


def test_frames_lost_mid_file_are_noticed(tmp_path):
    """2000 zeroed bytes in the middle of an ffv1 .mkv lose two frames: the read said nothing (exit 0 in `vitok
    encode`). It still reads what decodes, and says once where the frame times jump."""
    t, y, x = np.meshgrid(np.arange(20), np.arange(96), np.arange(128), indexing="ij")
    frames = np.stack([(x * 2 + t * 3) % 256, (y * 2) % 256, ((x + y + 5 * t) * 4) % 256], -1).astype(np.uint8)
    data = bytearray(write_raw(tmp_path / "whole.mkv", frames, "ffv1", "bgr0").read_bytes())
    n = len(data)
    data[n // 2:n // 2 + 2000] = bytes(2000)
    (tmp_path / "damaged.mkv").write_bytes(data)
    with pytest.warns(FrameTimingWarning, match=r"damaged.mkv: frame times jump from .* s to .* s \(25 fps frames "
                                                r"are 0.040 s apart\): frames are missing") as caught:
        got, _ = read_video(tmp_path / "damaged.mkv")
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert 10 <= len(got) < 20


@pytest.mark.parametrize("suffix,codec", [(".mp4", "libx264"), (".mkv", "libx264"), (".mov", "libx264"),
                                          (".ts", "libx264"), (".avi", "libx264"), (".webm", "libvpx-vp9")])
@pytest.mark.parametrize("fps", [25, Fraction(30000, 1001)])
def test_evenly_timed_files_get_no_timing_notice(tmp_path, suffix, codec, fps):
    """B-frames, millisecond clocks (mkv/webm at 30000/1001 fps step 33 or 34 ms), avi's decode-time stamps: no
    notice for files made as they should be."""
    t, y, x = np.meshgrid(np.arange(40), np.arange(48), np.arange(64), indexing="ij")
    frames = np.stack([(x * 3 + t * 2) % 256, (y * 4 + t) % 256, ((x + y) * 2 + t * 3) % 256], -1).astype(np.uint8)
    path = tmp_path / f"v{suffix}"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for k, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = k
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrameTimingWarning)
        assert len(read_video(path)[0]) == 40
        write_video(tmp_path / "w.mkv", frames, fps, codec="ffv1")
        read_video(tmp_path / "w.mkv")


@pytest.mark.parametrize("name", ["bikes", "carphone", "bigbuckbunny"])
def test_sample_clips_get_no_timing_notice(name):
    from vitok.data.samples import sample_path

    with warnings.catch_warnings():
        warnings.simplefilter("error", FrameTimingWarning)
        warnings.simplefilter("error", HDRWarning)
        assert sum(len(c) for c in iter_video(sample_path(name), chunk_frames=32)) == probe_video(
            sample_path(name)).num_frames


def test_resolution_change_mid_stream(tmp_path):
    parts = [np.full((3, 24, 32, 3), 200, np.uint8), np.full((2, 48, 64, 3), 50, np.uint8)]
    for i, part in enumerate(parts):
        write_video(tmp_path / f"{i}.ts", part, 25)
    joined = tmp_path / "joined.ts"  # MPEG-TS concatenates bytewise; timestamps restart in the second part
    joined.write_bytes((tmp_path / "0.ts").read_bytes() + (tmp_path / "1.ts").read_bytes())
    with pytest.warns(FrameTimingWarning, match="frame times go back"):
        frames, info = read_video(joined)
    assert frames.shape == (5, 24, 32, 3) and (info.width, info.height) == (32, 24)  # scaled to the first size
    assert np.abs(frames[:, 12, 16, 0].astype(int) - [200, 200, 200, 50, 50]).max() <= 3


@pytest.mark.parametrize("codec,suffix,trc,name", [("ffv1", ".mkv", 18, "HLG"), ("libx265", ".mp4", 16, "PQ"),
                                                   ("libx265", ".mov", 18, "HLG")])
def test_hdr_is_probed_and_named_once(tmp_path, carphone_clip, codec, suffix, trc, name):
    """HDR (PQ, HLG: every recent iPhone video) was read as if SDR, flat and washed out, without a word. The probe says
    which transfer, and a read names the file once per process (there is no tone mapping to offer)."""
    path = write_hdr(tmp_path / f"hdr{suffix}", carphone_clip[:2, :64, :64], codec, trc)
    assert probe_video(path).hdr == name
    said = (rf"hdr{suffix}: HDR video \({name}\) is converted to 8-bit SDR RGB without tone mapping, so its colours "
            r"look flat; .* convert it to SDR first")
    with pytest.warns(HDRWarning, match=said) as caught:
        frames, info = read_video(path)
    named = [w for w in caught if w.category is HDRWarning]
    assert len(named) == 1 and "\n" not in str(named[0].message)
    assert frames.shape == (2, 64, 64, 3) and info.hdr == name
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert len(next(iter_video(path))) == 2
    assert not [w for w in again if w.category is HDRWarning]


def test_sdr_files_are_not_hdr(tmp_path, tiny_frames, carphone_path):
    """What write_video makes (tagged BT.601), untagged files and the sample clips read silently as SDR."""
    write_video(tmp_path / "sdr.mp4", tiny_frames, 25)
    write_raw(tmp_path / "untagged.mkv", tiny_frames, "ffv1", "yuv420p10le")
    for path in (tmp_path / "sdr.mp4", tmp_path / "untagged.mkv", carphone_path):
        assert probe_video(path).hdr is None
        with warnings.catch_warnings():
            warnings.simplefilter("error", HDRWarning)
            read_video(path, num_frames=4)


BT601_TV = (6, 1, 6, 6)   # colorspace, range, primaries, transfer: smpte170m (SD BT.601) and tv (limited) range


def _color_tags(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(stream's, first frame's) colour tags of ``path``, as PyAV reads them back."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        f, cc = next(c.decode(s)), s.codec_context
        return (cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc), (f.colorspace, f.color_range,
                                                                                  f.color_primaries, f.color_trc)


@pytest.mark.parametrize("codec,suffix,pix_fmt", [("h264", ".mp4", None), ("h264", ".mkv", "yuv444p"),
                                                  ("h265", ".mp4", None), ("vp9", ".webm", None),
                                                  ("av1", ".mkv", None), ("ffv1", ".mkv", "yuv420p")])
def test_written_yuv_is_tagged_as_converted(tmp_path, carphone_clip, codec, suffix, pix_fmt):
    """RGB becomes BT.601 limited-range YUV (swscale's default) but went out untagged, so players guessing BT.709 for
    HD shifted the colours. The stream and its frames now say what the conversion made."""
    path = tmp_path / f"c{suffix}"
    write_video(path, carphone_clip[:2, :64, :64], 25, codec=codec, pix_fmt=pix_fmt,
                preset="8" if codec == "av1" else "ultrafast" if codec == "h265" else "medium")
    assert _color_tags(path) == (BT601_TV, BT601_TV)


def test_one_and_two_frame_h265_files(tmp_path, carphone_clip):
    """x265's garbage decode times for one- or two-frame streams made about half such writes fail."""
    for n in (1, 2) * 6:
        write_video(tmp_path / "short.mp4", carphone_clip[:n, :64, :64], 25, codec="h265")
        assert read_video(tmp_path / "short.mp4")[0].shape == (n, 64, 64, 3)


def test_color_tags_leave_pixels_as_they_were(tmp_path, carphone_clip):
    """Tagging changes no pixel: a lossless write holds the YUV that PyAV's own (untagged) conversion makes, and
    vitok reads it back to the same RGB. RGB output (ffv1's bgr0) stays untagged."""
    clip = carphone_clip[:3]
    write_video(tmp_path / "tagged.mkv", clip, 25, codec="ffv1", pix_fmt="yuv420p")
    write_raw(tmp_path / "plain.mkv", clip, "ffv1", "yuv420p")
    assert _color_tags(tmp_path / "plain.mkv")[0] != BT601_TV
    with av.open(str(tmp_path / "tagged.mkv")) as a, av.open(str(tmp_path / "plain.mkv")) as b:
        for fa, fb in zip(a.decode(video=0), b.decode(video=0), strict=True):
            assert all(bytes(pa) == bytes(pb) for pa, pb in zip(fa.planes, fb.planes))
    assert np.array_equal(read_video(tmp_path / "tagged.mkv")[0], read_video(tmp_path / "plain.mkv")[0])
    write_video(tmp_path / "rgb.mkv", clip, 25, codec="ffv1")
    assert BT601_TV not in _color_tags(tmp_path / "rgb.mkv")


# --- options -----------------------------------------------------------------------------------------------------

def test_start_stride_num_frames_crop_size(tiny_video, tiny_frames):
    frames, _ = read_video(tiny_video, start=1, stride=3, num_frames=2)
    assert np.array_equal(frames, tiny_frames[1::3][:2])
    frames, _ = read_video(tiny_video, start=7, num_frames=5)  # fewer left: returns what there is
    assert np.array_equal(frames, tiny_frames[7:])
    frames, _ = read_video(tiny_video, crop=(4, 2, 10, 6))
    assert np.array_equal(frames, tiny_frames[:, 2:8, 4:14])
    frames, _ = read_video(tiny_video, crop="center", size=(8, 8))
    assert frames.shape == (9, 8, 8, 3)
    assert np.array_equal(frames, resize_frames(tiny_frames[:, :, 4:28], (8, 8)))
    a, _ = read_video(tiny_video, size=(20, 10))
    assert a.shape == (9, 10, 20, 3) and np.array_equal(a, read_video(tiny_video, size=(20, 10))[0])
    with pytest.raises(ValueError, match=r'crop="center" needs size'):
        read_video(tiny_video, crop="center")
    with pytest.raises(VideoReadError, match="outside"):
        read_video(tiny_video, crop=(30, 0, 10, 10))


def test_iter_video_streams_in_chunks(carphone_path):
    full, _ = read_video(carphone_path)
    chunks = list(iter_video(carphone_path, chunk_frames=16))
    assert [len(c) for c in chunks] == [16] * 7 + [8]
    assert np.array_equal(np.concatenate(chunks), full)
    picked = list(iter_video(carphone_path, chunk_frames=16, start=5, stride=2, num_frames=40))
    assert [len(c) for c in picked] == [16, 16, 8] and np.array_equal(np.concatenate(picked), full[5::2][:40])
    tracemalloc.start()
    for _ in iter_video(carphone_path, chunk_frames=8):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < full.nbytes / 4  # only a few chunks alive at once, never the whole video


def test_read_frames_dir(tmp_path, tiny_frames):
    for k, n in enumerate((1, 2, 10)):  # natural order: frame1, frame2, frame10
        Image.fromarray(tiny_frames[k]).save(tmp_path / f"frame{n}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    frames = read_frames_dir(tmp_path)
    assert np.array_equal(frames, tiny_frames[:3])
    assert np.array_equal(read_frames_dir(tmp_path / "frame*.png", size=(16, 12)), resize_frames(frames, (16, 12)))
    Image.fromarray(tiny_frames[0, :10]).save(tmp_path / "frame3.png")
    with pytest.raises(VideoReadError, match="frame3.png"):
        read_frames_dir(tmp_path)
    with pytest.raises(VideoReadError, match="no image frames"):
        read_frames_dir(tmp_path / "*.jpg")


def test_a_folder_of_frames_beside_videos_is_refused(tmp_path, tiny_video, tiny_frames):
    """The images of a folder that also holds videos were read as the video, the videos passed over in silence."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for n in range(2):
        Image.fromarray(tiny_frames[n]).save(folder / f"f{n}.png")
    for name in ("a.mp4", "b.mkv"):
        (folder / name).write_bytes(Path(tiny_video).read_bytes())
    with pytest.raises(VideoReadError, match=r"2 image frames and 2 videos \(a.mp4, \.\.\.\); give a video file"):
        read_frames_dir(folder)
    assert len(read_frames_dir(folder / "*.png")) == 2   # a pattern says which files are meant
    previews = tmp_path / "previews"   # frames beside a .gif preview read as before .gif joined the video types
    previews.mkdir()
    for n in range(2):
        Image.fromarray(tiny_frames[n]).save(previews / f"f{n}.png")
    (previews / "preview.gif").write_bytes(b"GIF89a")
    assert len(read_frames_dir(previews)) == 2
    for name in ("f0.png", "f1.png", "b.mkv"):
        (folder / name).unlink()
    with pytest.raises(VideoReadError, match=r": 1 video \(a.mp4\); give a video file, or a folder of frames only"):
        read_frames_dir(folder)


def test_iter_frames_dir_streams_chunks(tmp_path, tiny_frames):
    from vitok.data.io import iter_frames_dir

    for k in range(7):
        Image.fromarray(tiny_frames[k % len(tiny_frames)]).save(tmp_path / f"frame{k}.png")
    whole = read_frames_dir(tmp_path)
    chunks = list(iter_frames_dir(tmp_path, chunk_frames=3, start=1, num_frames=5))
    assert [len(c) for c in chunks] == [3, 2] and np.array_equal(np.concatenate(chunks), whole[1:6])
    with pytest.raises(VideoReadError, match="start=7 is past the end"):
        next(iter_frames_dir(tmp_path, start=7))


# --- bad input -----------------------------------------------------------------------------------------------------

def _truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    out = path.with_name("cut_" + path.name)
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def _bad_files(tmp_path: Path, carphone_clip: np.ndarray) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 50)
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00\x01garbage" * 300)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    audio = tmp_path / "audio.wav"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        f.sample_rate, f.pts = 8000, 0
        c.mux(s.encode(f))
        c.mux(s.encode(None))
    novideo = tmp_path / "noframes.mkv"  # a video stream with no packets (only audio packets were muxed)
    with av.open(str(novideo), "w") as c:
        v = c.add_stream("ffv1", rate=25)
        v.width, v.height, v.pix_fmt = 32, 24, "bgr0"
        a = c.add_stream("pcm_s16le", rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        f.sample_rate, f.pts = 8000, 0
        c.mux(a.encode(f))
    mkv = tmp_path / "whole.mkv"
    write_video(mkv, carphone_clip, 25, codec="ffv1")
    mp4 = write_raw(tmp_path / "whole.mp4", carphone_clip, "libx264", "yuv420p")  # index (moov) at the end
    faststart = write_raw(tmp_path / "fast.mp4", carphone_clip, "libx264", "yuv420p",
                          options={"movflags": "+faststart"})
    return {
        "missing": (tmp_path / "missing.mp4", "no such file"),
        "directory": (tmp_path, "directory"),
        "text": (text, "not a (readable )?video"),
        "garbage": (fake, "not a readable video"),
        "empty": (empty, "not a readable video"),
        "audio only": (audio, "no video stream"),
        "zero frames": (novideo, "no decodable frames"),
        "truncated mkv": (_truncate(mkv, 0.5), "truncated"),
        "truncated mkv end": (_truncate(mkv, 0.97), "truncated"),
        "truncated mp4": (_truncate(mp4, 0.6), "not a readable video"),
        "truncated faststart mp4": (_truncate(faststart, 0.6), "truncated"),
    }


def test_bad_inputs_raise_one_line_errors(tmp_path, carphone_clip):
    for case, (path, message) in _bad_files(tmp_path, carphone_clip).items():
        with pytest.raises(VideoReadError, match=message) as err:
            read_video(path)
        text = str(err.value)
        assert str(path) in text and "\n" not in text, case
        assert isinstance(err.value, VitokError)


def test_late_start_and_cut_streams_are_not_truncated(tmp_path, carphone_clip):
    """Complete files whose frames do not start at 0 read whole: an mkv with a timestamp offset (its DURATION tag is
    an end time) and a stream cut on a non-key frame (the leading frames cannot decode; ffmpeg drops them too)."""
    clip = carphone_clip[:6]
    late = write_raw(tmp_path / "late.mkv", clip, "ffv1", "bgr0", pts=[400 + 40 * i for i in range(6)])
    frames, _ = read_video(late)
    assert np.array_equal(frames, clip)
    assert probe_video(late).num_frames == 6
    src = tmp_path / "gop.mkv"   # a keyframe every 8 frames
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"g": "8", "keyint_min": "8", "sc_threshold": "0"})
        s.width, s.height, s.pix_fmt = 176, 144, "yuv420p"
        for k, f in enumerate(np.concatenate([carphone_clip] * 2)[:16]):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = k
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    cut = tmp_path / "cut.mkv"
    with av.open(str(src)) as i, av.open(str(cut), "w") as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for k, packet in enumerate(i.demux(i.streams.video[0])):
            if k > 0 and packet.dts is not None:   # drop the first packet (the keyframe)
                packet.stream = s
                o.mux(packet)
    frames, _ = read_video(cut)
    assert len(frames) == 8   # from the second keyframe on


def test_the_main_stream_is_read_not_a_thumbnail_before_it(tmp_path, carphone_clip):
    """As ffmpeg picks: the largest video stream, not a small one listed first (a thumbnail track)."""
    path = tmp_path / "thumb_first.mkv"
    with av.open(str(path), "w") as c:
        thumb, main = c.add_stream("ffv1", rate=25), c.add_stream("ffv1", rate=25)
        thumb.width, thumb.height, thumb.pix_fmt = 16, 16, "bgr0"
        main.width, main.height, main.pix_fmt = 176, 144, "bgr0"
        c.mux(thumb.encode(av.VideoFrame.from_ndarray(carphone_clip[0, :16, :16].copy(), format="rgb24")))
        for k, f in enumerate(carphone_clip[:5]):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = k
            c.mux(main.encode(vf))
        c.mux(thumb.encode(None))
        c.mux(main.encode(None))
    frames, _ = read_video(path)
    assert np.array_equal(frames, carphone_clip[:5])
    assert (probe_video(path).width, probe_video(path).height) == (176, 144)


@pytest.mark.parametrize("fps", [0, 1e-9, -5, float("nan"), float("inf"), "25"])
def test_write_refuses_a_rate_that_is_not_a_positive_number(tmp_path, tiny_frames, fps):
    with pytest.raises(VideoWriteError, match="fps must be a positive number"):
        write_video(tmp_path / "x.mp4", tiny_frames, fps)
    assert not list(tmp_path.iterdir())


def test_matroska_refuses_rates_its_millisecond_clock_cannot_tell_apart(tmp_path, tiny_frames):
    """Above 1000 fps, frames in .mkv shared timestamps ([0, 0, 1, 1, ...]) without a word; .mp4 keeps them."""
    with pytest.raises(VideoWriteError, match=r"x.mkv: Matroska times frames in milliseconds, so 2400 fps cannot be "
                                              r"written to it; use .mp4"):
        write_video(tmp_path / "x.mkv", tiny_frames, 2400, codec="ffv1")
    assert not list(tmp_path.iterdir())
    write_video(tmp_path / "x.mp4", tiny_frames, 2400)
    write_video(tmp_path / "k.mkv", tiny_frames, 1000, codec="ffv1")   # 1 ms apart: still distinct
    with av.open(str(tmp_path / "k.mkv")) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert len(set(pts)) == len(pts) == len(tiny_frames)
    assert probe_video(tmp_path / "x.mp4").fps == 2400


def test_start_past_the_end(tiny_video):
    with pytest.raises(VideoReadError, match=r"start=9 is past the end \(the video has 9 frames\)") as err:
        read_video(tiny_video, start=9)
    assert str(tiny_video) in str(err.value)


class _CountingContainer:
    """An av input container that counts the frames its decode() gives."""

    def __init__(self, container: av.container.InputContainer, counts: list[int]) -> None:
        self._c, self._counts = container, counts

    def __getattr__(self, name: str):
        return getattr(self._c, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._c.close()

    def decode(self, *args, **kwargs):
        self._counts.append(0)
        for frame in self._c.decode(*args, **kwargs):
            self._counts[-1] += 1
            yield frame


@pytest.mark.parametrize("suffix, codec, offset", [(".mp4", "libx264", 0), (".mkv", "libx264", 2000),
                                                    (".webm", "libvpx-vp9", 0), (".avi", "libx264", 0)])
def test_start_time_seeks_to_the_frames_start_would_read(tmp_path, monkeypatch, suffix, codec, offset):
    """A window late in a long file decoded every frame before it; start_time seeks to the keyframe before it and
    gives the frames of the matching frame index (B-frames, a stream starting 2 s in). Avi's frames carry decode
    times, so there it counts frames as start does."""
    frames = np.repeat(noise((25, 1, 32, 48, 3)), 4, axis=1).reshape(100, 32, 48, 3)
    path = write_raw(tmp_path / f"v{suffix}", frames, codec, "yuv420p", gop=10,
                     pts=[offset + 40 * i for i in range(100)] if offset else None)
    for seconds in (0, 0.5, 1.96, 3.0, 3.96):
        index = np.concatenate(list(iter_video(path, start=round(seconds * 25), num_frames=4, stride=2)))
        timed = np.concatenate(list(iter_video(path, start_time=seconds, num_frames=4, stride=2)))
        assert np.array_equal(index, timed), seconds
    counts: list[int] = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: _CountingContainer(real_open(*a, **k), counts))
    list(iter_video(path, start_time=3.0, num_frames=4))
    assert counts[-1] >= 79 if suffix == ".avi" else counts[-1] <= 4 + 10 + 4  # up to a GOP before, B-frame delay
    with pytest.raises(VideoReadError, match=r"start_time=4.5 s is past the end|start=112 is past the end"):
        list(iter_video(path, start_time=4.5))
    with pytest.raises(ValueError, match="start_time must be >= 0"):
        iter_video(path, start_time=-1)


def test_write_errors_leave_no_file(tmp_path, tiny_frames):
    path = tmp_path / "out.mkv"
    cases = [
        (dict(frames=tiny_frames, codec="nope"), "unknown codec"),
        (dict(frames=tiny_frames[:0]), "no frames"),
        (dict(frames=tiny_frames.astype(np.float32)), "uint8"),
        (dict(frames=iter([tiny_frames[:2], tiny_frames[:2, :10]]), codec="ffv1"), "uint8 RGB"),
        (dict(frames=tiny_frames[:, :23], codec="h264", pix_fmt="yuv420p"), "even"),
        (dict(frames=tiny_frames, codec="h265"), "64x64"),
        (dict(frames=np.zeros((2, 100, 16, 3), np.uint8), codec="av1"), "at most 64x64"),   # SVT-AV1 never returned
    ]
    for kwargs, message in cases:
        with pytest.raises(VideoWriteError, match=message):
            write_video(path, fps=25, **kwargs)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(VideoWriteError, match="cannot write"):
        write_video(tmp_path / "out.unknownext", tiny_frames, 25)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(VideoWriteError, match="cannot write"):
        write_video(tmp_path / "file" / "out.mkv", tiny_frames, 25, codec="ffv1")


def test_video_folder_seeks_to_a_late_window(tmp_path, monkeypatch):
    """A clip late in a long video is reached by seeking to the keyframe before it: decoding every frame from the
    file's start would cost a long video's whole head per clip. Frame i is flat gray 20 + 2i, so the clip says
    which frames it holds."""
    from vitok.data.folder import VideoFolder

    root = tmp_path / "long"
    root.mkdir()
    levels = 20 + 2 * np.arange(100)
    frames = np.broadcast_to(levels[:, None, None, None], (100, 32, 32, 3)).astype(np.uint8)
    write_raw(root / "long.mp4", frames, "libx264", "yuv420p", gop=10)   # 25 fps, a keyframe every 10 frames
    ds = VideoFolder(root, num_frames=4, size=16)
    assert ds.items[0].num_frames == 100
    seed = 7   # its first draw starts the clip at frame 91 of 0..96
    assert np.random.default_rng(seed).integers(0, 97) == 91
    counts: list[int] = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: _CountingContainer(real_open(*a, **k), counts))
    clip = ds.read_item(0, np.random.default_rng(seed))
    shown = ((clip.mean(dim=(0, 2, 3)).numpy() + 1) * 127.5 - 20) / 2   # the frame index each clip frame shows
    assert np.abs(shown - np.arange(91, 95)).max() <= 1, shown
    assert len(counts) == 1 and 4 <= counts[0] <= 4 + 10 + 4, counts   # the clip, up to a GOP before, B-frames


@pytest.mark.skipif(not Path("/proc/self/task").is_dir() or (os.cpu_count() or 1) < 2,
                    reason="counts the process's threads in /proc; FFmpeg decodes on one thread on one core")
def test_reads_leave_no_decoder_threads_behind(tmp_path):
    """Reading the display matrix put the first decoded frame in a reference cycle (PyAV's side data), which kept
    FFmpeg's decoding threads alive until the garbage collector ran: a DataLoader forked meanwhile segfaulted."""
    import gc

    path = tmp_path / "t.mp4"
    write_video(path, np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8), 25)

    def threads() -> int:
        return len(list(Path("/proc/self/task").iterdir()))

    was = gc.isenabled()
    gc.disable()   # as between two collections
    try:
        before = threads()
        probe_video(path)
        read_video(path)
        reading = iter_video(path, chunk_frames=2)
        next(reading)
        during = threads()
        reading.close()
        del reading
        assert during > before and threads() == before, (before, during, threads())
    finally:
        if was:
            gc.enable()


def test_ffmpeg_out_of_memory_is_not_a_corrupt_file(tmp_path, monkeypatch):
    """FFmpeg's ENOMEM was reported as "corrupt or truncated", and extraction skipped the file as unreadable (which
    files a dataset held depended on memory pressure): it is a MemoryError naming the file."""
    import errno

    import vitok.data.io as io_mod

    path = tmp_path / "t.mp4"
    write_video(path, np.zeros((4, 32, 32, 3), np.uint8), 25)

    def no_memory(*args, **kwargs):
        raise av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(io_mod, "_to_rgb", no_memory)
    with pytest.raises(MemoryError, match=f"{path}: Cannot allocate memory") as e:
        read_video(path)
    assert not isinstance(e.value, VideoReadError)


def test_read_video_holds_the_video_once(carphone_path, monkeypatch):
    """read_video kept every chunk in a list and then concatenated them: twice the video's memory at its peak. The
    frames go into one array sized by the header's count, and a count that is off (too few, or more than memory
    holds) still gives every frame."""
    import dataclasses

    import vitok.data.io as io_mod

    tracemalloc.start()
    full, info = read_video(carphone_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    chunk = 16 * full[0].nbytes   # read_video's chunks: one in decoding, one being stacked, one copied in
    assert len(full) == info.num_frames and peak < full.nbytes + 3 * chunk, (peak, full.nbytes)
    real = io_mod.probe_video
    # a header that says too few frames, or more than memory holds (MemoryError) or numpy can address (ValueError)
    for count in (1, len(full) - 1, 10 ** 13, 10 ** 18):
        monkeypatch.setattr(io_mod, "probe_video", lambda p, n=count: dataclasses.replace(real(p), num_frames=n))
        assert np.array_equal(read_video(carphone_path)[0], full)
        assert np.array_equal(read_video(carphone_path, start=7, stride=3, num_frames=20)[0], full[7::3][:20])


def test_palette_and_16_bit_images_read(tmp_path, tiny_frames):
    """The display matrix came from a 2x2 copy in the frame's own pixel format, which swscale cannot write for
    palettes (a PNG saved as "P"), Bayer or float formats: such images failed with a raw FFmpeg error."""
    Image.fromarray(tiny_frames[0]).convert("P").save(tmp_path / "p.png")
    frames, info = read_video(tmp_path / "p.png")
    assert info.pix_fmt == "pal8" and frames.shape == (1, *tiny_frames.shape[1:])
    assert np.array_equal(frames[0], np.asarray(Image.open(tmp_path / "p.png").convert("RGB")))
    Image.fromarray((tiny_frames[0, ..., 0].astype(np.uint16) * 257)).save(tmp_path / "g.png")
    frames, info = read_video(tmp_path / "g.png")
    assert info.pix_fmt.startswith("gray16")
    assert np.abs(frames[0, ..., 1].astype(int) - tiny_frames[0, ..., 0]).max() <= 1   # swscale's 16 -> 8 bits


@pytest.mark.parametrize("height", [3, 4])
def test_bayer_frames_of_odd_height_are_refused_not_an_abort(tmp_path, height):
    """FFmpeg's converter aborts the whole process (SIGABRT: no error, a DataLoader worker gone) on Bayer frames of
    odd height; they are a one-line error, even ones still read."""
    import subprocess
    import sys

    path = tmp_path / f"b{height}.nut"
    with av.open(str(path), "w") as c:
        s = c.add_stream("rawvideo", rate=25)
        s.width, s.height, s.pix_fmt = 64, height, "bayer_rggb8"
        for i in range(2):
            f = av.VideoFrame(64, height, "bayer_rggb8")
            f.planes[0].update(bytes([i * 40]) * f.planes[0].buffer_size)
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    script = ("import sys\nfrom vitok.data.io import read_video\nfrom vitok.data.errors import VideoReadError\n"
              "try:\n    print(read_video(sys.argv[1])[0].shape)\n"
              "except VideoReadError as e:\n    print('error:', e)\n")
    run = subprocess.run([sys.executable, "-c", script, str(path)], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, (run.returncode, run.stderr[-300:])
    if height % 2:
        assert run.stdout.strip() == f"error: {path}: bayer_rggb8 frames of odd height (64x3) cannot be converted to " \
                                     f"RGB (FFmpeg's converter aborts on them)"
    else:
        assert run.stdout.strip() == "(2, 4, 64, 3)"
