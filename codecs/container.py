"""The ``.vtok`` container (specified in FORMAT.md): a checked header, then chunks, each framed on its own.

The container knows geometry, timing and chunk framing (length, CRC32); what a chunk payload holds is the codec's
business. Version 2 (written) packs the header's metadata into binary fields, about 55 bytes where version 1's JSON
took about 177; version 1 is still read. The reader checks every size against fixed limits and against the bytes
actually left before it allocates anything, and every failure is a one-line ``BitstreamError``.
"""
from __future__ import annotations

import io
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from vitok.codecs.errors import BitstreamError
from vitok.limits import MAX_CHUNK_PIXELS   # width x height x chunk_frames: bounds what one decoded chunk allocates

MAGIC = b"VTOK"
VERSION = 2   # what the writer writes
READS = (1, 2)   # what the reader reads
_START = struct.Struct("<4sHI")  # magic, version, frames (version 2: patched in when the writer closes)
# version 1: magic version flags width height frames fps_num fps_den chunk_frames chunks meta_len
_V1_FIXED = struct.Struct("<4sHHIIIIIIII")
_V1_CHUNK = struct.Struct("<III")  # payload length, frames, crc32
_U32 = struct.Struct("<I")
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")

# Limits checked before any allocation.
MAX_SIDE = 16384
MAX_FRAMES = 1 << 24
MAX_CHUNK_FRAMES = 1024
MAX_CHUNKS = 1 << 22
MAX_CHUNK_BYTES = 64 << 20
MAX_META_BYTES = 64 << 10
MAX_META_DEPTH = 32   # nesting of the header's JSON (vitok writes 2): deeper is refused before anything recurses
MAX_SAR_TERM = 65535  # a pixel aspect's numerator and denominator, 16 bits each as in h264's VUI
MAX_NAME_BYTES = 255  # a model name in the binary header (longer ones go to its JSON)
MAX_VARINT_BYTES = 5  # unsigned LEB128 of a value under 2^32
MAX_HEADER_BYTES = 1024 + MAX_META_BYTES  # version 2: every field at its longest, JSON included


def uvarint(n: int) -> bytes:
    """Unsigned LEB128: seven bits a byte, low bits first, the top bit set on every byte but the last."""
    if n < 0:
        raise ValueError(f"a varint cannot hold {n}")
    out = bytearray()
    while True:
        n, low = n >> 7, n & 0x7F
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def framing_bytes(nbytes: int) -> int:
    """Bytes a version 2 chunk of ``nbytes`` payload takes besides it: its length as a varint and a CRC32."""
    return len(uvarint(nbytes)) + _U32.size


def frame_chunk(payload: bytes) -> bytes:
    """A version 2 chunk: its length, the CRC32 of the length's bytes and the payload, then the payload."""
    length = uvarint(len(payload))
    return length + _U32.pack(zlib.crc32(payload, zlib.crc32(length))) + payload


def sar_record(sar: Fraction) -> list[int] | None:
    """The header's ``sar`` for a pixel aspect (shown width over height): ``[num, den]`` of at most 16 bits each,
    the nearest such fraction; None for square pixels, which the header leaves out."""
    f = min(max(Fraction(sar), Fraction(1, MAX_SAR_TERM)), Fraction(MAX_SAR_TERM))
    f = f.limit_denominator(MAX_SAR_TERM) if f <= 1 else 1 / (1 / f).limit_denominator(MAX_SAR_TERM)
    return None if f == 1 else [f.numerator, f.denominator]


class _Cursor:
    """Reads fields from bytes held in memory; running past their end is a truncation naming the field."""

    def __init__(self, data: bytes, fail: Callable[[str], BitstreamError]) -> None:
        self.data, self.at, self.fail = data, 0, fail

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.at:
            raise self.fail(f"truncated: {what} needs {n} bytes, {len(self.data) - self.at} left")
        self.at += n
        return self.data[self.at - n:self.at]

    def uvarint(self, what: str) -> int:
        """A varint in its shortest form (a last byte of 0 after the first is refused: one value, one encoding)."""
        value = 0
        for i in range(MAX_VARINT_BYTES):
            (byte,) = self.take(1, what)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if value >= 1 << 32 or (byte == 0 and i > 0):
                    break
                return value
        raise self.fail(f"{what} is not a shortest varint under 2^32")


