"""Classical codecs through PyAV: round trips on a real clip, odd sizes, knobs, byte accounting, bad input."""
from __future__ import annotations

import re
import sys
from fractions import Fraction
from typing import Any, Callable

import numpy as np
import pytest

from vitok.codecs import BitstreamError, CodecError, codec_availability, get_codec, list_codecs

CLASSICAL = ["h264", "h265", "av1", "vp9"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255 ** 2 / mse)


def test_all_classical_available_here():
    assert set(CLASSICAL) <= set(list_codecs())
    assert all(codec_availability()[n] == "available" for n in CLASSICAL)


@pytest.mark.parametrize("name", CLASSICAL)
def test_round_trip_real_clip(name, carphone_clip):
    codec = get_codec(name)
    frames = carphone_clip  # 8 frames 176x144
    fps = Fraction(30000, 1001)
    data = codec.encode(frames, fps, crf=codec.operating_points()[2]["crf"])
    out, out_fps = codec.decode(data)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert out_fps == fps
    assert _psnr(frames, out) > 28
    # accounting: the rate is the elementary stream, without the mp4 boxes around it
    assert 0 < codec.rate_bytes(data) == codec.stream_bytes(data) < len(data)


def _mp4_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, int, int]]:
    """(type, payload start, end) of the ISO-BMFF boxes in ``data[start:end]``, read from their headers."""
    import struct

    end, boxes = len(data) if end is None else end, []
    while start < end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        head = 8
        if size == 1:
            size, head = struct.unpack(">Q", data[start + 8:start + 16])[0], 16
        elif size == 0:
            size = end - start
        boxes.append((kind.decode("latin-1"), start + head, start + size))
        start += size
    return boxes


def test_h264_rate_is_the_mdat_samples_plus_the_parameter_sets(carphone_clip):
    """The rate counts every coded byte: the samples (mdat's payload) and the SPS/PPS the mp4 keeps apart in its
    avcC record; read here from the file's boxes, not through the codec's own accounting."""
    codec = get_codec("h264")
    data = codec.encode(np.ascontiguousarray(carphone_clip[:3, :48, :64]), 25)
    top = _mp4_boxes(data)
    assert [k for k, _, _ in top].count("mdat") == 1
    samples = sum(e - s for k, s, e in top if k == "mdat")
    moov = [(s, e) for k, s, e in top if k == "moov"]
    assert len(moov) == 1
    at = data.index(b"avcC", *moov[0])   # the decoder configuration record, in moov's sample description
    avcc = data[at + 4:at - 4 + int.from_bytes(data[at - 4:at], "big")]
    sps = int.from_bytes(avcc[6:8], "big")
    assert avcc[0] == 1 and avcc[5] & 0x1F >= 1 and avcc[8] & 0x1F == 7   # version 1, an SPS (NAL type 7)
    assert avcc[8 + sps] >= 1 and avcc[8 + sps + 3] & 0x1F == 8            # then a PPS (NAL type 8)
    assert samples > 0
    assert codec.rate_bytes(data) == codec.stream_bytes(data) == samples + len(avcc) < len(data)


@pytest.mark.parametrize("name", ["h264", "av1", "vp9"])
def test_odd_size_pads_and_crops_back(name, carphone_clip):
    codec = get_codec(name)
    frames = np.ascontiguousarray(carphone_clip[:4, :67, :91])
    out, _ = codec.decode(codec.encode(frames, 25))
    assert out.shape == frames.shape
    assert _psnr(frames, out) > 26


def test_crf_controls_rate(carphone_clip):
    codec = get_codec("h264")
    sizes = [len(codec.encode(carphone_clip, 30, **op)) for op in codec.operating_points()[::3]]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 2 * sizes[-1]


def test_no_encoder_banner_sei(carphone_clip, monkeypatch):
    """Encoder self-descriptions (x265's info SEI, x264's version SEI: settings as text) are metadata, not video,
    so small clips are not charged for them. Cutting x264's changes no decoded pixel and saves its ~600 bytes."""
    from vitok.codecs import classical

    assert b"x265 (build" not in get_codec("h265").encode(carphone_clip, 30)
    h264 = get_codec("h264")
    cut = h264.encode(carphone_clip, 30)
    monkeypatch.setattr(classical, "_without_banner", lambda packet: packet)
    full = h264.encode(carphone_clip, 30)
    assert b"x264 - core" not in cut and b"x264 - core" in full
    assert 300 < len(full) - len(cut) < 2000
    np.testing.assert_array_equal(h264.decode(cut)[0], h264.decode(full)[0])


