"""Fuzz the ``.vtok`` reader and decoder with mutated real streams: ``python -m vitok.codecs.fuzz --seconds N``.

Streams come from a tiny 1D model coding a real sample clip, one of them rewritten in format version 1 (which
readers still take). By default each mutant is parsed and every chunk
entropy-decoded to its integers (the bitstream half of decoding); ``--pixels`` adds the neural decoder. Mutations: bit flips, truncation, insertion,
deletion, trailing bytes, chunk duplication, header field edits and payload edits (with and without a
recomputed CRC, so that checks behind the CRC are reached too). Every mutant must either decode or raise
``BitstreamError``: any other exception, a decode slower than a time limit, or a Python allocation peak over a
cap is a failure.
"""
from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
import tracemalloc
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vitok.codecs.container import _START, _V1_FIXED, VtokHeader, VtokReader, _pack_meta, frame_chunk, uvarint
from vitok.codecs.errors import BitstreamError

MAX_SECONDS = 10.0  # per mutant
MAX_ALLOC = 64 << 20  # bytes of Python-tracked allocation per mutant (numpy included)


class FuzzFailure(AssertionError):
    """A mutant did something other than decode or raise BitstreamError."""


@dataclass
class Layout:
    """Where the header and chunks of a valid stream sit (for targeted edits)."""

    header: VtokHeader
    header_end: int  # where the first chunk starts
    chunks: list[tuple[int, int, int]] = field(default_factory=list)  # (framing offset, payload offset, length)


def layout(data: bytes) -> Layout:
    with VtokReader(data) as r:
        chunks = [(info.offset, info.start, info.nbytes) for info, _ in r.chunks()]
        return Layout(r.header, chunks[0][0], chunks)


def _rand_u32(rng: random.Random) -> int:
    return rng.choice([0, 1, 2, 7, 8, 9, 255, 256, 65535, 1 << 16, 1 << 24, 1 << 28, (1 << 31) - 1, (1 << 32) - 1,
                       rng.getrandbits(32), rng.getrandbits(8)])


def m_bitflip(d: bytes, lay: Layout, rng: random.Random) -> bytes:
    b = bytearray(d)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def m_truncate(d: bytes, lay: Layout, rng: random.Random) -> bytes:
    return d[:rng.randrange(len(d))]


def m_insert(d: bytes, lay: Layout, rng: random.Random) -> bytes:
    i = rng.randrange(len(d) + 1)
    return d[:i] + rng.randbytes(rng.randint(1, 64)) + d[i:]


def m_delete(d: bytes, lay: Layout, rng: random.Random) -> bytes:
    i = rng.randrange(len(d))
    return d[:i] + d[i + rng.randint(1, 64):]


def m_trailing(d: bytes, lay: Layout, rng: random.Random) -> bytes:
    return d + rng.randbytes(rng.randint(1, 32))


def m_dup_chunk(d: bytes, lay: Layout, rng: random.Random) -> bytes:
    off, start, n = rng.choice(lay.chunks)
    return d[:off] + d[off:start + n] + d[off:]


def _numbers(h: VtokHeader) -> dict[str, int]:
    """A header's numbers in the order version 2 stores them."""
    return {"frames": h.frames, "width": h.width, "height": h.height, "fps_num": h.fps.numerator,
            "fps_den": h.fps.denominator, "chunk_frames": h.chunk_frames}


def _raw_header(numbers: dict[str, int], meta_fields: bytes, length: int | None = None) -> bytes:
    """A version 2 header of any numbers and metadata bytes (unchecked) with its CRC; ``length`` overrides the
    fields' length."""
    fields = b"".join(uvarint(v) for k, v in numbers.items() if k != "frames") + meta_fields
    head = _START.pack(b"VTOK", 2, numbers["frames"]) + uvarint(len(fields) if length is None else length) + fields
    return head + struct.pack("<I", zlib.crc32(head))


def m_header_field(d: bytes, lay: Layout, rng: random.Random) -> bytes:
    """Set one header number (frames, size, rate, chunk length, the fields' length, version) to an extreme value,
    usually with the header CRC recomputed."""
    numbers = _numbers(lay.header)
    key = rng.choice([*numbers, "length", "version"])
    if key == "version":
        b = bytearray(d)
        struct.pack_into("<H", b, 4, rng.choice([0, 1, 3, 255, 65535, rng.getrandbits(16)]))
        return bytes(b)
    if key != "length":
        numbers[key] = _rand_u32(rng)
    head = _raw_header(numbers, _pack_meta(lay.header.meta)[0], _rand_u32(rng) if key == "length" else None)
    if rng.random() < 0.15:
        head = head[:-4] + rng.randbytes(4)
    return head + d[lay.header_end:]