# Version 2's binary metadata: the keys vitok writes, each with a bit in the header's key set, a test for values
# the binary form holds exactly, a writer and a reader. Other keys and values go to the header's JSON object.
_KINDS = ("vit", "vit1d", "cnn")
_HEX = frozenset("0123456789abcdef")


def _is_id(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 16 and set(v) <= _HEX


def _is_u32(v: Any) -> bool:
    return type(v) is int and 0 <= v < 1 << 32


def _is_f32(v: Any) -> bool:
    return type(v) is float and math.isfinite(v) and abs(v) < 3e38 and _F32.unpack(_F32.pack(v))[0] == v


def _is_name(v: Any) -> bool:
    try:
        return isinstance(v, str) and 0 < len(v.encode()) <= MAX_NAME_BYTES
    except UnicodeEncodeError:   # a lone surrogate: JSON escapes it
        return False


def _is_tiling(v: Any) -> bool:
    return (isinstance(v, dict) and set(v) == {"fit", "overlap", "tile"} and type(v["fit"]) is bool
            and type(v["overlap"]) is float and (v["tile"] is None or _is_u32(v["tile"]) and v["tile"] > 0))


def _read_name(c: _Cursor) -> str:
    n = c.uvarint("model name length")
    if not 0 < n <= MAX_NAME_BYTES:
        raise c.fail(f"bad header: model name of {n} bytes (1..{MAX_NAME_BYTES})")
    try:
        return c.take(n, "model name").decode()
    except UnicodeDecodeError:
        raise c.fail("bad header: the model name is not UTF-8") from None


def _read_kind(c: _Cursor) -> str:
    (i,) = c.take(1, "kind")
    if i >= len(_KINDS):
        raise c.fail(f"bad header: unknown model kind {i}")
    return _KINDS[i]


def _read_tiling(c: _Cursor) -> dict[str, Any]:
    (fit,) = c.take(1, "tiling")
    if fit > 1:
        raise c.fail(f"bad header: tiling fit {fit} (0 or 1)")
    (overlap,) = _F64.unpack(c.take(8, "tiling"))
    tile = c.uvarint("tiling")
    return {"fit": bool(fit), "overlap": overlap, "tile": tile or None}


_FIELDS: list[tuple[str, Callable[[Any], bool], Callable[[Any], bytes], Callable[[_Cursor], Any]]] = [
    ("codec", lambda v: v == "vitok", lambda v: b"", lambda c: "vitok"),
    ("model", _is_name, lambda v: uvarint(len(v.encode())) + v.encode(), _read_name),
    ("weights", _is_id, bytes.fromhex, lambda c: c.take(8, "weights").hex()),
    ("kind", lambda v: isinstance(v, str) and v in _KINDS, lambda v: bytes([_KINDS.index(v)]), _read_kind),
    ("channels", _is_u32, uvarint, lambda c: c.uvarint("channels")),
    ("tables", _is_id, bytes.fromhex, lambda c: c.take(8, "tables").hex()),
    ("step", _is_f32, _F32.pack, lambda c: _F32.unpack(c.take(4, "step"))[0]),
    ("step", lambda v: v is None, lambda v: b"", lambda c: None),
    ("sar", lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_u32, v)),
     lambda v: uvarint(v[0]) + uvarint(v[1]), lambda c: [c.uvarint("sar"), c.uvarint("sar")]),
    ("tiling", _is_tiling, lambda v: bytes([v["fit"]]) + _F64.pack(v["overlap"]) + uvarint(v["tile"] or 0),
     _read_tiling),
]
_JSON_BIT = len(_FIELDS)  # the key set's bit for a JSON object of the other keys