def test_drop_user_data_sei_keeps_every_other_nal():
    from vitok.codecs.classical import drop_user_data_sei

    sps, banner = b"\x00\x00\x00\x01\x67\x64\x00\x0a", b"\x00\x00\x01\x06\x05\x10" + b"u" * 16
    recovery_sei, idr = b"\x00\x00\x01\x06\x06\x01\x84\x80", b"\x00\x00\x00\x01\x65\x88\x84\x00\x00\x03\x01"
    assert drop_user_data_sei(sps + banner + recovery_sei + idr) == sps + recovery_sei + idr
    assert drop_user_data_sei(banner + idr) == idr
    assert drop_user_data_sei(b"no start code") == b"no start code"


def test_gop_knob(carphone_clip):
    codec = get_codec("h264")
    a = codec.encode(carphone_clip, 30, crf=30, gop=1)  # all intra: bigger
    b = codec.encode(carphone_clip, 30, crf=30, gop=64)
    assert len(a) > len(b)
    assert codec.decode(a)[0].shape == codec.decode(b)[0].shape
    assert set(_picture_types(a)) == {"I"} and "P" in _picture_types(b)


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_knob_reaches_the_encoder(carphone_clip, monkeypatch, threads):
    """x264 states its thread count in the banner the codec cuts from the stream: read it before the cut."""
    import vitok.codecs.classical as classical

    banners = []
    real = classical._without_banner
    monkeypatch.setattr(classical, "_without_banner", lambda packet: (banners.append(bytes(packet)), real(packet))[1])
    data = get_codec("h264").encode(carphone_clip, 30, crf=30, threads=threads)
    assert len(banners) == 1 and f" threads={threads} ".encode() in banners[0]
    assert b"x264 - core" not in data


def _peak_threads(call: Callable[[], Any]) -> tuple[int, Any]:
    """The most threads this process ran beside those it had before ``call()`` (sampled from /proc/self/task, the
    sampler left out), and what ``call`` returned."""
    import os
    import threading
    import time

    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], len(os.listdir("/proc/self/task")))
            time.sleep(0.0005)

    before = len(os.listdir("/proc/self/task"))
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        out = call()
    finally:
        done.set()
        sampler.join()
    return peak[0] - before - 1, out


needs_proc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc/self/task")


def test_threads_knob_caps_the_x265_pool(carphone_clip, monkeypatch, capfd):
    """x265 ignores the context's thread count for its pool (one thread per core); its own log, raised to info here,
    shows the pool and frame threads that ``threads=1`` leaves."""
    import vitok.codecs.classical as classical

    real = classical.ClassicalCodec._options
    monkeypatch.setattr(classical.ClassicalCodec, "_options", lambda self, *a: {
        k: v.replace("log-level=error", "log-level=info") for k, v in real(self, *a).items()})
    get_codec("h265").encode(carphone_clip, 30, threads=1)
    log = capfd.readouterr().err
    assert "Thread pool created using 1 threads" in log, log
    assert re.search(r"frame threads / pool features\s*: 1 /", log), log


@needs_proc
def test_threads_knob_caps_svt_av1(carphone_clip):
    """SVT-AV1 ignores the context's thread count (~40 threads on 2 cores, more on more); at ``threads=1`` it runs at
    its lowest parallelism, ~18 threads, beside swscale's RGB->YUV conversion threads (up to one per core)."""
    import os

    frames = np.ascontiguousarray(carphone_clip[:, :64, :64])
    extra, data = _peak_threads(lambda: get_codec("av1").encode(frames, 30, threads=1))
    assert extra <= 20 + len(os.sched_getaffinity(0)) and len(data) > 0


@needs_proc
def test_threads_caps_the_h264_encoder_and_its_conversion(carphone_clip):
    """``encode(threads=1)`` with x264 runs in the calling thread alone: x264's frame threads and swscale's RGB->YUV
    conversion (one thread per core when left automatic), bytes unchanged."""
    codec = get_codec("h264")
    extra, data = _peak_threads(lambda: codec.encode(carphone_clip, 30, threads=1))
    assert extra == 0 and data == codec.encode(carphone_clip, 30, threads=1)


