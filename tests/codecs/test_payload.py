"""Chunk payload headers: one token count for all units, or one per unit; malformed headers are refused."""
from __future__ import annotations

import struct

import pytest

from vitok.codecs import BitstreamError, CodecError
from vitok.codecs.payload import CHUNK_HEAD, PER_UNIT, header_size, pack_chunk, parse_chunk


def test_one_count_or_one_per_unit():
    assert parse_chunk(pack_chunk(1, 0.5, 0, b"abc")) == (1, 0.5, 0, b"abc")  # grid model: all tokens
    assert parse_chunk(pack_chunk(0, 2.0, 64, b"x")) == (0, 2.0, 64, b"x")
    same = pack_chunk(0, 0.5, (32, 32, 32), b"x")  # alike counts are written as one
    assert same == pack_chunk(0, 0.5, 32, b"x") and len(same) == header_size((32, 32, 32)) + 1 == CHUNK_HEAD.size + 1
    mixed = pack_chunk(2, 0.5, (256, 1, 64), b"data")
    assert parse_chunk(mixed) == (2, 0.5, (256, 1, 64), b"data")
    assert len(mixed) == header_size((256, 1, 64)) + 4 == CHUNK_HEAD.size + 2 + 6 + 4
    for bad in ((), (0, 4), (PER_UNIT, 1)):
        with pytest.raises(CodecError, match="per-unit token counts"):
            pack_chunk(0, 0.5, bad, b"")


def test_malformed_per_unit_headers():
    head = CHUNK_HEAD.pack(0, 0.5, PER_UNIT)
    for payload, match in ((head, "before its unit count"),
                           (head + struct.pack("<H", 0), "announces 0"),
                           (head + struct.pack("<HH", 3, 8), "announces 3 per-unit token counts, the payload holds 1"),
                           (head + struct.pack("<HHH", 2, 8, 0), "gives a unit 0 tokens")):
        with pytest.raises(BitstreamError, match=match):
            parse_chunk(payload)
