"""The ``.vtok`` container (specified in FORMAT.md): a checked header, then independently decodable chunks.

The container knows geometry, timing and chunk framing (length, frame count, CRC32); what a chunk payload holds is
the codec's business. The reader checks every size against fixed limits and against the bytes actually left
before it allocates anything, and every failure is a one-line ``BitstreamError``.
"""
from __future__ import annotations

import io
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from vitok.codecs.errors import BitstreamError

MAGIC = b"VTOK"
VERSION = 1
_FIXED = struct.Struct("<4sHHIIIIIIII")  # magic version flags width height frames fps_num fps_den chunk_frames chunks meta_len
_CHUNK = struct.Struct("<III")  # payload length, frames, crc32
_U32 = struct.Struct("<I")

# Limits checked before any allocation.
MAX_SIDE = 16384
MAX_FRAMES = 1 << 24
MAX_CHUNK_FRAMES = 1024
MAX_CHUNKS = 1 << 22
MAX_CHUNK_BYTES = 64 << 20
MAX_META_BYTES = 64 << 10
MAX_META_DEPTH = 32   # nesting of the header's JSON (vitok writes 2): deeper is refused before anything recurses
MAX_CHUNK_PIXELS = 1 << 28  # width x height x chunk_frames: bounds the frames one decoded chunk allocates
MAX_SAR_TERM = 65535  # a pixel aspect's numerator and denominator, 16 bits each as in h264's VUI


def sar_record(sar: Fraction) -> list[int] | None:
    """The header's ``sar`` for a pixel aspect (shown width over height): ``[num, den]`` of at most 16 bits each,
    the nearest such fraction; None for square pixels, which the header leaves out."""
    f = min(max(Fraction(sar), Fraction(1, MAX_SAR_TERM)), Fraction(MAX_SAR_TERM))
    f = f.limit_denominator(MAX_SAR_TERM) if f <= 1 else 1 / (1 / f).limit_denominator(MAX_SAR_TERM)
    return None if f == 1 else [f.numerator, f.denominator]


