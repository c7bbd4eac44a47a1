"""Video file I/O through PyAV: probe, read (whole or streamed in chunks), write (atomic), frame folders.

Reading always gives uint8 RGB ``(T,H,W,3)`` in display orientation:
- grayscale, alpha (dropped), 10/12-bit and full-range sources are converted to 8-bit RGB by FFmpeg's swscale;
- the display matrix (a container's rotation or mirroring, a JPEG's EXIF orientation) is applied as ffmpeg's
  autorotate applies it (to the nearest quarter turn), so ``VideoInfo.width/height`` and crops refer to the
  picture as shown;
- non-square pixels are kept as stored (no resampling, like ffmpeg): ``VideoInfo.sample_aspect_ratio`` says how
  wide a pixel shows (carphone's 176x144 is 128:117), and ``write_video(sample_aspect_ratio=)`` records it again;
- variable frame rate files give every decoded frame once, in presentation order (no resampling);
  ``VideoInfo.fps`` is the stream's average rate and ``frame_times`` gives the real timestamps; a file whose frame
  times jump (frames lost to damage, or a varying rate), repeat or go back is named once per process with a
  ``FrameTimingWarning``;
- HDR video (PQ or HLG transfer, ``VideoInfo.hdr``) is converted as if it were SDR, without tone mapping (this
  FFmpeg has no zscale or libplacebo), so its colours look flat; such a file is named once per process with an
  ``HDRWarning``;
- still images (png/jpg/...) read as a 1-frame video (``is_image=True``, nominal fps from the demuxer).
Written YUV is tagged as what the RGB->YUV conversion makes (BT.601, limited range; see ``tag_color``).
Options apply in this order: ``start``/``stride``/``num_frames`` pick frames, ``crop`` cuts a region of the
source, ``size=(W,H)`` resizes it (bilinear with antialiasing, deterministic). ``crop="center"`` needs ``size``
and takes the largest centred region with the aspect ratio of ``size``.
"""
from __future__ import annotations

import glob
import itertools
import math
import numbers
import os
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import av
import av.error
import numpy as np

from .atomic import atomic_path
from .errors import VideoReadError, VideoWriteError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".y4m", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
                    ".ogv", ".gif")   # what folders of videos are scanned for (training, extraction, rd)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
CODECS = {"h264": "libx264", "h265": "libx265", "hevc": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1",
          "ffv1": "ffv1"}
_TEXT_FORMATS = {"tty", "bin", "xbin", "adf", "idf"}  # demuxers that would render a text file as "video"
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError)

Size = tuple[int, int]
Crop = tuple[int, int, int, int]


@dataclass(frozen=True)
class VideoInfo:
    """What a file holds, in display orientation, before any crop or resize."""

    path: Path
    width: int
    height: int
    fps: Fraction
    num_frames: int | None  # header count, else duration x fps (mkv/webm store no count), else None
    duration: float | None  # seconds
    codec: str
    pix_fmt: str
    rotation: int  # counter-clockwise degrees applied to the coded picture: 0, 90, 180 or 270
    is_image: bool
    sample_aspect_ratio: Fraction = Fraction(1)  # a pixel's shown width over its height (1: square pixels)
    mirrored: bool = False  # the coded picture is flipped left-right before the rotation (a mirroring matrix)
    hdr: str | None = None  # the HDR transfer, "PQ" or "HLG"; None for SDR or untagged video


def _reason(e: BaseException) -> str:
    return str(getattr(e, "strerror", None) or e).splitlines()[0]


def _failure(path: str | os.PathLike, e: BaseException, error: Exception) -> Exception:
    """``error`` for FFmpeg's ``e``; when FFmpeg ran out of memory, a MemoryError naming ``path`` instead: the
    machine's limit, not a broken file (extraction skips unreadable files, and must stop on this one)."""
    return MemoryError(f"{path}: {_reason(e)}") if isinstance(e, MemoryError) else error


def _open(path: str | os.PathLike, threads: bool = True) -> tuple[av.container.InputContainer,
                                                                  av.video.stream.VideoStream]:
    """Open ``path`` and return its container and first video stream, or raise a one-line VideoReadError.

    ``threads``: frame+slice threaded decoding (fast for whole videos; delays the first frame by a few packets).
    """
    p = Path(path)
    if not p.exists():
        raise VideoReadError(f"{p}: no such file")
    if p.is_dir():
        raise VideoReadError(f"{p}: is a directory, not a video file")
    try:
        container = av.open(str(p))
    except _AV_ERRORS as e:
        raise _failure(p, e, VideoReadError(f"{p}: not a readable video or image ({_reason(e)})")) from e
    if container.format.name in _TEXT_FORMATS:
        container.close()
        raise VideoReadError(f"{p}: not a video or image file")
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{p}: no video stream")
    stream = _main_stream(container.streams.video)
    if threads:
        stream.thread_type = "AUTO"
    return container, stream


