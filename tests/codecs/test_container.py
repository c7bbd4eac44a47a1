"""The .vtok container: streaming writer, strict reader, every bad-input case as a one-line BitstreamError; version 2
written and read, version 1 still read."""
from __future__ import annotations

import io
import json
import os
import random
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest

from vitok.codecs import BitstreamError, fuzz
from vitok.codecs.container import (MAX_CHUNK_BYTES, MAX_HEADER_BYTES, MAX_META_BYTES, VtokHeader, VtokReader,
                                    VtokWriter, _pack_meta, read_vtok, uvarint, write_vtok)
from vitok.codecs.fuzz import _numbers, _raw_header

VITOK_META = {"codec": "vitok", "model": "vitok-1d", "weights": "0123456789abcdef", "kind": "vit1d", "channels": 16,
              "tables": "fedcba9876543210", "step": 0.5}
JSON_BIT = 1 << 10   # the key set's bit for the JSON object (FORMAT.md)


def _header(meta: dict | None = None, **kw) -> VtokHeader:
    return VtokHeader(width=kw.get("width", 64), height=kw.get("height", 48), fps=Fraction(30000, 1001),
                      chunk_frames=kw.get("chunk_frames", 8), meta={"codec": "test", "model": "m"} if meta is None
                      else meta)


CHUNKS = [(b"a" * 10, 8), (b"bb" * 7, 8), (b"c", 4)]


@pytest.fixture
def good() -> bytes:
    return write_vtok(_header(), CHUNKS)


def _v1(header: VtokHeader, chunks: list[tuple[bytes, int]]) -> bytes:
    """A version 1 file written from FORMAT.md's version 1 layout (40 fixed bytes, JSON, CRC; 12-byte framing)."""
    meta = json.dumps(header.meta, sort_keys=True, separators=(",", ":")).encode()
    frames = sum(n for _, n in chunks)
    head = struct.pack("<4sHHIIIIIIII", b"VTOK", 1, 0, header.width, header.height, frames, header.fps.numerator,
                       header.fps.denominator, header.chunk_frames, len(chunks), len(meta)) + meta
    out = head + struct.pack("<I", zlib.crc32(head))
    for payload, n in chunks:
        framing = struct.pack("<II", len(payload), n)
        out += framing + struct.pack("<I", zlib.crc32(payload, zlib.crc32(framing))) + payload
    return out


def _fail(data: bytes, match: str) -> str:
    with pytest.raises(BitstreamError, match=match) as e:
        read_vtok(data)
    assert "\n" not in str(e.value)
    return str(e.value)


def _rebuilt(data: bytes, meta_fields: bytes | None = None, length: int | None = None, **numbers: int) -> bytes:
    """The file with its version 2 header rebuilt from other numbers or metadata bytes, with a valid CRC."""
    header, chunks = read_vtok(data)
    fields = _pack_meta(header.meta)[0] if meta_fields is None else meta_fields
    return _raw_header({**_numbers(header), **numbers}, fields, length) + data[chunks[0][0].offset:]


def test_round_trip(good):
    header, chunks = read_vtok(good)
    assert (header.width, header.height, header.frames, header.num_chunks, header.version) == (64, 48, 20, 3, 2)
    assert header.fps == Fraction(30000, 1001) and header.meta == {"codec": "test", "model": "m"}
    assert [p for _, p in chunks] == [b"a" * 10, b"bb" * 7, b"c"]
    assert [i.frames for i, _ in chunks] == [8, 8, 4]


def test_header_and_framing_are_compact():
    """A vitok header packs its metadata into binary fields: 57 bytes where version 1's JSON took 177; a chunk's
    framing is its length as a varint and a CRC32 (5 bytes for a payload under 128 bytes, 12 in version 1)."""
    header = _header(dict(VITOK_META), width=128, height=128, chunk_frames=20)
    data = write_vtok(header, [(b"y" * 300, 20), (b"x" * 100, 17)])
    assert len(header.pack()) == 57 and len(_v1(header, [])) == 177
    assert len(data) == 57 + (2 + 4 + 300) + (1 + 4 + 100)
    assert read_vtok(data)[0].meta == VITOK_META