def test_threads_zero_leaves_threading_to_the_encoders():
    """The default ``threads=0`` adds no thread options (the streams stay what they were); N adds them."""
    h265, av1 = get_codec("h265"), get_codec("av1")
    assert "pools" not in h265._options(28, "medium", 64, None, 0)["x265-params"]
    assert "pools=2" in h265._options(28, "medium", 64, None, 2)["x265-params"]
    assert "svtav1-params" not in av1._options(35, "8", 64, None, 0)
    assert av1._options(35, "8", 64, None, 2)["svtav1-params"] == "lp=2"


@needs_proc
@pytest.mark.parametrize("name", CLASSICAL)
def test_threads_caps_the_decoder(name, carphone_clip):
    """``decode(data, threads=1)`` runs in the calling thread alone (decoder and RGB conversion), frames unchanged."""
    codec = get_codec(name)
    data = codec.encode(carphone_clip, 30)
    extra, (frames, _) = _peak_threads(lambda: codec.decode(data, threads=1))
    assert extra == 0 and np.array_equal(frames, codec.decode(data)[0])


def _picture_types(data: bytes) -> str:
    """Decoded frames' picture types in display order, one letter each (I, P, B)."""
    import io

    import av

    with av.open(io.BytesIO(data)) as f:
        return "".join("?IPB"[int(frame.pict_type)] for frame in f.decode(video=0))  # AVPictureType: 1 I, 2 P, 3 B


@pytest.mark.parametrize("name", ["h264", "h265"])
def test_preset_b_frames_by_default(name, carphone_clip):
    """The reference is the preset as x264/x265 ship it (B-frames included), not a weaker IPPP stream; ``bframes=0``
    still gives IPPP. Both decode to every frame, in order."""
    codec = get_codec(name)
    default, ippp = codec.encode(carphone_clip, 30, crf=30), codec.encode(carphone_clip, 30, crf=30, bframes=0)
    assert "B" in _picture_types(default)
    assert set(_picture_types(ippp)) == {"I", "P"}
    for data in (default, ippp):
        out, _ = codec.decode(data)
        assert out.shape == carphone_clip.shape and _psnr(carphone_clip, out) > 28


@pytest.mark.parametrize("name", ["h264", "h265"])
def test_tune_reaches_the_encoder(name, carphone_clip):
    """``tune=psnr`` turns the encoder's psychovisual choices off: another stream, and (x264, whose psy-rd and AQ
    cost most PSNR) a higher PSNR at the same CRF; an unknown tune, or one for an encoder without tunes, is refused."""
    codec = get_codec(name)
    default, tuned = codec.encode(carphone_clip, 30, crf=30), codec.encode(carphone_clip, 30, crf=30, tune="psnr")
    assert default != tuned and codec.decode(tuned)[0].shape == carphone_clip.shape
    if name == "h264":
        assert _psnr(carphone_clip, codec.decode(tuned)[0]) > _psnr(carphone_clip, codec.decode(default)[0]) + 0.5
    with pytest.raises(CodecError, match=f"{name}: unknown tune 'sharp'; one of .*psnr"):
        codec.encode(carphone_clip, 30, tune="sharp")
    with pytest.raises(CodecError, match="vp9: unknown tune 'psnr'; it takes none"):
        get_codec("vp9").encode(carphone_clip, 30, tune="psnr")
    assert "tune" in codec.knobs and "tune" not in get_codec("vp9").knobs   # what `--op` may set


@pytest.mark.parametrize("bad", [np.zeros((2, 16, 16, 3), np.float32), np.zeros((2, 16, 16), np.uint8), [1, 2]])
def test_bad_frames_are_codec_errors(bad):
    with pytest.raises(CodecError, match="uint8"):
        get_codec("h264").encode(bad, 25)


def test_an_encoder_that_will_not_open_is_a_codec_error(monkeypatch):
    """An encoder FFmpeg will not open (SVT-AV1 on 2x64 frames in PyAV 18.1.0) is a CodecError naming the encoder
    and size, not PyAV's own; SVT-AV1's tiny frames, which abort the process in PyAV 18.1.1, are refused first."""
    import av

    import vitok.codecs.classical as classical

    def will_not_open(*_):
        raise av.error.FFmpegError(22, "Invalid argument", 'avcodec_open2("libx264")')

    monkeypatch.setattr(classical, "flushed_packets", will_not_open)
    with pytest.raises(CodecError, match=r"h264: libx264 cannot encode these 8x6 frames: .*avcodec_open2"):
        get_codec("h264").encode(np.zeros((2, 6, 8, 3), np.uint8), 25)
    for side in (2, 8, 15):
        with pytest.raises(CodecError, match=f"av1: frames must be at least 16x16, got {side}x{side}"):
            get_codec("av1").encode(np.zeros((2, side, side, 3), np.uint8), 25)