def m_meta(d: bytes, lay: Layout, rng: random.Random) -> bytes:
    """Change one metadata key (other model, weights, tables, junk) or put junk bytes where the metadata goes,
    with a valid header CRC."""
    meta = dict(lay.header.meta)
    key = rng.choice(list(meta) + ["extra"])
    meta[key] = rng.choice([None, 0, -1, "x", "other-model", [1, 2], {"a": 1}, 1e300, "0" * 16, 0.5, "vit"])
    fields = rng.randbytes(rng.randint(0, 40)) if rng.random() < 0.3 else _pack_meta(meta)[0]
    return _raw_header(_numbers(lay.header), fields) + d[lay.header_end:]


def m_chunk_field(d: bytes, lay: Layout, rng: random.Random) -> bytes:
    """Set a chunk's length to an extreme value, usually with its CRC recomputed."""
    off, start, n = rng.choice(lay.chunks)
    length = uvarint(_rand_u32(rng))
    crc = zlib.crc32(d[start:start + n], zlib.crc32(length)) if rng.random() < 0.8 else rng.getrandbits(32)
    return d[:off] + length + struct.pack("<I", crc) + d[start:]


def m_payload(d: bytes, lay: Layout, rng: random.Random) -> bytes:
    """Corrupt bytes inside one chunk payload (its header or rANS data) and recompute the CRC."""
    off, start, n = rng.choice(lay.chunks)
    b = bytearray(d[start:start + n])
    if n:
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(min(n, 7)) if rng.random() < 0.4 else rng.randrange(n)
            b[i] = rng.getrandbits(8)
    return d[:off] + frame_chunk(bytes(b)) + d[start + n:]


MUTATORS: list[Callable[[bytes, Layout, random.Random], bytes]] = [
    m_bitflip, m_truncate, m_insert, m_delete, m_trailing, m_dup_chunk, m_header_field, m_meta, m_chunk_field,
    m_payload, m_payload]


def as_version_1(data: bytes) -> bytes:
    """A stream rewritten in format version 1 (FORMAT.md): 40 fixed header bytes, the metadata as JSON, 12-byte
    chunk framing with each chunk's frame count."""
    with VtokReader(data) as r:
        h, chunks = r.header, list(r.chunks())
    meta = json.dumps(h.meta, sort_keys=True, separators=(",", ":")).encode()
    head = _V1_FIXED.pack(b"VTOK", 1, 0, h.width, h.height, h.frames, h.fps.numerator, h.fps.denominator,
                          h.chunk_frames, h.num_chunks, len(meta)) + meta
    out = [head, struct.pack("<I", zlib.crc32(head))]
    for info, payload in chunks:
        framing = struct.pack("<II", len(payload), info.frames)
        out += [framing, struct.pack("<I", zlib.crc32(payload, zlib.crc32(framing))), payload]
    return b"".join(out)


def m_v1_header_field(d: bytes, lay: Layout, rng: random.Random) -> bytes:
    """Version 1: set one fixed header field to an extreme value, usually with the header CRC recomputed."""
    b = bytearray(d)
    end = _V1_FIXED.size + _V1_FIXED.unpack_from(d)[-1]
    off = rng.choice(range(4, _V1_FIXED.size, 4))
    struct.pack_into("<I", b, off, _rand_u32(rng))
    if rng.random() < 0.85:
        struct.pack_into("<I", b, end, zlib.crc32(bytes(b[:end])))
    return bytes(b)


V1_MUTATORS = [m_bitflip, m_truncate, m_insert, m_delete, m_trailing, m_dup_chunk, m_v1_header_field]


def mutate(data: bytes, rng: random.Random, lay: Layout | None = None) -> tuple[str, bytes]:
    lay = lay or layout(data)
    mut = rng.choice(V1_MUTATORS if lay.header.version == 1 else MUTATORS)
    return mut.__name__, mut(data, lay, rng)


