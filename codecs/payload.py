"""The vitok chunk payload header (FORMAT.md): table index, quantization step, tokens per unit, then rANS data.

Kept apart from the codec so that inspecting a ``.vtok`` (``vitok info``) needs neither torch nor the model.
"""
from __future__ import annotations

import math
import struct
from typing import Sequence

from vitok.codecs.errors import BitstreamError, CodecError

CHUNK_HEAD = struct.Struct("<BfH")  # table index, quantization step (float32), tokens per unit (0 = all, grid)
PER_UNIT = 0xFFFF  # the tokens field's mark: a u16 unit count and one u16 token count per unit follow
COUNT = struct.Struct("<H")
CONTINUES = 0x80   # in the table byte: the chunk continues from the chunk before (a grid model's first latent frame
# its contexts; a 1D model's tokens predicted from its integers)

ChunkTokens = int | tuple[int, ...]  # 0 (grid: all tokens), the tokens every unit keeps, or one count per unit


def pack_chunk(table: int, step: float, tokens: int | Sequence[int], data: bytes) -> bytes:
    """A chunk payload: header + rANS data. ``tokens``: 0 for grid models, the tokens every unit keeps, or a
    sequence with one count per unit (written as one count when they are all alike)."""
    if not isinstance(tokens, int):
        counts = [int(k) for k in tokens]
        if not counts or not all(1 <= k < PER_UNIT for k in counts) or len(counts) >= PER_UNIT:
            raise CodecError(f"per-unit token counts must be 1..{PER_UNIT - 1} for 1..{PER_UNIT - 1} units")
        if len(set(counts)) > 1:
            head = CHUNK_HEAD.pack(table, step, PER_UNIT) + COUNT.pack(len(counts))
            return head + struct.pack(f"<{len(counts)}H", *counts) + data
        tokens = counts[0]
    if not 0 <= tokens < PER_UNIT:
        raise CodecError(f"tokens per unit must be 0..{PER_UNIT - 1}, got {tokens}")
    return CHUNK_HEAD.pack(table, step, tokens) + data


def parse_chunk(payload: bytes) -> tuple[int, float, ChunkTokens, bytes]:
    """Split a chunk payload into (table index, step, tokens (0 = all; a tuple: one count per unit), rANS bytes)."""
    if len(payload) < CHUNK_HEAD.size:
        raise BitstreamError(f"chunk payload of {len(payload)} bytes is shorter than its {CHUNK_HEAD.size}-byte "
                             "header")
    table, step, tokens = CHUNK_HEAD.unpack_from(payload)
    if not (math.isfinite(step) and step > 0):
        raise BitstreamError(f"bad quantization step {step} in chunk header")
    at = CHUNK_HEAD.size
    if tokens == PER_UNIT:
        if len(payload) < at + COUNT.size:
            raise BitstreamError("chunk header ends before its unit count")
        (units,) = COUNT.unpack_from(payload, at)
        at += COUNT.size
        if units == 0 or len(payload) < at + 2 * units:
            raise BitstreamError(f"chunk header announces {units} per-unit token counts, the payload holds "
                                 f"{max(len(payload) - at, 0) // 2}")
        tokens = struct.unpack_from(f"<{units}H", payload, at)
        at += 2 * units
        if min(tokens) == 0:
            raise BitstreamError("chunk header gives a unit 0 tokens")
    return table, step, tokens, payload[at:]


def header_size(tokens: int | Sequence[int]) -> int:
    """Bytes of the chunk header ``pack_chunk`` writes for ``tokens``."""
    counts = [tokens] if isinstance(tokens, int) else list(tokens)
    return CHUNK_HEAD.size + (COUNT.size + 2 * len(counts) if len(set(counts)) > 1 else 0)