@pytest.mark.parametrize("name", CLASSICAL)
def test_empty_video_is_bitstream_error(name):
    with pytest.raises(BitstreamError, match="empty input video"):
        get_codec(name).encode(np.zeros((0, 16, 16, 3), np.uint8), 25)


def test_bad_knobs(carphone_clip):
    codec = get_codec("h264")
    with pytest.raises(CodecError, match="crf"):
        codec.encode(carphone_clip, 25, crf=99)
    with pytest.raises(CodecError, match="preset"):
        codec.encode(carphone_clip, 25, preset="ludicrous")
    with pytest.raises(CodecError, match="64x64"):
        get_codec("h265").encode(carphone_clip[:, :32, :32], 25)
    # SVT-AV1 never returned from frames this thin (and took SIGTERM with it): refused before it starts
    for thin in (carphone_clip[:2, :100, :16], carphone_clip[:2, :16, :96]):
        with pytest.raises(CodecError, match="at most 64x64"):
            get_codec("av1").encode(np.ascontiguousarray(thin), 25)


def test_one_and_two_frame_h265_streams(carphone_clip):
    """x265 gives a stream of one or two frames garbage decode times, which the mp4 muxer refused about half the
    time (or wrote): each such stream now encodes, and decodes to its frames."""
    codec = get_codec("h265")
    for frames in [carphone_clip[:1, :64, :64], carphone_clip[:2, :64, :64]] * 6:
        out, _ = codec.decode(codec.encode(np.ascontiguousarray(frames), 25))
        assert out.shape == frames.shape and _psnr(frames, out) > 28


@pytest.mark.parametrize("name", CLASSICAL)
def test_streams_are_tagged_as_converted(name, carphone_clip):
    """The BT.601 limited-range YUV the RGB frames become is what the stream says, for players that would guess."""
    import io

    import av

    data = get_codec(name).encode(carphone_clip[:2, :64, :64].copy(), 25)
    with av.open(io.BytesIO(data)) as inp:
        frame = next(inp.decode(video=0))
    assert (frame.colorspace, frame.color_range) == (6, 1)   # smpte170m, tv


def test_corrupt_data_is_bitstream_error(carphone_clip):
    codec = get_codec("h264")
    with pytest.raises(BitstreamError):
        codec.decode(b"not an mp4 at all" * 10)
    with pytest.raises(BitstreamError):
        codec.decode(codec.encode(carphone_clip, 25)[:200])


def test_unknown_codec():
    with pytest.raises(CodecError, match="unknown codec"):
        get_codec("mpeg7")
    with pytest.raises(CodecError, match="unknown vitok model"):
        get_codec("vitok:no-such-model")


def test_svt_av1_is_quiet_and_the_environment_is_left_alone_until_it_encodes(tmp_path):
    """Importing the classical codecs set SVT_LOG in the caller's environment; it is set only when SVT-AV1 first
    encodes (it prints its configuration to stderr otherwise), and a user's own SVT_LOG is kept."""
    import os
    import subprocess

    script = ("import os, numpy as np; from vitok.codecs import get_codec; from vitok.data.io import write_video\n"
              "frames = np.zeros((3, 64, 64, 3), np.uint8)\n"
              "get_codec('h264').encode(frames, 25); print(os.environ.get('SVT_LOG'))\n"
              "get_codec('av1').encode(frames, 25); write_video('a.mkv', frames, 25, codec='av1')\n"
              "print(os.environ.get('SVT_LOG'))")
    env = {k: v for k, v in os.environ.items() if k != "SVT_LOG"}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.split() == ["None", "1"], run.stderr
    assert "Svt[info]" not in run.stderr, run.stderr[:300]
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**env, "SVT_LOG": "3"},
                         capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.split() == ["3", "3"] and "Svt[info]" in run.stderr, run.stderr[:300]
