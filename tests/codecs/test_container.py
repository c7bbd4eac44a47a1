"""The .vtok container: streaming writer, strict reader, every bad-input case as a one-line BitstreamError."""
from __future__ import annotations

import io
import os
import struct
import zlib
from fractions import Fraction

import pytest

from vitok.codecs import BitstreamError
from vitok.codecs.container import (MAX_CHUNK_BYTES, VtokHeader, VtokReader, VtokWriter, read_vtok, write_vtok)


def _header(**kw) -> VtokHeader:
    return VtokHeader(width=kw.get("width", 64), height=kw.get("height", 48), fps=Fraction(30000, 1001),
                      chunk_frames=kw.get("chunk_frames", 8), meta={"codec": "test", "model": "m"})


@pytest.fixture
def good() -> bytes:
    return write_vtok(_header(), [(b"a" * 10, 8), (b"bb" * 7, 8), (b"c", 4)])


def _fail(data: bytes, match: str) -> str:
    with pytest.raises(BitstreamError, match=match) as e:
        read_vtok(data)
    assert "\n" not in str(e.value)
    return str(e.value)


def _patch_header(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """Set one fixed header field and recompute the header CRC (at the original metadata length)."""
    b = bytearray(data)
    end = 40 + struct.unpack_from("<I", b, 36)[0]
    struct.pack_into(fmt, b, offset, value)
    struct.pack_into("<I", b, end, zlib.crc32(bytes(b[:end])))
    return bytes(b)


def test_round_trip(good):
    header, chunks = read_vtok(good)
    assert (header.width, header.height, header.frames, header.num_chunks) == (64, 48, 20, 3)
    assert header.fps == Fraction(30000, 1001) and header.meta == {"codec": "test", "model": "m"}
    assert [p for _, p in chunks] == [b"a" * 10, b"bb" * 7, b"c"]
    assert [i.frames for i, _ in chunks] == [8, 8, 4]


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
    _fail(_patch_header(good, 4, "<H", 2), "unsupported .vtok version 2")


def test_truncation_everywhere(good):
    for n in (5, 20, 40, 50, len(good) - 30, len(good) - 1):
        _fail(good[:n], "truncated|CRC|not a .vtok")


def test_flipped_bit_names_the_chunk(good):
    b = bytearray(good)
    b[-3] ^= 0x10  # the last chunk (payload b"c") ends with its CRC field
    _fail(bytes(b), "chunk 2: CRC mismatch")
    _, chunks = read_vtok(good)
    b = bytearray(good)
    b[chunks[1][0].offset + 12 + 3] ^= 1
    _fail(bytes(b), "chunk 1: CRC mismatch")


def test_header_crc(good):
    b = bytearray(good)
    b[45] ^= 1  # inside the JSON metadata
    _fail(bytes(b), "header CRC mismatch")


@pytest.mark.parametrize("offset,value,match", [
    (8, 100_000, "frame size"), (12, 0, "frame size"), (28, 0, "chunk length"), (28, 5000, "chunk length"),
    (16, 1 << 30, "over the limits"), (32, 1 << 30, "over the limits"), (36, 1 << 30, "metadata"),
    (20, 0, "frame rate"), (24, 0, "frame rate"), (8, 16384, "pixel limit")])
def test_sizes_over_limits_rejected_before_allocating(good, offset, value, match):
    if offset == 8 and value == 16384:
        good = _patch_header(good, 12, "<I", 16384)
    _fail(_patch_header(good, offset, "<I", value), match)


def test_zero_chunks_and_count_mismatch(good):
    _fail(_patch_header(_patch_header(good, 32, "<I", 0), 16, "<I", 0), "zero frames")
    _fail(_patch_header(good, 16, "<I", 0), "zero frames")  # chunks left at 1: the frame count is what is wrong
    _fail(_patch_header(good, 32, "<I", 0), "zero chunks")
    _fail(_patch_header(good, 32, "<I", 2), "header says 2 chunks")
    _fail(_patch_header(_patch_header(good, 16, "<I", 17), 32, "<I", 3), "chunk 2: 4 frames, the header implies 1")
    _fail(_patch_header(_patch_header(good, 16, "<I", 1000), 32, "<I", 125), "truncated")


def test_trailing_garbage(good):
    _fail(good + b"\x00", "trailing garbage: 1 bytes")


def test_chunk_length_beyond_file(good):
    b = bytearray(good)
    _, chunks = read_vtok(good)
    struct.pack_into("<I", b, chunks[0][0].offset, 1 << 25)
    _fail(bytes(b), "truncated: chunk 0 needs 33554432 bytes")
    struct.pack_into("<I", b, chunks[0][0].offset, MAX_CHUNK_BYTES + 1)
    _fail(bytes(b), "over the")


def test_bad_json_meta():
    """Metadata that is not JSON, or JSON nested past Python's recursion limit, is one error naming it."""
    h = _header()
    h.meta["pad"] = "x" * 60000
    for bad in (b"[", b"[" * 60000, b'{"x": ' + b"[" * 40 + b"]" * 40 + b"}"):   # the last parses, 41 deep
        data = bytearray(write_vtok(h, [(b"x", 8)]))
        meta_len = struct.unpack_from("<I", data, 36)[0]
        data[40:40 + meta_len] = bad + b" " * (meta_len - len(bad))
        struct.pack_into("<I", data, 40 + meta_len, zlib.crc32(bytes(data[:40 + meta_len])))
        _fail(bytes(data), "bad header metadata")


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