def check(data: bytes, codec=None, *, pixels: bool = False, max_seconds: float = MAX_SECONDS,
          max_alloc: int = MAX_ALLOC, trace: bool = True) -> str:
    """Parse one stream; with ``codec`` also entropy-decode every chunk's integers (``pixels``: run the neural
    decoder too). Returns "ok" or "rejected" (BitstreamError); anything else raises FuzzFailure."""
    t0 = time.perf_counter()
    started = trace and not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    if trace:
        tracemalloc.reset_peak()
    try:
        if codec is None:
            with VtokReader(data) as r:
                for _ in r.chunks():
                    pass
        elif pixels:
            frames, _ = codec.decode(data)
            if frames.dtype != np.uint8 or frames.ndim != 4:
                raise FuzzFailure(f"decoded frames have shape {frames.shape} / {frames.dtype}")
        else:
            for _ in codec.iter_symbols(data):
                pass
        outcome = "ok"
    except BitstreamError as e:
        if "\n" in str(e):
            raise FuzzFailure(f"multi-line error message: {e!r}") from None
        outcome = "rejected"
    except FuzzFailure:
        raise
    except Exception as e:  # noqa: BLE001  (the point: anything else is a bug)
        raise FuzzFailure(f"{type(e).__name__}: {e}") from e
    finally:
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
        if started:
            tracemalloc.stop()
    elapsed = time.perf_counter() - t0
    if elapsed > max_seconds:
        raise FuzzFailure(f"took {elapsed:.1f} s (limit {max_seconds} s)")
    if peak > max_alloc:
        raise FuzzFailure(f"allocated {peak / 2**20:.1f} MiB (limit {max_alloc / 2**20:.0f} MiB)")
    return outcome


def make_corpus(seed: int = 0):
    """A tiny calibrated 1D model (with inter tables) and a few real streams of a sample clip (1 and 3 chunks, full
    and few tokens, and a second chunk predicted from the first)."""
    import torch

    import vitok
    from vitok.codecs.entropy import calibrate_entropy
    from vitok.codecs.neural import VitokCodec
    from vitok.data.io import read_video
    from vitok.data.samples import sample_path

    torch.manual_seed(seed)
    tok = vitok.create_model("vit1d-tiny").freeze()
    frames, info = read_video(sample_path("carphone"), num_frames=20)
    frames = np.ascontiguousarray(frames[:, 40:88, 48:112])
    tables = calibrate_entropy(tok, [frames[:8], frames[8:16]], steps=(0.5, 2.0), iters=40, seed=seed,
                               follows=[False, True])   # inter tables: chunks may predict
    codec = VitokCodec(tok, tables)
    corpus = [codec.encode(frames[:5], info.fps), codec.encode(frames, info.fps, tokens=4),
              codec.encode(frames, info.fps, step=2.0), codec.encode(np.concatenate([frames[:8]] * 2), info.fps)]
    corpus.append(as_version_1(corpus[1]))
    return codec, corpus


def run(seconds: float, seed: int = 0, decode: bool = True, pixels: bool = False,
        log: Callable[[str], None] = print) -> dict[str, int]:
    """Mutate and check streams for ``seconds``; raise FuzzFailure (with the mutant saved) on the first failure."""
    codec, corpus = make_corpus(seed)
    layouts = [layout(d) for d in corpus]
    rng = random.Random(seed)
    counts: dict[str, int] = {"ok": 0, "rejected": 0}
    per_mutator: dict[str, int] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        i = rng.randrange(len(corpus))
        name, mutant = mutate(corpus[i], rng, layouts[i])
        try:
            outcome = check(mutant, codec if decode else None, pixels=pixels)
        except FuzzFailure as e:
            path = f"vtok-fuzz-failure-{seed}.vtok"
            with open(path, "wb") as f:
                f.write(mutant)
            raise FuzzFailure(f"{name}: {e} (mutant saved to {path})") from e
        counts[outcome] += 1
        per_mutator[name] = per_mutator.get(name, 0) + 1
    log(f"fuzz: {sum(counts.values())} mutants in {seconds:g} s: {counts['ok']} decoded, "
        f"{counts['rejected']} rejected with BitstreamError; per mutation: {per_mutator}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vitok.codecs.fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parse-only", action="store_true", help="only parse the container (no entropy decoding)")
    p.add_argument("--pixels", action="store_true", help="also run the neural decoder on what decodes")
    args = p.parse_args(argv)
    try:
        run(args.seconds, args.seed, decode=not args.parse_only, pixels=args.pixels)
    except FuzzFailure as e:
        print(f"fuzz: FAILURE: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