def _pack_meta(meta: dict[str, Any]) -> tuple[bytes, bytes]:
    """The key set and binary fields of ``meta``, and the JSON of what they do not hold (b"" when nothing)."""
    bits, body, rest = 0, b"", dict(meta)
    for bit, (key, fits, write, _) in enumerate(_FIELDS):
        if key in rest and fits(rest[key]):
            bits |= 1 << bit
            body += write(rest.pop(key))
    try:
        extra = json.dumps(rest, sort_keys=True, separators=(",", ":"), allow_nan=False).encode() if rest else b""
    except ValueError as e:   # NaN or infinity: not JSON
        raise BitstreamError(f"header metadata is not JSON: {e}") from None
    if extra:
        bits |= 1 << _JSON_BIT
        body += uvarint(len(extra)) + extra
    return uvarint(bits) + body, extra


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) < len(pairs):
        raise ValueError("a key is given twice")
    return out


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_json(data: bytes, fail: Callable[[str], BitstreamError], strict: bool = True) -> dict[str, Any]:
    """A header's JSON object, refused as one error when it is not JSON, not an object or nested too deeply;
    ``strict`` (version 2): RFC 8259, no NaN or Infinity, no key twice (version 1 read them as Python does)."""
    hooks = {"object_pairs_hook": _unique, "parse_constant": _not_json} if strict else {}
    try:
        value = json.loads(data.decode(), **hooks)
        if not isinstance(value, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError) as e:
        raise fail(f"bad header metadata: {e}") from None
    except RecursionError:   # deeper than the parser goes
        raise fail("bad header metadata: nested too deeply") from None
    if _depth(value) > MAX_META_DEPTH:   # every reader of meta (info --json, tools) recurses
        raise fail("bad header metadata: nested too deeply")
    return value


def _read_meta(c: _Cursor) -> dict[str, Any]:
    """Version 2 metadata: the key set, the binary fields it names in order, then the JSON object if named."""
    bits = c.uvarint("metadata key set")
    if bits >> (_JSON_BIT + 1):
        raise c.fail(f"bad header: unknown metadata fields (key set {bits:#x})")
    meta: dict[str, Any] = {}
    for bit, (key, _, _, read) in enumerate(_FIELDS):
        if bits >> bit & 1:
            if key in meta:
                raise c.fail(f"bad header: {key} given twice")
            meta[key] = read(c)
    if bits >> _JSON_BIT & 1:
        n = c.uvarint("metadata length")
        if n > MAX_META_BYTES:
            raise c.fail(f"header metadata of {n} bytes over the {MAX_META_BYTES} limit")
        extra = _parse_json(c.take(n, "header metadata"), c.fail)
        twice = sorted(set(extra) & set(meta))
        if twice:
            raise c.fail(f"bad header: {twice[0]} given twice")
        meta.update(extra)
    return meta