@dataclass
class VtokHeader:
    """What a ``.vtok`` file says about itself; ``meta`` is the codec's JSON object (model, weights, step, ...)."""

    width: int
    height: int
    fps: Fraction
    chunk_frames: int
    frames: int = 0
    num_chunks: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def pack(self) -> bytes:
        """Serialize with the trailing CRC32."""
        meta = json.dumps(self.meta, sort_keys=True, separators=(",", ":")).encode()
        self.check(len(meta))
        head = _FIXED.pack(MAGIC, VERSION, 0, self.width, self.height, self.frames, self.fps.numerator,
                           self.fps.denominator, self.chunk_frames, self.num_chunks, len(meta)) + meta
        return head + _U32.pack(zlib.crc32(head))

    def check(self, meta_len: int = 0) -> None:
        """Validate every field against the limits (sizes first, so nothing big is ever allocated)."""
        if not (1 <= self.width <= MAX_SIDE and 1 <= self.height <= MAX_SIDE):
            raise BitstreamError(f"frame size {self.width}x{self.height} outside 1..{MAX_SIDE}")
        if not 1 <= self.chunk_frames <= MAX_CHUNK_FRAMES:
            raise BitstreamError(f"chunk length {self.chunk_frames} frames outside 1..{MAX_CHUNK_FRAMES}")
        if self.width * self.height * self.chunk_frames > MAX_CHUNK_PIXELS:
            raise BitstreamError(f"chunk of {self.chunk_frames} frames at {self.width}x{self.height} is over the "
                                 f"{MAX_CHUNK_PIXELS} pixel limit")
        if not (0 <= self.frames <= MAX_FRAMES and 0 <= self.num_chunks <= MAX_CHUNKS):
            raise BitstreamError(f"{self.frames} frames / {self.num_chunks} chunks over the limits "
                                 f"({MAX_FRAMES} / {MAX_CHUNKS})")
        if self.fps <= 0 or self.fps.numerator >= 1 << 32 or self.fps.denominator >= 1 << 32:
            raise BitstreamError(f"bad frame rate {self.fps}")
        if meta_len > MAX_META_BYTES:
            raise BitstreamError(f"header metadata of {meta_len} bytes over the {MAX_META_BYTES} limit")

    def expected_chunks(self) -> int:
        return -(-self.frames // self.chunk_frames)

    @property
    def sample_aspect_ratio(self) -> Fraction:
        """How wide a pixel shows over its height: meta ``sar`` (``[num, den]``), 1 when absent."""
        sar = self.meta.get("sar", [1, 1])
        if not (isinstance(sar, list) and len(sar) == 2
                and all(type(v) is int and 1 <= v <= MAX_SAR_TERM for v in sar)):
            raise BitstreamError(f"bad sar record in the header: {sar!r}")
        return Fraction(*sar)


@dataclass
class ChunkInfo:
    """Where a chunk sits and what the framing says about it."""

    index: int
    offset: int
    nbytes: int
    frames: int


class VtokWriter:
    """Writes a ``.vtok`` chunk by chunk to a seekable binary file; ``close()`` patches the frame/chunk counts in.

    Use ``write_vtok_file`` for an atomic file, or pass an ``io.BytesIO`` and take ``getvalue()``.
    """

    def __init__(self, fileobj: BinaryIO, header: VtokHeader) -> None:
        self.f = fileobj
        self.header = VtokHeader(header.width, header.height, header.fps, header.chunk_frames, 0, 0,
                                 dict(header.meta))
        self._last_short = False
        self._start = fileobj.tell()
        fileobj.write(self.header.pack())
        self.payload_bytes = 0

    def write_chunk(self, payload: bytes, frames: int) -> None:
        """Append one chunk of ``frames`` frames; only the last chunk may be shorter than ``chunk_frames``."""
        h = self.header
        if self._last_short or not 1 <= frames <= h.chunk_frames:
            raise BitstreamError(f"chunk {h.num_chunks}: {frames} frames, expected {h.chunk_frames} "
                                 "(only the last chunk may be shorter)")
        if len(payload) > MAX_CHUNK_BYTES or h.num_chunks + 1 > MAX_CHUNKS or h.frames + frames > MAX_FRAMES:
            raise BitstreamError(f"chunk {h.num_chunks}: over the .vtok limits")
        head = _U32.pack(len(payload)) + _U32.pack(frames)
        self.f.write(head + _U32.pack(zlib.crc32(payload, zlib.crc32(head))) + payload)
        h.num_chunks += 1
        h.frames += frames
        self.payload_bytes += len(payload)
        self._last_short = frames < h.chunk_frames

    def close(self) -> VtokHeader:
        """Patch the counts into the header; a file without chunks is an error (it would be unreadable)."""
        if self.header.num_chunks == 0:
            raise BitstreamError("no chunks written: empty input video")
        end = self.f.tell()
        self.f.seek(self._start)
        self.f.write(self.header.pack())
        self.f.seek(end)
        return self.header


def write_vtok(header: VtokHeader, chunks: list[tuple[bytes, int]]) -> bytes:
    """A whole ``.vtok`` in memory from ``(payload, frames)`` pairs."""
    buf = io.BytesIO()
    w = VtokWriter(buf, header)
    for payload, frames in chunks:
        w.write_chunk(payload, frames)
    w.close()
    return buf.getvalue()


def _depth(value: object) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_vtok_path(path: Path) -> None:
    """Refuse a ``.vtok`` path that is missing, a folder, or a pipe/device (a .vtok is read by seeking; opening a
    pipe waits for a writer), each said as what it is."""
    if not path.exists():
        raise BitstreamError(f"no such .vtok file: {path}")
    if path.is_dir():
        raise BitstreamError(f"{path} is a folder, not a .vtok file")
    if not path.is_file():
        raise BitstreamError(f"{path} is not a regular file (a .vtok is read by seeking)")


class VtokReader:
    """Streams a ``.vtok`` from a path, bytes or a seekable binary file: header first, then ``chunks()``."""

    def __init__(self, source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO) -> None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.f, self.name, self._own = io.BytesIO(bytes(source)), "<bytes>", False
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            check_vtok_path(path)
            self.f, self.name, self._own = open(path, "rb"), str(path), True
        else:
            self.f, self.name, self._own = source, getattr(source, "name", "<stream>"), False
        try:
            self._size = self.f.seek(0, io.SEEK_END)
            self.f.seek(0)
            self.header = self._read_header()
        except BaseException:
            self.close()
            raise

    def _fail(self, msg: str) -> BitstreamError:
        return BitstreamError(f"{self.name}: {msg}")

    def _read(self, n: int, what: str) -> bytes:
        left = self._size - self.f.tell()
        if n > left:
            raise self._fail(f"truncated: {what} needs {n} bytes, {left} left")
        return self.f.read(n)

    def _read_header(self) -> VtokHeader:
        if self._size < 4 or self.f.read(4) != MAGIC:
            self.f.seek(0)
            raise self._fail(f"not a .vtok file (magic {self.f.read(4)!r}, expected {MAGIC!r})")
        self.f.seek(0)
        fixed = self._read(_FIXED.size, "header")
        _, version, flags, w, h, frames, num, den, chunk_frames, chunks, meta_len = _FIXED.unpack(fixed)
        if version != VERSION:
            raise self._fail(f"unsupported .vtok version {version} (this reader knows {VERSION})")
        if flags != 0:
            raise self._fail(f"unknown header flags {flags:#x}")
        if den == 0 or num == 0:
            raise self._fail(f"bad frame rate {num}/{den}")
        header = VtokHeader(w, h, Fraction(num, den), chunk_frames, frames, chunks)
        try:
            header.check(meta_len)
        except BitstreamError as e:
            raise self._fail(str(e)) from None
        meta = self._read(meta_len, "header metadata")
        (crc,) = _U32.unpack(self._read(4, "header CRC"))
        if zlib.crc32(fixed + meta) != crc:
            raise self._fail("header CRC mismatch (corrupt header)")
        try:
            header.meta = json.loads(meta.decode())
            if not isinstance(header.meta, dict):
                raise ValueError("not an object")
        except (UnicodeDecodeError, ValueError) as e:
            raise self._fail(f"bad header metadata: {e}") from None
        except RecursionError:   # deeper than the parser goes
            raise self._fail("bad header metadata: nested too deeply") from None
        if _depth(header.meta) > MAX_META_DEPTH:   # every reader of meta (info --json, tools) recurses
            raise self._fail("bad header metadata: nested too deeply")
        try:
            header.sample_aspect_ratio   # reading it checks the sar record
        except BitstreamError as e:
            raise self._fail(str(e)) from None
        if chunks == 0 or frames == 0:
            raise self._fail(f"{'zero frames' if frames == 0 else 'zero chunks'}: the file holds no video")
        if chunks != header.expected_chunks():
            raise self._fail(f"header says {chunks} chunks but {frames} frames in chunks of {chunk_frames} "
                             f"need {header.expected_chunks()}")
        left = self._size - self.f.tell()
        if chunks * _CHUNK.size > left:
            raise self._fail(f"truncated: {chunks} chunks need at least {chunks * _CHUNK.size} bytes, {left} left")
        self._body = self.f.tell()
        return header

    def chunks(self) -> Iterator[tuple[ChunkInfo, bytes]]:
        """Yield ``(info, payload)`` for every chunk in order, each CRC-checked; then check nothing trails."""
        h = self.header
        self.f.seek(self._body)
        for i in range(h.num_chunks):
            offset = self.f.tell()
            head = self._read(_CHUNK.size, f"chunk {i} header")
            length, frames, crc = _CHUNK.unpack(head)
            want = min(h.chunk_frames, h.frames - i * h.chunk_frames)
            if length > MAX_CHUNK_BYTES:
                raise self._fail(f"chunk {i}: {length} bytes over the {MAX_CHUNK_BYTES} limit")
            payload = self._read(length, f"chunk {i}")
            if zlib.crc32(payload, zlib.crc32(head[:8])) != crc:
                raise self._fail(f"chunk {i}: CRC mismatch (corrupt data)")
            if frames != want:
                raise self._fail(f"chunk {i}: {frames} frames, the header implies {want}")
            yield ChunkInfo(i, offset, length, frames), payload
        trailing = self._size - self.f.tell()
        if trailing:
            raise self._fail(f"trailing garbage: {trailing} bytes after the last chunk")

    @property
    def file_bytes(self) -> int:
        return self._size

    def close(self) -> None:
        if self._own:
            self.f.close()

    def __enter__(self) -> "VtokReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_vtok(source: str | os.PathLike | bytes) -> tuple[VtokHeader, list[tuple[ChunkInfo, bytes]]]:
    """Parse and check a whole ``.vtok`` (header and every chunk)."""
    with VtokReader(source) as r:
        return r.header, list(r.chunks())