@pytest.mark.parametrize("changes", [
    {"step": None}, {"sar": [128, 117]}, {"tiling": {"fit": True, "overlap": 0.25, "tile": 256}},
    {"tiling": {"fit": False, "overlap": 0.0, "tile": None}},
    # values the binary fields cannot hold exactly go to the JSON object, as they are
    {"step": 0.1}, {"channels": -1}, {"channels": True}, {"weights": "0123456789ABCDEF"}, {"tables": "abc"},
    {"kind": "other"}, {"codec": "h264"}, {"model": "x" * 300}, {"model": ""},
    {"tiling": {"fit": True, "overlap": 0, "tile": 64}}, {"tiling": {"fit": 1, "overlap": 0.5, "tile": 64}},
    {"extra": {"a": [1, 2]}, "note": "é"}, {"model": "ünï"}])
def test_metadata_round_trips_exactly(changes):
    meta = {**VITOK_META, **changes}
    read = read_vtok(write_vtok(_header(meta), [(b"x", 8)]))[0].meta
    assert read == meta and [type(read[k]) for k in meta] == [type(v) for v in meta.values()]


def test_streaming_writer_patches_counts(tmp_path):
    path = tmp_path / "x.vtok"
    with open(path, "wb") as f:
        w = VtokWriter(f, _header())
        for _ in range(5):
            w.write_chunk(b"xyz", 8)
        w.write_chunk(b"z", 3)
        w.close()
    with VtokReader(path) as r:
        assert (r.header.frames, r.header.num_chunks) == (43, 6)
        assert len(list(r.chunks())) == 6


def test_writer_patches_the_header_it_wrote(tmp_path):
    """close() patches the frame count into the bytes it wrote first: metadata the caller changes meanwhile (a
    nested value) cannot change the header's length over the first chunk."""
    note = {"src": "a"}
    buf = io.BytesIO()
    w = VtokWriter(buf, _header({"codec": "vitok", "note": note}))
    w.write_chunk(b"xyz", 8)
    note["src"] = "a much longer source name"
    w.close()
    header, chunks = read_vtok(buf.getvalue())
    assert header.meta["note"] == {"src": "a"} and header.frames == 8 and chunks[0][1] == b"xyz"


def test_metadata_that_is_not_json_or_a_negative_varint_is_refused():
    with pytest.raises(BitstreamError, match="header metadata is not JSON"):
        _header({"codec": "vitok", "x": float("nan")}).pack()
    with pytest.raises(ValueError, match="cannot hold -1"):
        uvarint(-1)


def test_writer_rules():
    w = VtokWriter(io.BytesIO(), _header())
    with pytest.raises(BitstreamError, match="no chunks"):
        w.close()
    w.write_chunk(b"a", 5)
    with pytest.raises(BitstreamError, match="only the last chunk"):
        w.write_chunk(b"a", 8)
    with pytest.raises(BitstreamError, match="over the .vtok limits"):
        VtokWriter(io.BytesIO(), _header()).write_chunk(bytes(MAX_CHUNK_BYTES + 1), 8)


def test_wrong_magic(good):
    _fail(b"RIFF" + good[4:], "not a .vtok file")
    _fail(b"", "not a .vtok file")
    _fail(b"VT", "not a .vtok file")


def test_unknown_version(good):
    _fail(good[:4] + struct.pack("<H", 3) + good[6:], r"unsupported .vtok version 3 \(this reader knows 1 and 2\)")


@pytest.mark.parametrize("version", [1, 2])
def test_truncation_everywhere(good, version):
    data = good if version == 2 else _v1(_header(), CHUNKS)
    for n in range(len(data)):
        _fail(data[:n], "truncated|CRC|not a .vtok")


def test_flipped_bit_names_the_chunk(good):
    b = bytearray(good)
    b[-1] ^= 0x10  # the last chunk's payload b"c"
    _fail(bytes(b), "chunk 2: CRC mismatch")
    _, chunks = read_vtok(good)
    b = bytearray(good)
    b[chunks[1][0].start + 3] ^= 1
    _fail(bytes(b), "chunk 1: CRC mismatch")


