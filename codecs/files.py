"""File-level encode / decode / inspect for ``.vtok``: streams chunk by chunk and writes atomically.

These are what ``vitok encode|decode|info`` call: memory stays flat however long the video, because frames are
read, coded and written one chunk at a time (a byte budget keeps every chunk's latents, on disk).
"""
from __future__ import annotations

import glob
import os
import warnings
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

import numpy as np

from vitok.codecs.container import VtokHeader, VtokReader
from vitok.codecs.errors import BitstreamError, CodecError
from vitok.codecs.payload import CONTINUES, parse_chunk

if TYPE_CHECKING:
    from vitok.codecs.neural import EncodeStats, VitokCodec


def is_frames_source(path: str | os.PathLike) -> bool:
    """A folder or a glob pattern of image frames (rather than one video file)."""
    s = str(path)
    return os.path.isdir(s) or (glob.has_magic(s) and not os.path.exists(s))


def encode_file(codec: VitokCodec, input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                start: int = 0, num_frames: int | None = None, size: tuple[int, int] | None = None,
                fps: Fraction | None = None, on_chunk: Callable[[int], None] | None = None,
                **knobs: Any) -> EncodeStats:
    """Encode a video file (or a folder/glob of frames) to ``output_path`` (.vtok), atomically and streaming. The
    header keeps a video's pixel aspect (resizing to ``size`` keeps the picture's shown shape, as ffmpeg's scale)."""
    from vitok.data.atomic import atomic_path
    from vitok.data.io import frame_files, iter_frames_dir, iter_video, probe_header, probe_video

    chunk, frames_source = codec.tok.clip_frames, is_frames_source(input_path)
    first = frame_files(input_path)[0] if frames_source else input_path   # a folder's: its first frame
    _check_size(codec, size or probe_header(first)[:2])   # before a frame is decoded: a small file can hold a huge
    info = probe_video(first)                             # picture; then the size as shown, when the header is silent
    _check_size(codec, size or (info.width, info.height))
    if frames_source:
        chunks: Any = iter_frames_dir(input_path, chunk_frames=chunk, start=start, num_frames=num_frames, size=size)
        fps = fps or Fraction(25)
    else:
        fps = fps or info.fps
        chunks = iter_video(input_path, chunk_frames=chunk, start=start, num_frames=num_frames, size=size)
    if fps is None or fps <= 0:
        fps = Fraction(25)
    sar = info.sample_aspect_ratio   # a folder's: its first frame's
    if size is not None:
        sar *= Fraction(info.width * size[1], info.height * size[0])
    with atomic_path(output_path) as tmp, open(tmp, "wb") as f:
        return codec.encode_stream(chunks, Fraction(fps), f, on_chunk=on_chunk, sample_aspect_ratio=sar, **knobs)


def _check_size(codec: VitokCodec, size: tuple[int | None, int | None]) -> None:
    """Refuse a frame size (W, H) over the container's limits before any frame is read or resized (a huge size
    would otherwise exhaust memory on the first chunk); a side of None (a header that does not say) passes."""
    if None not in size:
        VtokHeader(size[0], size[1], Fraction(25), codec.tok.clip_frames).check()


def decode_output_kind(output_path: str | os.PathLike, video_codec: str) -> Literal["video", "npy", "frames"]:
    """What a decode to ``output_path`` writes: "video", "npy" or "frames" (a folder of PNGs); a name it cannot
    write is refused here, before a model loads or an existing output is weighed."""
    out = Path(output_path)
    if str(output_path) == "-":   # else a folder named "-" of PNG frames
        raise CodecError("decode writes files, not standard output: give an output name (.mp4, .mkv, .npy or a "
                         "folder)")
    suffix = out.suffix.lower()
    if suffix in (".mp4", ".mkv", ".mov"):   # .webm takes neither ffv1 nor h264, the two output codecs
        if video_codec == "ffv1" and suffix != ".mkv":
            raise CodecError(f"{out}: lossless ffv1 needs a .mkv output (or use --codec h264)")
        return "video"
    if suffix == ".npy":
        return "npy"
    if suffix == "":
        return "frames"
    raise CodecError(f"{out}: unknown output type {suffix!r}; use .mp4, .mkv, .mov, .npy or a folder name")