def _main_stream(streams: Sequence[av.video.stream.VideoStream]) -> av.video.stream.VideoStream:
    """The stream ffmpeg would pick: the largest picture that is not an attached one (cover art, a thumbnail)."""
    moving = [s for s in streams if not s.disposition & av.stream.Disposition.attached_pic] or list(streams)
    return max(moving, key=lambda s: (s.width or 0) * (s.height or 0))   # max keeps the first of equals


def _fps(stream: av.video.stream.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(25)


def _stated_span(container: av.container.InputContainer, stream: av.video.stream.VideoStream
                 ) -> tuple[float, float] | None:
    """(start, end) of the video stream in seconds as the file states it: the stream header, mkv's per-track
    DURATION tag (an end time, not a length), or a lone stream's container; None when nothing states it."""
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    if stream.duration and tb:
        return start, start + float(stream.duration * tb)
    tag = stream.metadata.get("DURATION")
    if tag and re.fullmatch(r"\d+:\d\d:\d\d(\.\d+)?", tag):
        h, m, s = tag.split(":")
        return start, int(h) * 3600 + int(m) * 60 + float(s)
    if container.duration and len(container.streams) == 1:
        first = container.start_time / 1e6 if container.start_time is not None else 0.0
        return first, first + container.duration / 1e6
    return None


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """Video stream length in seconds, as the file states it (see `_stated_span`)."""
    span = _stated_span(container, stream)
    return None if span is None else max(span[1] - span[0], 0.0)


def _is_image(container: av.container.InputContainer) -> bool:
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


_AV_FRAME_DATA_EXIF = 31  # FFmpeg 8's EXIF side data: PyAV 18 cannot name it, so it cannot list a still's side data


def _without_side_data(frame: av.VideoFrame, kind: int) -> av.VideoFrame:
    """``frame`` less its side data of type ``kind`` (FFmpeg's ``sidedata`` filter)."""
    graph = av.filter.Graph()
    source = graph.add_buffer(template=frame, time_base=frame.time_base or Fraction(1, 25))
    drop, sink = graph.add("sidedata", f"mode=delete:type={kind}"), graph.add("buffersink")
    source.link_to(drop)
    drop.link_to(sink)
    graph.configure()
    graph.push(frame)
    return graph.pull()


def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's 3x3 display matrix in FFmpeg's layout (9 int32, row by row), or None when it has none.

    Read from a 2x2 RGB copy of the frame (its side data copied with it): PyAV keeps a frame whose side data was read in
    a reference cycle, and a decoded frame in one keeps the decoder's threads alive until the garbage collector
    runs (a DataLoader forked meanwhile crashes)."""
    frame = frame.reformat(width=2, height=2, format="rgb24", interpolation="POINT")   # any format reading takes
    try:
        data = frame.side_data.get("DISPLAYMATRIX")
    except ValueError:  # a type PyAV cannot name: FFmpeg 8's EXIF, whose orientation the decoder moved to the matrix
        try:
            data = _without_side_data(frame, _AV_FRAME_DATA_EXIF).side_data.get("DISPLAYMATRIX")
        except ValueError:  # yet another one: only the angle (``frame.rotation``) is known
            return None
    return None if data is None else np.frombuffer(bytes(data), np.int32)


def _check_convertible(path: str | os.PathLike, frame: av.VideoFrame) -> None:
    """A one-line error for frames FFmpeg's swscale aborts the process on when converting them to RGB: Bayer
    (raw camera) frames of odd height."""
    if frame.format.name.startswith("bayer_") and frame.height % 2:
        raise VideoReadError(f"{path}: {frame.format.name} frames of odd height ({frame.width}x{frame.height}) "
                             f"cannot be converted to RGB (FFmpeg's converter aborts on them)")


def _orientation(frame: av.VideoFrame) -> tuple[int, bool]:
    """(counter-clockwise degrees, mirrored) that show ``frame`` upright, as ffmpeg's autorotate reads the display
    matrix: the angle to a quarter turn, plus its flips (transpose's ``*_flip`` modes; hflip or vflip at a half or
    no turn). Mirrored: flipped left-right before the rotation."""
    ccw = int(round(getattr(frame, "rotation", 0) / 90)) * 90 % 360  # PyAV < 14 exposes no rotation
    m = _display_matrix(frame)
    if m is None:
        return ccw, False
    if ccw == 90:  # ffmpeg's clockwise theta 270: transpose=clock_flip if m[3] < 0, else cclock
        return (270, True) if m[3] < 0 else (90, False)
    if ccw == 270:  # theta 90: transpose=cclock_flip if m[3] > 0, else clock
        return (90, True) if m[3] > 0 else (270, False)
    if ccw == 180:  # hflip if m[0] < 0, vflip if m[4] < 0: both make a half turn, one a mirror
        return (180 if m[4] < 0 else 0), bool((m[0] < 0) != (m[4] < 0))
    return (180, True) if m[4] < 0 else (0, False)  # theta 0: vflip if m[4] < 0


def _sample_aspect_ratio(stream: av.video.stream.VideoStream, rotation: int) -> Fraction:
    """The stream's pixel aspect in display orientation (inverted by a quarter turn); 1 when unset."""
    sar = stream.sample_aspect_ratio
    if not sar or sar <= 0:
        return Fraction(1)
    return 1 / Fraction(sar) if rotation % 180 else Fraction(sar)


_HDR_TRANSFERS = {16: "PQ", 18: "HLG"}  # AVCOL_TRC_SMPTE2084 (SMPTE ST 2084) and AVCOL_TRC_ARIB_STD_B67


def _hdr(frame: av.VideoFrame) -> str | None:
    """The frame's HDR transfer, "PQ" or "HLG", or None (a decoded frame carries the stream's or container's tag)."""
    return _HDR_TRANSFERS.get(frame.color_trc)


def probe_header(path: str | os.PathLike) -> tuple[int | None, int | None, int | None]:
    """``(width, height, frames)`` of ``path``'s main video stream as its header states them (coded orientation;
    None where it does not say), without decoding a frame: cheap, and safe on a small file holding a huge picture."""
    container, stream = _open(path, threads=False)
    with container:
        return stream.width or None, stream.height or None, _stated_frames(container, stream)[1]


def _stated_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream
                   ) -> tuple[float | None, int | None]:
    """(duration in seconds, frames) as the file states them: one frame for an image, else the header's count or
    duration x fps (mkv/webm store no count)."""
    if _is_image(container):
        return None, 1
    duration = _duration(container, stream)
    return duration, stream.frames or (round(duration * _fps(stream)) if duration else None)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read the header and decode the first frame of ``path``: geometry, rate, length, codec, orientation, HDR."""
    container, stream = _open(path, threads=False)
    with container:
        try:
            first = next(container.decode(stream), None)
        except _AV_ERRORS as e:
            raise _failure(path, e, VideoReadError(f"{path}: corrupt or truncated: cannot decode the first frame "
                                                   f"({_reason(e)})")) from e
        if first is None:
            raise VideoReadError(f"{path}: no decodable frames")
        _check_convertible(path, first)
        rot, mirrored = _orientation(first)
        width, height = (first.height, first.width) if rot % 180 else (first.width, first.height)
        duration, num = _stated_frames(container, stream)
        return VideoInfo(Path(path), width, height, _fps(stream), num, duration, stream.codec_context.name,
                         first.format.name, rot, _is_image(container), _sample_aspect_ratio(stream, rot), mirrored,
                         _hdr(first))


def frame_times(path: str | os.PathLike) -> np.ndarray:
    """Presentation times in seconds of every frame of ``path`` (from packet timestamps; no decoding)."""
    container, stream = _open(path, threads=False)
    with container:
        try:
            pts = [p.pts for p in container.demux(stream) if p.size and p.pts is not None]
        except _AV_ERRORS as e:
            raise _failure(path, e, VideoReadError(f"{path}: corrupt or truncated ({_reason(e)})")) from e
        return np.sort(np.asarray(pts, dtype=np.float64)) * float(stream.time_base)


def _check_args(start: int, num_frames: int | None, stride: int, chunk_frames: int, crop: object,
                size: Size | None) -> None:
    if crop == "center" and size is None:
        raise ValueError('crop="center" needs size=(W, H)')
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (W, H) with positive sides, got {size}")
    if start < 0 or stride < 1 or chunk_frames < 1 or (num_frames is not None and num_frames < 1):
        raise ValueError(f"need start >= 0, stride >= 1, chunk_frames >= 1, num_frames >= 1 or None; got "
                         f"start={start}, stride={stride}, chunk_frames={chunk_frames}, num_frames={num_frames}")


def center_crop_box(width: int, height: int, size: Size) -> Crop:
    """The largest centred ``(x, y, w, h)`` region of a ``width x height`` picture with the aspect of ``size=(W,H)``."""
    out_w, out_h = size
    if width * out_h >= height * out_w:
        w, h = min(width, max(1, round(height * out_w / out_h))), height
    else:
        w, h = width, min(height, max(1, round(width * out_h / out_w)))
    return (width - w) // 2, (height - h) // 2, w, h


def _crop_box(path: str | os.PathLike, crop: Crop | str | None, size: Size | None, width: int,
              height: int) -> Crop | None:
    if crop is None:
        return None
    if crop == "center":
        return center_crop_box(width, height, size)
    x, y, w, h = (int(v) for v in crop)
    if x < 0 or y < 0 or w < 1 or h < 1 or x + w > width or y + h > height:
        raise VideoReadError(f"{path}: crop {(x, y, w, h)} lies outside the {width}x{height} picture")
    return x, y, w, h


def resize_frames(frames: np.ndarray, size: Size) -> np.ndarray:
    """Resize uint8 ``(T,H,W,3)`` frames to ``size=(W,H)``: bilinear with antialiasing (torch, deterministic)."""
    out_w, out_h = size
    if frames.shape[1:3] == (out_h, out_w):
        return frames
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    y = F.interpolate(x, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)
    return y.permute(0, 2, 3, 1).contiguous().numpy()


def _to_rgb(frame: av.VideoFrame, coded_size: tuple[int, int], orientation: tuple[int, bool]) -> np.ndarray:
    """RGB shown as ``orientation`` (the first frame's, see `_orientation`) says; a frame whose size changed
    mid-stream is scaled to the first one's, like ffmpeg."""
    if (frame.width, frame.height) != coded_size:
        rgb = frame.reformat(width=coded_size[0], height=coded_size[1], format="rgb24").to_ndarray()
    else:
        rgb = frame.to_ndarray(format="rgb24")
    ccw, mirrored = orientation
    return np.rot90(rgb[:, ::-1] if mirrored else rgb, ccw // 90)


def _format_name(container: av.container.InputContainer) -> str:
    """The demuxer's first name (``mov`` for "mov,mp4,m4a,3gp,3g2,mj2", ``matroska`` for "matroska,webm")."""
    return container.format.name.split(",")[0]


_SIZED_FORMATS = {"mov", "matroska", "avi"}  # containers whose header states the true length (mpegts only guesses)
_TIMED_FORMATS = {"mov", "matroska"}  # containers whose frames carry true presentation times (avi's are decode times)
_CHECKED_FORMATS = _TIMED_FORMATS | {"mpegts"}  # those whose frame times a read checks for jumps (mpegts's are true)


def _check_complete(path: str | os.PathLike, container: av.container.InputContainer,
                    stream: av.video.stream.VideoStream, span: tuple[float, float] | None, decoded: int) -> None:
    """Raise if the decoded frames end well before the end the header states (a truncated file). The end, not
    the length: a stream may start late (a timestamp offset) or lose leading frames it cannot decode (a cut that
    starts on a non-key frame), and neither is truncation."""
    if span is None or _format_name(container) not in _SIZED_FORMATS:
        return
    stated = _stated_span(container, stream)
    if stated is not None and span[1] < stated[1] - 0.5 / _fps(stream) - 1e-3:
        raise VideoReadError(f"{path}: truncated: decoded {decoded} frames, ending at {span[1]:.2f} s of a stated "
                             f"{stated[1]:.2f} s")


class FrameTimingWarning(UserWarning):
    """A video's frame times jump or go back: frames lost to damage, or a variable frame rate. The frames are still
    read in order and counted at the stream's stated rate."""


_TIMING_NAMED: set[str] = set()   # files a FrameTimingWarning has named in this process


class HDRWarning(UserWarning):
    """A video is HDR (PQ or HLG): it is read as 8-bit SDR RGB without tone mapping, so its colours look flat."""


_HDR_NAMED: set[str] = set()   # files an HDRWarning has named in this process


def _warn_hdr(path: str | os.PathLike, frame: av.VideoFrame) -> None:
    """An HDRWarning when ``frame`` (a read's first) is HDR, once per file and process (a dataset reads it again for
    every clip)."""
    transfer = _hdr(frame)
    if transfer is None or str(path) in _HDR_NAMED:
        return
    _HDR_NAMED.add(str(path))
    warnings.warn(f"{path}: HDR video ({transfer}) is converted to 8-bit SDR RGB without tone mapping, so its colours "
                  "look flat; if that matters, convert it to SDR first (e.g. with ffmpeg's zscale and tonemap "
                  "filters)", HDRWarning, stacklevel=3)


class _Timeline:
    """The presentation times of the frames a read decodes: their span (for `_check_complete`), and a
    FrameTimingWarning, once per file and process, when a frame comes well over a frame duration after the one
    before it, or not after it (checked where frames carry presentation times: mov/mp4, matroska/webm, mpegts; avi's
    are decode times)."""

    def __init__(self, path: str | os.PathLike, container: av.container.InputContainer,
                 stream: av.video.stream.VideoStream) -> None:
        self.path, self.fps = path, _fps(stream)
        # a file is named once per process (a dataset reads it again for every clip), and only against a rate the
        # stream states (a guessed one, e.g. mpegts at 1000 fps, is no yardstick)
        self.watch = (_format_name(container) in _CHECKED_FORMATS and stream.average_rate is not None
                      and str(path) not in _TIMING_NAMED)
        self.step = float(1 / self.fps)
        self.limit = 1.5 * self.step + float(stream.time_base or 0)  # a coarse clock (mkv's 1 ms) rounds each step
        self.span: tuple[float, float] | None = None  # [earliest start, latest end], in seconds
        self.last: float | None = None

    def add(self, frame: av.VideoFrame) -> None:
        t = frame.time
        if t is None:
            return
        duration = getattr(frame, "duration", None)
        end = t + float(duration * frame.time_base if duration and frame.time_base else self.step)
        self.span = (t, end) if self.span is None else (min(self.span[0], t), max(self.span[1], end))
        if self.watch and self.last is not None and not 0 < t - self.last <= self.limit:
            self.watch = False
            _TIMING_NAMED.add(str(self.path))
            fps = f"{float(self.fps):.4g} fps"
            how = "jump" if t > self.last else "repeat" if t == self.last else "go back"
            warnings.warn(f"{self.path}: frame times {how} from {self.last:.3f} s "
                          f"to {t:.3f} s ({fps} frames are {self.step:.3f} s apart): frames are missing (a damaged "
                          f"file) or the frame rate varies; frames are read in order, as if at {fps}",
                          FrameTimingWarning, stacklevel=3)
        self.last = t


def iter_video(path: str | os.PathLike, *, chunk_frames: int = 16, start: int = 0, num_frames: int | None = None,
               stride: int = 1, size: Size | None = None, crop: Crop | str | None = None,
               start_time: float | None = None) -> Iterator[np.ndarray]:
    """Stream uint8 RGB chunks ``(<=chunk_frames,H,W,3)`` of ``path``; memory stays flat however long the video.

    Frames ``start, start+stride, ...`` (at most ``num_frames``; fewer if the video ends first). Frames before
    ``start`` are decoded but not converted. ``start_time`` (seconds after the stream's first frame; ``start``
    then counts from there) seeks to the keyframe before it instead, so a window late in a long file costs no
    more than one at its start: the first frame taken is the first shown at or after it. In containers without
    true presentation times (avi, y4m, raw streams) it is frame ``round(start_time x fps)``, decoded up to as
    before. Errors (truncated, start past the end) raise VideoReadError.
    """
    _check_args(start, num_frames, stride, chunk_frames, crop, size)
    if start_time is not None and not start_time >= 0:
        raise ValueError(f"start_time must be >= 0 seconds, got {start_time}")
    container, stream = _open(path)
    return _decode(path, container, stream, chunk_frames, start, num_frames, stride, size, crop, start_time)


def _seek(path: str | os.PathLike, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
          start_time: float) -> float:
    """Seek to the keyframe at or before ``start_time`` seconds after the stream's start; return that instant's
    presentation time (frames shown before it are to be dropped)."""
    tb = stream.time_base
    origin = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    target = origin + start_time
    if tb:
        try:
            container.seek(int(target / tb), backward=True, stream=stream)
        except _AV_ERRORS as e:
            raise _failure(path, e, VideoReadError(f"{path}: cannot seek to {start_time:.3f} s ({_reason(e)})")) from e
    return target


def _decode(path: str | os.PathLike, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
            chunk_frames: int, start: int, num_frames: int | None, stride: int, size: Size | None,
            crop: Crop | str | None, start_time: float | None = None) -> Iterator[np.ndarray]:
    with container:
        chunk: list[np.ndarray] = []
        box: Crop | None = None
        index = taken = 0
        first = orientation = None
        timeline = _Timeline(path, container, stream)
        after = None
        if start_time is not None and _format_name(container) in _TIMED_FORMATS:
            after = _seek(path, container, stream, start_time) - timeline.step / 2
        elif start_time is not None:
            start += round(start_time * timeline.fps)
        try:
            for frame in container.decode(stream):
                if after is not None and frame.time is not None and frame.time < after:
                    continue
                if first is None:
                    _check_convertible(path, frame)
                    first, orientation = frame, _orientation(frame)
                    _warn_hdr(path, frame)
                index += 1
                timeline.add(frame)
                if index - 1 < start or (index - 1 - start) % stride:
                    continue
                rgb = _to_rgb(frame, (first.width, first.height), orientation)
                if taken == 0:
                    box = _crop_box(path, crop, size, rgb.shape[1], rgb.shape[0])
                chunk.append(rgb)
                taken += 1
                if len(chunk) == chunk_frames:
                    yield _finish(chunk, box, size)
                    chunk = []
                if taken == num_frames:
                    break
            else:
                _check_complete(path, container, stream, timeline.span, index)
        except _AV_ERRORS as e:
            raise _failure(path, e, VideoReadError(f"{path}: corrupt or truncated after frame {index} "
                                                   f"({_reason(e)})")) from e
        if index == 0:
            raise VideoReadError(f"{path}: no decodable frames" if after is None else
                                 f"{path}: start_time={start_time} s is past the end")
        if taken == 0:
            raise VideoReadError(f"{path}: start={start} is past the end (the video has {index} frames)")
        if chunk:
            yield _finish(chunk, box, size)


def _finish(chunk: list[np.ndarray], box: Crop | None, size: Size | None) -> np.ndarray:
    frames = np.stack(chunk)
    if box is not None:
        x, y, w, h = box
        frames = frames[:, y:y + h, x:x + w]
    return resize_frames(frames, size) if size is not None else np.ascontiguousarray(frames)


def read_video(path: str | os.PathLike, *, start: int = 0, num_frames: int | None = None, stride: int = 1,
               size: Size | None = None, crop: Crop | str | None = None) -> tuple[np.ndarray, VideoInfo]:
    """Decode ``path`` to uint8 RGB ``(T,H,W,3)`` plus its VideoInfo; options as in ``iter_video``. The frames go
    straight into one array sized by the header's frame count (resized in place if the count was off), so memory
    peaks at the video's size, not twice it (a list of chunks, then their concatenation)."""
    info = probe_video(path)
    chunks = iter_video(path, chunk_frames=16, start=start, num_frames=num_frames, stride=stride, size=size,
                        crop=crop)
    first = next(chunks)
    expected = -(-max((info.num_frames or 0) - start, 0) // stride)
    if num_frames is not None:
        expected = min(expected, num_frames)
    try:   # room to spare: a count estimated from the duration is often a little short, and untouched room costs
        frames = np.empty((max(expected + expected // 8, len(first)), *first.shape[1:]), np.uint8)   # no memory
    except (MemoryError, ValueError):   # a count no machine could hold (a damaged header): grow as frames come
        frames = np.empty_like(first)
    frames[:len(first)], n = first, len(first)
    del first   # each chunk is let go once copied in
    for chunk in chunks:
        if n + len(chunk) > len(frames):   # more frames than the header said: grow by an eighth (realloc)
            frames.resize((n + len(chunk) + len(frames) // 8, *frames.shape[1:]), refcheck=False)
        frames[n:n + len(chunk)] = chunk
        n += len(chunk)
    if n < len(frames):
        frames.resize((n, *frames.shape[1:]), refcheck=False)   # in place: no second copy
    return frames, info


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def frame_files(folder_or_glob: str | os.PathLike) -> list[Path]:
    """The image frames of a folder (or glob pattern), in natural sort order: ``frame2.png`` before ``frame10.png``."""
    pattern = str(folder_or_glob)
    if os.path.isdir(pattern):
        candidates = [p for p in Path(pattern).iterdir() if p.is_file()]
    else:
        candidates = [Path(p) for p in glob.glob(pattern)]
    files = sorted((p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS), key=_natural_key)
    # a video beside the frames makes the folder ambiguous; a .gif there is taken for a preview, as before
    videos = sorted((p.name for p in candidates if p.suffix.lower() in VIDEO_EXTENSIONS and p.suffix.lower() != ".gif"),
                    key=_natural_key)
    if videos:   # frames beside videos: which was meant is not for the reader to guess
        found = f"{len(files)} image frame{'s' * (len(files) != 1)} and " if files else ""
        raise VideoReadError(f"{pattern}: {found}{len(videos)} video{'s' * (len(videos) != 1)} ({videos[0]}"
                             f"{', ...' if len(videos) > 1 else ''}); give a video file, or a folder of frames only")
    if not files:
        raise VideoReadError(f"{pattern}: no image frames ({', '.join(IMAGE_EXTENSIONS)}) found")
    return files


def iter_frames_dir(folder_or_glob: str | os.PathLike, *, chunk_frames: int = 64, start: int = 0,
                    num_frames: int | None = None, size: Size | None = None,
                    crop: Crop | str | None = None) -> Iterator[np.ndarray]:
    """Stream a folder (or glob pattern) of png/jpg/... frames as uint8 ``(T,H,W,3)`` chunks of ``chunk_frames``,
    like ``iter_video`` (only a chunk is held at a time). All frames must share one size."""
    files = frame_files(folder_or_glob)
    if start >= len(files):
        raise VideoReadError(f"{folder_or_glob}: start={start} is past the end ({len(files)} frames)")
    files = files[start:start + num_frames if num_frames is not None else None]
    first, chunk = None, []
    for f in files:
        frame = next(iter_video(f, num_frames=1, size=size, crop=crop))[0]
        first = frame.shape if first is None else first
        if frame.shape != first:
            raise VideoReadError(f"{f}: frame size {frame.shape[1]}x{frame.shape[0]} differs from the first frame's "
                                 f"{first[1]}x{first[0]}")
        chunk.append(frame)
        if len(chunk) == chunk_frames:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def read_frames_dir(folder_or_glob: str | os.PathLike, *, size: Size | None = None,
                    crop: Crop | str | None = None) -> np.ndarray:
    """Read a folder (or glob pattern) of png/jpg/... frames as one uint8 ``(T,H,W,3)`` array (see
    ``iter_frames_dir``)."""
    return np.concatenate(list(iter_frames_dir(folder_or_glob, size=size, crop=crop)))


def _chunks(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Accept one (T,H,W,3) array or an iterable of (T,H,W,3) chunks / (H,W,3) frames; yield (T,H,W,3) arrays."""
    items = [frames] if hasattr(frames, "__array__") else frames
    for item in items:
        arr = np.asarray(item)
        yield arr[None] if arr.ndim == 3 else arr


def _encoder_options(path: str | os.PathLike, encoder: str, crf: int, preset: str) -> dict[str, str]:
    if encoder == "ffv1":
        return {"level": "3", "slicecrc": "1", "g": "1"}
    if encoder in ("libx264", "libx265"):
        opts = {"crf": str(crf), "preset": str(preset)}
        return opts | ({"x265-params": "log-level=error"} if encoder == "libx265" else {})
    opts = {"crf": str(crf)} | ({"b": "0"} if encoder == "libvpx-vp9" else {})
    if str(preset).isdigit():  # svt-av1 preset 0-13, vp9 cpu-used 0-8
        opts["preset" if encoder == "libsvtav1" else "cpu-used"] = str(preset)
    elif preset != "medium":
        raise VideoWriteError(f"{path}: {encoder} takes a numeric preset, got {preset!r}")
    return opts


def _pix_fmt(path: str | os.PathLike, encoder: str, pix_fmt: str | None, width: int, height: int) -> str:
    """ffv1 keeps RGB exactly (bgr0); lossy codecs default to yuv420p, or yuv444p for odd sizes in x264/x265."""
    odd = width % 2 or height % 2
    if pix_fmt is None:
        if encoder == "ffv1":
            return "bgr0"
        return "yuv444p" if odd and encoder in ("libx264", "libx265") else "yuv420p"
    if odd and encoder in ("libx264", "libx265") and pix_fmt.startswith(("yuv420", "nv12")):
        raise VideoWriteError(f"{path}: {encoder} {pix_fmt} needs even width and height, got {width}x{height}")
    return pix_fmt


_SMPTE170M = 6  # AVCOL_SPC_, AVCOL_PRI_ and AVCOL_TRC_SMPTE170M: SD BT.601 (525-line) in all three FFmpeg enums
_TV_RANGE = 1  # AVCOL_RANGE_MPEG: limited range, 16-235 for 8-bit luma


def tag_color(target: av.video.stream.VideoStream | av.VideoFrame) -> None:
    """Tag an output video stream (its encoder, before the first frame) or a YUV frame as what swscale's default
    RGB->YUV conversion makes: the BT.601 matrix, limited (tv) range, and SD BT.601 primaries and transfer (all
    smpte170m). Untagged, players guess, and they guess BT.709 for HD, which shifts the colours."""
    tags = getattr(target, "codec_context", target)
    tags.colorspace = tags.color_primaries = tags.color_trc = _SMPTE170M
    tags.color_range = _TV_RANGE


def tagged_yuv_frame(rgb: np.ndarray, pix_fmt: str, threads: int = 0) -> av.VideoFrame:
    """An RGB array (H,W,3) as a ``pix_fmt`` frame, converted as an encoder would convert it and tagged so;
    ``threads``: swscale's thread count (0: one per core)."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=pix_fmt,
                                                                                          threads=threads)
    tag_color(frame)
    return frame


def _limited_yuv(pix_fmt: str) -> bool:
    """Whether swscale turns RGB into limited-range BT.601 YUV in ``pix_fmt`` (not RGB, gray or full-range yuvj)."""
    fmt = av.VideoFormat(pix_fmt)
    return not fmt.is_rgb and len(fmt.components) >= 3 and not fmt.name.startswith("yuvj")


def frame_size_problem(encoder: str, width: int, height: int) -> str | None:
    """Why ``encoder`` must not be given frames of this size here, or None: x265 corrupts its heap on some frames
    under 64x64, SVT-AV1 in PyAV 18.1.1's FFmpeg on 2x2, 4x4 and 8x8 frames (the process aborts), and SVT-AV1
    never returns from frames thinner than 25 px and longer than 64 (16x80, 24x66, 100x24; SIGTERM cannot stop it
    then)."""
    short, long = sorted((width, height))
    if encoder == "libx265" and short < 64:
        return f"frames must be at least 64x64, got {width}x{height}"
    if encoder == "libsvtav1" and short < 16:
        return f"frames must be at least 16x16, got {width}x{height}"
    if encoder == "libsvtav1" and short < 25 and long > 64:
        return f"frames with a side under 25 px must be at most 64x64 (SVT-AV1 hangs on thin ones), got " \
               f"{width}x{height}"
    return None


def flushed_packets(stream: av.video.stream.VideoStream, frames_sent: int) -> list[av.Packet]:
    """The encoder's last packets. x265 gives a stream of one or two frames uninitialised decode times (garbage the
    mp4 muxer refuses, or writes); such a stream has no reordering, so they are its presentation times."""
    packets = stream.encode(None)
    if stream.codec_context.name == "libx265" and frames_sent <= 2:
        for packet in packets:
            packet.dts = packet.pts
    return packets


def check_frame_rate(path: str | os.PathLike, fps: Any) -> Fraction:
    """``fps`` as the exact rate ``write_video`` gives ``path``; a VideoWriteError when it is not a positive number or
    the container cannot time it (callers check before long work, not after)."""
    finite = isinstance(fps, numbers.Real) and not isinstance(fps, bool) and math.isfinite(fps)
    rate = Fraction(fps).limit_denominator(1_000_000) if finite else Fraction(0)
    if rate <= 0:   # also a positive fps too small for the container's time base
        raise VideoWriteError(f"{path}: fps must be a positive number, got {fps!r}")
    if rate > 1000 and Path(path).suffix.lower() in (".mkv", ".webm"):   # frames would share timestamps
        raise VideoWriteError(f"{path}: Matroska times frames in milliseconds, so {float(rate):g} fps cannot be "
                              "written to it; use .mp4")
    return rate


def quiet_svt(encoder: str) -> None:
    """Before ``encoder`` first encodes: SVT-AV1 at errors only (``SVT_LOG=1``; it prints its whole configuration
    and its warnings to stderr otherwise) unless the user set SVT_LOG. Set once and left (SVT-AV1 reads it once per
    process, at its first encoder; setting and unsetting it around each encode would race other threads reading the
    environment)."""
    if encoder == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")


def write_video(path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray], fps: Fraction | float | int,
                *, codec: str = "h264", crf: int = 18, preset: str = "medium", pix_fmt: str | None = None,
                sample_aspect_ratio: Fraction | None = None) -> None:
    """Encode uint8 RGB frames (one ``(T,H,W,3)`` array, or an iterable of chunks/frames) to ``path`` atomically.

    ``codec``: h264, h265, vp9, av1, ffv1 (lossless RGB, use .mkv) or an FFmpeg encoder name. Lossy codecs use
    ``crf`` and yuv420p (yuv444p for odd sizes in x264/x265, which cannot subsample odd sizes); ``preset`` is the
    x264/x265 name, or a number for av1/vp9. The container comes from the suffix. ``sample_aspect_ratio``: the
    pixels' shape for players (a source's ``VideoInfo.sample_aspect_ratio``); None or 1 writes square pixels.
    YUV output is converted from RGB here and tagged as BT.601 limited range (``tag_color``), stream and frames.
    """
    encoder = CODECS.get(codec, codec)
    if encoder not in av.codecs_available:
        raise VideoWriteError(f"{path}: unknown codec {codec!r}; choose from {', '.join(CODECS)}")
    chunks = _chunks(frames)
    head = next(chunks, None)
    if head is None or head.size == 0:
        raise VideoWriteError(f"{path}: no frames to write")
    if head.ndim != 4:
        raise VideoWriteError(f"{path}: frames must be uint8 RGB (T,H,W,3), got shape {tuple(head.shape)}")
    height, width = head.shape[1:3]
    problem = frame_size_problem(encoder, width, height)
    if problem:
        raise VideoWriteError(f"{path}: {codec}: {problem}")
    options = _encoder_options(path, encoder, crf, preset)
    pix = _pix_fmt(path, encoder, pix_fmt, width, height)
    rate = check_frame_rate(path, fps)
    if sample_aspect_ratio is not None and not sample_aspect_ratio > 0:
        raise VideoWriteError(f"{path}: sample_aspect_ratio must be positive, got {sample_aspect_ratio!r}")
    try:
        quiet_svt(encoder)
        with atomic_path(path) as tmp, av.open(str(tmp), "w") as container:
            stream = container.add_stream(encoder, rate=rate, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, pix
            yuv = _limited_yuv(pix)
            if yuv:
                tag_color(stream)
            if sample_aspect_ratio is not None and sample_aspect_ratio != 1:
                stream.codec_context.sample_aspect_ratio = Fraction(sample_aspect_ratio)
            if encoder == "libx264":
                stream.codec_context.thread_type = "FRAME"  # slice threads make x264 streams larger
            index = 0
            for chunk in itertools.chain([head], chunks):
                if chunk.dtype != np.uint8 or chunk.ndim != 4 or chunk.shape[1:] != (height, width, 3):
                    raise VideoWriteError(f"{path}: frames must be uint8 RGB (T,{height},{width},3), got "
                                          f"{chunk.dtype} {tuple(chunk.shape)}")
                for rgb in chunk:
                    frame = tagged_yuv_frame(rgb, pix) if yuv else \
                        av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                    frame.pts = index
                    index += 1
                    container.mux(stream.encode(frame))
            container.mux(flushed_packets(stream, index))
    except _AV_ERRORS as e:
        raise _failure(path, e, VideoWriteError(f"{path}: cannot write {codec} ({_reason(e)})")) from e
    if sample_aspect_ratio is not None and sample_aspect_ratio != 1:
        _check_aspect_kept(path, codec, Fraction(sample_aspect_ratio))


def _check_aspect_kept(path: str | os.PathLike, codec: str, sar: Fraction) -> None:
    """Warn when the written file lost the pixel aspect: mkv/webm take it from the stream header, which PyAV cannot
    set, so there only codecs whose bitstream carries it (h264, h265) keep it; mp4 keeps it for every codec."""
    with av.open(str(path)) as container:
        kept = container.streams.video[0].sample_aspect_ratio
    if kept != sar:
        warnings.warn(f"{path}: the pixel aspect {sar.numerator}:{sar.denominator} was not kept ({codec} in "
                      f"{Path(path).suffix or 'this container'}); players will show square pixels (h264 keeps it, "
                      f"in .mp4 or .mkv)", stacklevel=3)