def test_every_header_byte_is_guarded(good):
    """A changed byte anywhere in the header is refused: magic, version, or the CRC over the rest."""
    end = read_vtok(good)[1][0][0].offset
    for i in range(end):
        b = bytearray(good)
        b[i] ^= 0x41
        _fail(bytes(b), "not a .vtok|unsupported .vtok version|header CRC mismatch|truncated|over the")


@pytest.mark.parametrize("numbers,match", [
    ({"width": 100_000}, "frame size"), ({"height": 0}, "frame size"), ({"chunk_frames": 0}, "chunk length"),
    ({"chunk_frames": 5000}, "chunk length"), ({"frames": 1 << 30}, "over the limits"),
    ({"fps_num": 0}, "frame rate"), ({"fps_den": 0}, "frame rate"),
    ({"width": 16384, "height": 16384}, "pixel limit"), ({"frames": 1000}, "truncated"),
    ({"frames": 0}, "zero frames")])
def test_sizes_over_limits_rejected_before_allocating(good, numbers, match):
    _fail(_rebuilt(good, **numbers), match)


def test_header_length_over_the_limit(good):
    _fail(_rebuilt(good, length=MAX_HEADER_BYTES + 1), "header of .* bytes over the")
    _fail(_rebuilt(good, length=1 << 31), "header of .* bytes over the")


def test_trailing_garbage(good):
    _fail(good + b"\x00", "trailing garbage: 1 bytes")


def test_chunk_length_beyond_file(good):
    _, chunks = read_vtok(good)
    at, start = chunks[0][0].offset, chunks[0][0].start

    def with_length(raw: bytes) -> bytes:
        return good[:at] + raw + good[start - 4:]

    _fail(with_length(uvarint(1 << 25)), "truncated: chunk 0 needs 33554432 bytes")
    _fail(with_length(uvarint(MAX_CHUNK_BYTES + 1)), "over the")
    _fail(with_length(b"\xff" * 5 + b"\x01"), "chunk 0 header is not a shortest varint under 2")
    _fail(with_length(b"\x8a\x00"), "not a shortest varint")   # 10 in two bytes: one value has one encoding


def test_bad_json_meta(good):
    """Metadata that is not JSON, not an object, or JSON nested past Python's recursion limit or the depth limit is
    one error naming it."""
    for bad in (b"[", b"[1]", b"[" * 60000, b'{"x": ' + b"[" * 40 + b"]" * 40 + b"}", b"\xff", b'{"a":NaN}',
                b'{"a":1,"a":2}'):
        _fail(_rebuilt(good, uvarint(JSON_BIT) + uvarint(len(bad)) + bad), "bad header metadata")
    _fail(_rebuilt(good, uvarint(JSON_BIT) + uvarint(MAX_META_BYTES + 1)), "header metadata of .* over the")


@pytest.mark.parametrize("fields,match", [
    (uvarint(1 << 11), "unknown metadata fields"),
    (uvarint(1 << 3) + b"\x07", "unknown model kind 7"),
    (uvarint(1 << 1) + b"\x02\xff\xfe", "model name is not UTF-8"),
    (uvarint(1 << 1) + b"\x00", "model name of 0 bytes"),
    (uvarint(0b11 << 6) + struct.pack("<f", 0.5), "step given twice"),
    (uvarint(1 << 4 | JSON_BIT) + b"\x10" + uvarint(14) + b'{"channels":1}', "channels given twice"),
    (uvarint(1 << 4) + b"\x10\x00", "1 bytes after its fields"),
    (uvarint(1 << 4) + b"\x80", "truncated: channels"),
    (uvarint(1 << 5) + b"\x00" * 7, "truncated: tables"),
    (uvarint(1 << 9) + b"\x02" + struct.pack("<d", 0.25) + b"\x40", "tiling fit 2"),
    (b"\x90\x00" + b"\x10", "key set is not a shortest varint")])
def test_bad_binary_metadata(good, fields, match):
    _fail(_rebuilt(good, fields), match)