def decode_file(codec: VitokCodec, input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                video_codec: str = "ffv1", crf: int = 18, start: int = 0, frames: int | None = None,
                on_chunk: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Decode a ``.vtok`` (at most ``frames`` of it from frame ``start``) to ``.mp4``/``.mkv`` (``video_codec``
    ffv1 lossless or h264 at ``crf``), ``.npy`` or a folder of PNGs (any other path); streaming and atomic."""
    from vitok.codecs.neural import frame_count
    from vitok.data.atomic import atomic_dir, atomic_path
    from vitok.data.io import write_video

    out = Path(output_path)
    kind = decode_output_kind(out, video_codec)
    reader = VtokReader(input_path)
    h = reader.header

    def decoded() -> Iterator[np.ndarray]:
        for chunk in codec.iter_decode(input_path, reader=reader, start=start, frames=frames):
            if on_chunk:
                on_chunk(chunk.shape[0])
            yield chunk

    try:
        count = frame_count(h.frames, start, frames)
        if kind == "video":
            write_video(out, decoded(), h.fps, codec=video_codec, crf=crf, sample_aspect_ratio=h.sample_aspect_ratio)
        elif kind == "npy":
            # written chunk by chunk, not through a memory map: a full disk is then an OSError, not a SIGBUS
            with atomic_path(out) as tmp, open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                         "fortran_order": False,
                                                         "shape": (count, h.height, h.width, 3)})
                for chunk in decoded():
                    f.write(np.ascontiguousarray(chunk, np.uint8).tobytes())
            _warn_aspect_dropped(out, "a .npy array", h.sample_aspect_ratio)
        else:
            from PIL import Image

            with atomic_dir(out) as tmp:
                i = start
                for chunk in decoded():
                    for frame in chunk:
                        Image.fromarray(frame).save(tmp / f"frame_{i:06d}.png")   # numbered as in the stream
                        i += 1
            _warn_aspect_dropped(out, "PNG frames", h.sample_aspect_ratio)
    finally:
        reader.close()
    return {"output": str(out), "start": start, "frames": count, "width": h.width, "height": h.height,
            "fps": str(h.fps), "sample_aspect_ratio": str(h.sample_aspect_ratio)}


def _warn_aspect_dropped(out: Path, what: str, sar: Fraction) -> None:
    """Outputs with no field for the pixel aspect say so rather than drop it silently (PNG's pHYs is read
    inverted by FFmpeg against its spec, so writing one would mislead one reader or the other)."""
    if sar != 1:
        warnings.warn(f"{out}: {what} cannot keep the pixel aspect {sar.numerator}:{sar.denominator}; viewers "
                      f"will show square pixels (decode to .mp4 to keep it)", stacklevel=3)


def describe_vtok(path: str | os.PathLike) -> dict[str, Any]:
    """Header, per-chunk tokens/steps/bytes and rates of a ``.vtok``, without loading the model (all checked)."""
    with VtokReader(path) as r:
        h = r.header
        chunks = []
        for info, payload in r.chunks():
            try:
                table, step, tokens, data = parse_chunk(payload)
            except BitstreamError as e:
                raise BitstreamError(f"{r.name}: chunk {info.index}: {e}") from None
            chunks.append({"index": info.index, "frames": info.frames, "bytes": info.nbytes,
                           "tokens": list(tokens) if isinstance(tokens, tuple) else tokens or None,
                           "step": round(step, 6), "table": table & ~CONTINUES, "continues": bool(table & CONTINUES)})
        size, header_bytes = r.file_bytes, r.header_bytes
    pixels = h.frames * h.width * h.height
    seconds = h.frames / float(h.fps)
    return {"file": str(path), "format_version": h.version, "file_bytes": size, "width": h.width, "height": h.height,
            "frames": h.frames, "fps": str(h.fps), "sample_aspect_ratio": str(h.sample_aspect_ratio),
            "chunk_frames": h.chunk_frames, "chunks": len(chunks), "header_bytes": header_bytes,
            "payload_bytes": sum(c["bytes"] for c in chunks), "bpp": round(8 * size / pixels, 5),
            "kbps": round(8 * size / seconds / 1000, 3), "meta": h.meta, "chunk_list": chunks}
