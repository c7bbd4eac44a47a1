"""The vitok chunk payload header (FORMAT.md): table index, quantization step, tokens per unit, then rANS data.

Kept apart from the codec so that inspecting a ``.vtok`` (``vitok info``) needs neither torch nor the model.
"""
from __future__ import annotations

import math
import struct

from vitok.codecs.errors import BitstreamError

CHUNK_HEAD = struct.Struct("<BfH")  # table index, quantization step (float32), tokens per unit (0 = all, grid)


def pack_chunk(table: int, step: float, tokens: int, data: bytes) -> bytes:
    """A chunk payload: header + rANS data (``tokens`` 0 for grid models)."""
    return CHUNK_HEAD.pack(table, step, tokens) + data


def parse_chunk(payload: bytes) -> tuple[int, float, int, bytes]:
    """Split a chunk payload into (table index, step, tokens per unit (0 = all), rANS bytes)."""
    if len(payload) < CHUNK_HEAD.size:
        raise BitstreamError(f"chunk payload of {len(payload)} bytes is shorter than its {CHUNK_HEAD.size}-byte "
                             "header")
    table, step, tokens = CHUNK_HEAD.unpack_from(payload)
    if not (math.isfinite(step) and step > 0):
        raise BitstreamError(f"bad quantization step {step} in chunk header")
    return table, step, tokens, payload[CHUNK_HEAD.size:]