def test_version_1_still_reads():
    """Files written before version 2 read as they did: the same header, metadata and chunks."""
    header, chunks = read_vtok(_v1(_header(dict(VITOK_META)), CHUNKS))
    assert header.version == 1 and header.meta == VITOK_META
    assert (header.width, header.height, header.fps, header.frames, header.num_chunks) == \
        (64, 48, Fraction(30000, 1001), 20, 3)
    assert [(p, i.frames) for i, p in chunks] == CHUNKS


def test_version_1_streams_decode_as_they_did(codec1d, stream1d, tmp_path):
    """A real stream rewritten in version 1 decodes to the same frames; `vitok info` names its version; damage to
    it is refused as a BitstreamError like a version 2 stream's."""
    from vitok.codecs.files import describe_vtok

    header, chunks = read_vtok(stream1d)
    old = _v1(header, [(p, i.frames) for i, p in chunks])
    assert old == fuzz.as_version_1(stream1d)   # the fuzzer's version 1 corpus is this layout
    assert len(old) == len(stream1d) + 142   # what version 2 saves on this stream (3 chunks)
    assert read_vtok(old)[0].meta == header.meta
    assert np.array_equal(codec1d.decode(old)[0], codec1d.decode(stream1d)[0])
    (tmp_path / "old.vtok").write_bytes(old)
    assert describe_vtok(tmp_path / "old.vtok")["format_version"] == 1
    rng, lay = random.Random(0), fuzz.layout(old)
    for _ in range(200):
        _, mutant = fuzz.mutate(old, rng, lay)
        assert fuzz.check(mutant, codec1d, max_seconds=2.0) in ("ok", "rejected")


def test_version_1_metadata_reads_as_python_reads_json():
    """Version 1 took its JSON as Python's json module reads it (NaN, a repeated key): such files still read;
    version 2's JSON object is RFC 8259."""
    data = bytearray(_v1(_header({"codec": "test", "psnr": 1.0}), CHUNKS))
    meta_len = struct.unpack_from("<I", data, 36)[0]
    data[40:40 + meta_len] = b'{"codec":"test","psnr":NaN}'.ljust(meta_len)
    struct.pack_into("<I", data, 40 + meta_len, zlib.crc32(bytes(data[:40 + meta_len])))
    meta = read_vtok(bytes(data))[0].meta
    assert meta["codec"] == "test" and meta["psnr"] != meta["psnr"]


def _v1_patched(offset: int, value: int) -> bytes:
    b = bytearray(_v1(_header(), CHUNKS))
    end = 40 + struct.unpack_from("<I", b, 36)[0]
    struct.pack_into("<H" if offset < 8 else "<I", b, offset, value)
    struct.pack_into("<I", b, end, zlib.crc32(bytes(b[:end])))
    return bytes(b)


@pytest.mark.parametrize("offset,value,match", [
    (6, 1, "unknown header flags"), (8, 100_000, "frame size"), (28, 0, "chunk length"), (20, 0, "frame rate"),
    (36, 1 << 30, "metadata"), (32, 0, "zero chunks"), (16, 0, "zero frames"), (32, 2, "header says 2 chunks"),
    (16, 17, "chunk 2: 4 frames, the header implies 1")])
def test_version_1_rules(offset, value, match):
    _fail(_v1_patched(offset, value), match)


def test_version_1_metadata_and_chunk_crcs():
    data = _v1(_header(), CHUNKS)
    b = bytearray(data)
    b[45] ^= 1  # inside the JSON metadata
    _fail(bytes(b), "header CRC mismatch")
    b = bytearray(data)
    b[-1] ^= 1
    _fail(bytes(b), "chunk 2: CRC mismatch")


def test_missing_file(tmp_path):
    with pytest.raises(BitstreamError, match="no such .vtok file"):
        VtokReader(tmp_path / "nope.vtok")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_folder_or_pipe_is_not_called_missing(tmp_path):
    """Both were "no such .vtok file"; a pipe is refused before it is opened (opening one waits for a writer)."""
    (tmp_path / "d.vtok").mkdir()
    os.mkfifo(tmp_path / "p.vtok")
    with pytest.raises(BitstreamError, match="d.vtok is a folder, not a .vtok file"):
        VtokReader(tmp_path / "d.vtok")
    with pytest.raises(BitstreamError, match="p.vtok is not a regular file"):
        VtokReader(tmp_path / "p.vtok")
