"""Classical codecs (h264, h265, av1, vp9) through PyAV, in memory, behind the ``Codec`` interface.

Every stream is 8-bit yuv420p (swscale's BT.601 limited range, tagged as such for players) in an mp4 file, with an
explicit GOP (a keyframe every 64 frames by default), the preset's own B-frames (``bframes=0`` gives the low-delay
IPPP setting) and frame threading (PyAV's default slice threading inflates x264 streams by 1-3%). yuv420p needs
even sizes: odd frames are padded by replicating the last row/column and the true size (and exact fps) is kept in
the mp4's ``comment`` tag (``vitok size=WxH fps=N/D``); ``decode`` crops back to it. Encoder self-descriptions
carry no picture data and are left out so bytes compare fairly: x265 runs with ``info=0``, and x264's version SEI
(its settings as text, ~600 bytes, which libx264 cannot switch off) is cut from the first packet. ``threads`` N
caps the coders: the codec context's thread count (x264's and x265's frame threads, libvpx's threads, the decoders'),
the RGB<->YUV conversions, x265's thread pool (``pools``) and SVT-AV1's level of parallelism (``lp``, what it picks
on an N-core machine; SVT-AV1 still starts ~17 threads at its lowest level); 0 leaves every choice to the coders.
``tune`` (h264, h265) passes x264's or x265's tuning, e.g. ``psnr``, which turns off the psychovisual choices that
trade PSNR for a sharper look (the default, as the encoders ship, keeps them).
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from vitok.codecs.base import Codec, check_frames, register
from vitok.codecs.errors import BitstreamError, CodecError
from vitok.data.io import flushed_packets, frame_size_problem, quiet_svt, tag_color, tagged_yuv_frame

X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
_TAG = re.compile(r"vitok size=(\d+)x(\d+) fps=(\d+)/(\d+)")


@dataclass(frozen=True)
class _Spec:
    name: str
    encoder: str
    crf: int
    crf_max: int
    preset: str
    presets: tuple[str, ...]
    points: tuple[int, ...]  # CRF values an RD sweep walks, high rate first
    tunes: tuple[str, ...] = ()   # the encoder's --tune values (none: no tune knob); not zerolatency, whose sliced
    # threads the codec's frame threading would override


SPECS = (
    _Spec("h264", "libx264", 23, 51, "medium", X26X_PRESETS, (18, 22, 26, 30, 34, 38, 42, 46, 51),
          ("film", "animation", "grain", "stillimage", "psnr", "ssim", "fastdecode")),
    _Spec("h265", "libx265", 28, 51, "medium", X26X_PRESETS, (20, 24, 28, 32, 36, 40, 44, 48, 51),
          ("psnr", "ssim", "grain", "fastdecode", "animation")),
    _Spec("av1", "libsvtav1", 35, 63, "8", tuple(str(i) for i in range(14)), (22, 28, 34, 40, 46, 52, 58, 63)),
    _Spec("vp9", "libvpx-vp9", 31, 63, "4", tuple(str(i) for i in range(9)), (20, 27, 34, 41, 48, 55, 62)),
)


class ClassicalCodec(Codec):
    """One PyAV encoder with knobs ``crf``, ``preset``, ``gop`` (keyframe interval), ``bframes``, ``threads`` and
    (h264, h265) ``tune``."""

    suffix = ".mp4"

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.name = spec.name
        self.knobs = ("crf", "preset", "gop", "bframes", "threads") + (("tune",) if spec.tunes else ())

    @property
    def identity(self) -> str:
        """The FFmpeg build, and the byte accounting (encoder banners cut)."""
        return (f"libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}, no encoder banner, "
                "B-frames: the preset's, tagged BT.601 limited range")

    def operating_points(self) -> list[dict[str, Any]]:
        return [{"crf": c} for c in self.spec.points]

    def check_knobs(self, crf: int | None = None, preset: str | int | None = None, gop: int = 64,
                    bframes: int | None = None, threads: int = 0, tune: str | None = None) -> tuple[int, str]:
        """The CRF and preset these knobs encode with, or a CodecError naming the bad one (`vitok rd` checks its
        operating points with it before any work)."""
        crf = self.spec.crf if crf is None else crf
        preset = self.spec.preset if preset is None else str(preset)
        if not (isinstance(crf, (int, np.integer)) and 0 <= crf <= self.spec.crf_max):
            raise CodecError(f"{self.name}: crf must be an integer in 0..{self.spec.crf_max}, got {crf!r}")
        if preset not in self.spec.presets:
            raise CodecError(f"{self.name}: unknown preset {preset!r}; one of {', '.join(self.spec.presets)}")
        if tune is not None and tune not in self.spec.tunes:
            raise CodecError(f"{self.name}: unknown tune {tune!r}; "
                             + (f"one of {', '.join(self.spec.tunes)}" if self.spec.tunes else "it takes none"))
        whole = (int, np.integer)   # as crf: numpy integers too
        if not isinstance(gop, whole) or gop < 1 or (bframes is not None and (not isinstance(bframes, whole)
                                                                              or bframes < 0)):
            raise CodecError(f"{self.name}: gop must be >= 1 and bframes >= 0, got gop={gop} bframes={bframes}")
        return crf, preset

    def encode(self, frames: np.ndarray, fps: Fraction, *, crf: int | None = None, preset: str | int | None = None,
               gop: int = 64, bframes: int | None = None, threads: int = 0, tune: str | None = None) -> bytes:
        frames, fps = check_frames(frames, fps)
        crf, preset = self.check_knobs(crf, preset, gop, bframes, threads, tune)
        t, h, w, _ = frames.shape
        problem = frame_size_problem(self.spec.encoder, w, h)
        if problem:
            raise CodecError(f"{self.name}: {problem}")
        pad = ((0, h % 2), (0, w % 2), (0, 0))  # per frame
        buf = io.BytesIO()
        try:
            quiet_svt(self.spec.encoder)
            with av.open(buf, "w", format="mp4") as out:
                out.metadata["comment"] = f"vitok size={w}x{h} fps={fps.numerator}/{fps.denominator}"
                options = self._options(int(crf), preset, gop, bframes, threads)
                if tune is not None:
                    options["tune"] = tune
                stream = out.add_stream(self.spec.encoder, rate=fps, options=options)
                stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
                tag_color(stream)
                stream.time_base = 1 / fps
                cc = stream.codec_context
                cc.gop_size = gop
                if bframes is not None:
                    cc.max_b_frames = bframes
                cc.thread_type, cc.thread_count = "FRAME", threads
                banner_left = self.spec.encoder == "libx264"  # x264 writes its banner into its first packet only
                for i in [*range(t), None]:
                    frame = None
                    if i is not None:
                        frame = tagged_yuv_frame(np.pad(frames[i], pad, mode="edge") if (h | w) % 2 else frames[i],
                                                 "yuv420p", threads)
                        frame.pts = i
                    packets = stream.encode(frame) if frame is not None else flushed_packets(stream, t)
                    if banner_left and packets:
                        packets[0], banner_left = _without_banner(packets[0]), False
                    out.mux(packets)
        except av.error.FFmpegError as e:   # e.g. an encoder that will not open on frames this small
            raise CodecError(f"{self.name}: {self.spec.encoder} cannot encode these {w}x{h} frames: {e}") from None
        return buf.getvalue()

    def _options(self, crf: int, preset: str, gop: int, bframes: int | None, threads: int) -> dict[str, str]:
        """Encoder options; ``bframes`` None keeps the preset's B-frame count, ``threads`` 0 the encoder's threads."""
        enc = self.spec.encoder
        if enc == "libx264":
            return {"crf": str(crf), "preset": preset, **({} if bframes is None else {"bf": str(bframes)})}
        if enc == "libx265":
            b = "" if bframes is None else f":bframes={bframes}"
            pools = f":pools={threads}" if threads else ""   # its frame threads follow the context's thread count
            return {"crf": str(crf), "preset": preset,
                    "x265-params": f"log-level=error:info=0{b}:keyint={gop}:min-keyint={gop}{pools}"}
        if enc == "libsvtav1":
            level = {"svtav1-params": f"lp={_svt_level(threads)}"} if threads else {}
            return {"crf": str(crf), "preset": preset, **level}
        return {"crf": str(crf), "b": "0", "cpu-used": preset, "deadline": "good", "row-mt": "1"}  # libvpx-vp9

    def decode(self, data: bytes, *, threads: int = 0) -> tuple[np.ndarray, Fraction]:
        """Frames and fps of ``data``; ``threads`` caps the decoder's and the RGB conversion's threads (0: FFmpeg's)."""
        try:
            with av.open(io.BytesIO(data), "r") as inp:
                if not inp.streams.video:
                    raise BitstreamError(f"{self.name}: no video stream in the data")
                stream = inp.streams.video[0]
                stream.thread_type = "AUTO"
                if threads:
                    stream.codec_context.thread_count = threads
                size, fps = _tag(inp.metadata.get("comment", ""))
                frames = [f.to_ndarray(format="rgb24", threads=threads) for f in inp.decode(stream)]
                fps = fps or Fraction(stream.average_rate or stream.guessed_rate or 0)
        except (av.error.FFmpegError, ValueError) as e:
            raise BitstreamError(f"{self.name}: cannot decode the data: {e}") from None
        if not frames:
            raise BitstreamError(f"{self.name}: the data holds no decodable frames")
        out = np.stack(frames)
        if size is not None:
            out = out[:, : size[1], : size[0]]
        return out, fps

    def rate_bytes(self, data: bytes) -> int:
        """The elementary stream, not the mp4 around it (whose ~900 bytes would swamp short clips' rates)."""
        return self.stream_bytes(data)

    def stream_bytes(self, data: bytes) -> int:
        """Elementary-stream bytes: sum of packet sizes plus the extradata (SPS/PPS/VPS) kept outside packets."""
        try:
            with av.open(io.BytesIO(data), "r") as inp:
                stream = inp.streams.video[0]
                extradata = len(stream.codec_context.extradata or b"")
                return extradata + sum(p.size for p in inp.demux(stream))
        except (av.error.FFmpegError, IndexError) as e:
            raise BitstreamError(f"{self.name}: cannot read the data: {e}") from None


def drop_user_data_sei(data: bytes) -> bytes:
    """An Annex-B H.264 access unit without its SEI NAL units whose first message is user_data_unregistered
    (payload type 5: encoder banners such as x264's). Every other NAL unit is kept byte for byte."""
    starts = []  # (start of the start code incl. a leading zero byte, start of the NAL unit)
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append((i - 1 if i > 0 and data[i - 1] == 0 else i, i + 3))
        i = data.find(b"\x00\x00\x01", i + 3)
    if not starts:
        return data
    pieces = [data[:starts[0][0]]]
    for k, (begin, nal) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(data)
        if not (nal + 1 < end and data[nal] & 0x1F == 6 and data[nal + 1] == 5):
            pieces.append(data[begin:end])
    return b"".join(pieces)


def _without_banner(packet: av.Packet) -> av.Packet:
    """The packet without x264's user-data SEI (its settings as text), timing and flags kept."""
    data = bytes(packet)
    kept = drop_user_data_sei(data)
    if len(kept) == len(data):
        return packet
    q = av.Packet(kept)
    q.pts, q.dts, q.time_base, q.is_keyframe, q.stream = (packet.pts, packet.dts, packet.time_base,
                                                          packet.is_keyframe, packet.stream)
    return q


def _svt_level(threads: int) -> int:
    """SVT-AV1's level of parallelism (1-6) for ``threads`` cores: the level it picks itself on a machine that size."""
    return 1 + sum(threads > cores for cores in (1, 2, 5, 11, 23))


def _tag(comment: str) -> tuple[tuple[int, int] | None, Fraction | None]:
    m = _TAG.search(comment or "")
    if not m or int(m[4]) == 0:
        return None, None
    return (int(m[1]), int(m[2])), Fraction(int(m[3]), int(m[4]))


def _register_all() -> None:
    for spec in SPECS:
        if spec.encoder in av.codecs_available:
            register(spec.name, lambda spec=spec: ClassicalCodec(spec))
        else:
            register(spec.name, None, f"PyAV/FFmpeg here has no {spec.encoder} encoder")


_register_all()