@dataclass
class VtokHeader:
    """What a ``.vtok`` file says about itself; ``meta`` is the codec's metadata (model, weights, step, ...)
    and ``version`` the format version it was read from (headers always pack as ``VERSION``)."""

    width: int
    height: int
    fps: Fraction
    chunk_frames: int
    frames: int = 0
    num_chunks: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION

    def pack(self) -> bytes:
        """Serialize as version 2 with the trailing CRC32."""
        fields, extra = _pack_meta(self.meta)
        self.check(len(extra))
        fields = b"".join(map(uvarint, (self.width, self.height, self.fps.numerator, self.fps.denominator,
                                        self.chunk_frames))) + fields
        head = _START.pack(MAGIC, VERSION, self.frames) + uvarint(len(fields)) + fields
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
        return -(-self.frames // self.chunk_frames) if self.chunk_frames > 0 else 0

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
    """Where a chunk sits and what the framing says about it: ``offset`` of its framing, ``start`` of its
    payload of ``nbytes``."""

    index: int
    offset: int
    nbytes: int
    frames: int
    start: int


class VtokWriter:
    """Writes a ``.vtok`` chunk by chunk to a seekable binary file; ``close()`` patches the frame count in.

    Use ``write_vtok_file`` for an atomic file, or pass an ``io.BytesIO`` and take ``getvalue()``.
    """

    def __init__(self, fileobj: BinaryIO, header: VtokHeader) -> None:
        self.f = fileobj
        self.header = VtokHeader(header.width, header.height, header.fps, header.chunk_frames, 0, 0,
                                 dict(header.meta))
        self._last_short = False
        self._start = fileobj.tell()
        self._head = bytearray(self.header.pack())
        fileobj.write(self._head)
        self.payload_bytes = 0

    @property
    def header_bytes(self) -> int:
        return len(self._head)

    def write_chunk(self, payload: bytes, frames: int) -> None:
        """Append one chunk of ``frames`` frames; only the last chunk may be shorter than ``chunk_frames``."""
        h = self.header
        if self._last_short or not 1 <= frames <= h.chunk_frames:
            raise BitstreamError(f"chunk {h.num_chunks}: {frames} frames, expected {h.chunk_frames} "
                                 "(only the last chunk may be shorter)")
        if len(payload) > MAX_CHUNK_BYTES or h.num_chunks + 1 > MAX_CHUNKS or h.frames + frames > MAX_FRAMES:
            raise BitstreamError(f"chunk {h.num_chunks}: over the .vtok limits")
        self.f.write(frame_chunk(payload))
        h.num_chunks += 1
        h.frames += frames
        self.payload_bytes += len(payload)
        self._last_short = frames < h.chunk_frames

    def close(self) -> VtokHeader:
        """Patch the frame count into the header; a file without chunks is an error (it would be unreadable)."""
        if self.header.num_chunks == 0:
            raise BitstreamError("no chunks written: empty input video")
        end = self.f.tell()
        head = self._head   # the header as written, its frame count (fixed width) and CRC patched
        struct.pack_into("<I", head, _START.size - 4, self.header.frames)
        struct.pack_into("<I", head, len(head) - 4, zlib.crc32(head[:-4]))
        self.f.seek(self._start)
        self.f.write(head)
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
    """Streams a ``.vtok`` (version 1 or 2) from a path, bytes or a seekable binary file: header first, then
    ``chunks()``."""

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

    def _read_uvarint(self, what: str) -> tuple[int, bytes]:
        """A varint read from the file, with its bytes (for CRCs)."""
        raw = b""
        while not raw or raw[-1] & 0x80 and len(raw) < MAX_VARINT_BYTES:
            raw += self._read(1, what)
        return _Cursor(raw, self._fail).uvarint(what), raw

    def _read_header(self) -> VtokHeader:
        if self._size < 4 or self.f.read(4) != MAGIC:
            self.f.seek(0)
            raise self._fail(f"not a .vtok file (magic {self.f.read(4)!r}, expected {MAGIC!r})")
        self.f.seek(0)
        start = self._read(_START.size, "header")
        _, version, frames = _START.unpack(start)
        if version not in READS:
            raise self._fail(f"unsupported .vtok version {version} (this reader knows {' and '.join(map(str, READS))})")
        if version == 1:
            self.f.seek(0)
            header = self._read_header_v1()
        else:
            header = self._read_header_v2(start, frames)
        try:
            header.sample_aspect_ratio   # reading it checks the sar record
        except BitstreamError as e:
            raise self._fail(str(e)) from None
        if header.num_chunks == 0 or header.frames == 0:
            raise self._fail(f"{'zero frames' if header.frames == 0 else 'zero chunks'}: the file holds no video")
        if header.num_chunks != header.expected_chunks():
            raise self._fail(f"header says {header.num_chunks} chunks but {header.frames} frames in chunks of "
                             f"{header.chunk_frames} need {header.expected_chunks()}")
        least = header.num_chunks * (_V1_CHUNK.size if version == 1 else 1 + _U32.size)
        left = self._size - self.f.tell()
        if least > left:
            raise self._fail(f"truncated: {header.num_chunks} chunks need at least {least} bytes, {left} left")
        self._body = self.f.tell()
        return header

    def _read_header_v2(self, start: bytes, frames: int) -> VtokHeader:
        """Version 2: the fields' length, the fields, the CRC; fields are parsed once the CRC holds."""
        length, raw = self._read_uvarint("header length")
        if length > MAX_HEADER_BYTES:
            raise self._fail(f"header of {length} bytes over the {MAX_HEADER_BYTES} limit")
        fields = self._read(length, "header")
        (crc,) = _U32.unpack(self._read(4, "header CRC"))
        if zlib.crc32(start + raw + fields) != crc:
            raise self._fail("header CRC mismatch (corrupt header)")
        c = _Cursor(fields, self._fail)
        w, h, num, den, chunk_frames = (c.uvarint(what) for what in ("width", "height", "frame rate",
                                                                      "frame rate", "chunk length"))
        if num == 0 or den == 0:
            raise self._fail(f"bad frame rate {num}/{den}")
        header = VtokHeader(w, h, Fraction(num, den), chunk_frames, frames, version=2)
        header.num_chunks = header.expected_chunks()
        try:
            header.check()
        except BitstreamError as e:
            raise self._fail(str(e)) from None
        header.meta = _read_meta(c)
        if c.at != len(fields):
            raise self._fail(f"bad header: {len(fields) - c.at} bytes after its fields")
        return header

    def _read_header_v1(self) -> VtokHeader:
        """Version 1: fixed fields, then the metadata as JSON, then the CRC."""
        fixed = self._read(_V1_FIXED.size, "header")
        _, _, flags, w, h, frames, num, den, chunk_frames, chunks, meta_len = _V1_FIXED.unpack(fixed)
        if flags != 0:
            raise self._fail(f"unknown header flags {flags:#x}")
        if den == 0 or num == 0:
            raise self._fail(f"bad frame rate {num}/{den}")
        header = VtokHeader(w, h, Fraction(num, den), chunk_frames, frames, chunks, version=1)
        try:
            header.check(meta_len)
        except BitstreamError as e:
            raise self._fail(str(e)) from None
        meta = self._read(meta_len, "header metadata")
        (crc,) = _U32.unpack(self._read(4, "header CRC"))
        if zlib.crc32(fixed + meta) != crc:
            raise self._fail("header CRC mismatch (corrupt header)")
        header.meta = _parse_json(meta, self._fail, strict=False)
        return header

    def chunks(self) -> Iterator[tuple[ChunkInfo, bytes]]:
        """Yield ``(info, payload)`` for every chunk in order, each CRC-checked; then check nothing trails."""
        h = self.header
        self.f.seek(self._body)
        for i in range(h.num_chunks):
            offset = self.f.tell()
            want = min(h.chunk_frames, h.frames - i * h.chunk_frames)
            if h.version == 1:
                head = self._read(_V1_CHUNK.size, f"chunk {i} header")
                length, frames, crc = _V1_CHUNK.unpack(head)
                head = head[:8]
            else:
                length, head = self._read_uvarint(f"chunk {i} header")
                (crc,) = _U32.unpack(self._read(4, f"chunk {i} header"))
                frames = want
            if length > MAX_CHUNK_BYTES:
                raise self._fail(f"chunk {i}: {length} bytes over the {MAX_CHUNK_BYTES} limit")
            start = self.f.tell()
            payload = self._read(length, f"chunk {i}")
            if zlib.crc32(payload, zlib.crc32(head)) != crc:
                raise self._fail(f"chunk {i}: CRC mismatch (corrupt data)")
            if frames != want:
                raise self._fail(f"chunk {i}: {frames} frames, the header implies {want}")
            yield ChunkInfo(i, offset, length, frames, start), payload
        trailing = self._size - self.f.tell()
        if trailing:
            raise self._fail(f"trailing garbage: {trailing} bytes after the last chunk")

    @property
    def file_bytes(self) -> int:
        return self._size

    @property
    def header_bytes(self) -> int:
        return self._body

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
