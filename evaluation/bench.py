"""Codec throughput benchmark: encode/decode frames per second and peak memory of each codec on one clip.

All codecs run on the same frames in the same process, one after another, after an untimed warm-up round (model
loading, first-call allocation). Times are the best of ``repeat`` rounds. x264 at preset medium (CRF 23, no
B-frames) is always the first row: the reference line that other rows are read against.
"""
from __future__ import annotations

import time
from fractions import Fraction
from typing import Any, Mapping, Sequence

import numpy as np

from vitok.evaluation.memory import PeakMemory
from vitok.evaluation.metrics import psnr
from vitok.evaluation.rd import codec_name

REFERENCE = ("h264", {"crf": 23, "preset": "medium"})


def _get(codec: Any):
    if isinstance(codec, str):
        from vitok.codecs import get_codec

        return get_codec(codec)
    return codec


def bench_one(codec: Any, frames: np.ndarray, fps: Fraction, op: Mapping[str, Any] | None = None, *,
              repeat: int = 1, warmup: bool = True) -> dict:
    """Benchmark one codec at one operating point; returns a row (fps, seconds, peak MiB, bytes, bpp, PSNR)."""
    obj = _get(codec)
    op = dict(op or {})
    if warmup:
        obj.decode(obj.encode(frames, fps, **op))
    enc_s, dec_s, enc_mb, dec_mb = [], [], 0.0, 0.0
    for _ in range(max(1, repeat)):
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            data = obj.encode(frames, fps, **op)
            enc_s.append(time.perf_counter() - t0)
        enc_mb = max(enc_mb, mem.peak_mb)
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            decoded, _ = obj.decode(data)
            dec_s.append(time.perf_counter() - t0)
        dec_mb = max(dec_mb, mem.peak_mb)
    t, h, w = frames.shape[:3]
    return {"codec": codec_name(codec), "op": op, "frames": t, "width": w, "height": h,
            "encode_fps": t / min(enc_s), "decode_fps": t / min(dec_s), "encode_s": min(enc_s),
            "decode_s": min(dec_s), "encode_peak_mb": enc_mb, "decode_peak_mb": dec_mb,
            "bytes": len(data), "bpp": len(data) * 8 / (t * h * w), "psnr": psnr(frames, np.asarray(decoded))}


def bench_codecs(codecs: Sequence[Any], frames: np.ndarray, fps: Fraction,
                 ops: Mapping[str, Mapping[str, Any]] | None = None, *, repeat: int = 1, warmup: bool = True,
                 reference: bool = True, progress: bool = False) -> list[dict]:
    """Rows for the x264-medium reference (first, ``reference: True``) and each codec (``ops``: knobs by name).

    A plain ``h264`` with no knobs of its own is the reference itself and is not run twice.
    """
    from tqdm.auto import tqdm

    ops = dict(ops or {})
    resolved = [_get(c) for c in codecs]  # unknown names and models fail here, before any clip is timed
    todo: list[tuple[Any, dict, bool]] = [(REFERENCE[0], dict(REFERENCE[1]), True)] if reference else []
    for c in resolved:
        op = dict(ops.get(codec_name(c), {}))
        if reference and codec_name(c) == REFERENCE[0] and (not op or op == REFERENCE[1]):
            continue
        todo.append((c, op, False))
    rows = []
    for c, op, is_ref in tqdm(todo, desc="bench", unit="codec", disable=not progress, leave=False):
        rows.append({**bench_one(c, frames, fps, op, repeat=repeat, warmup=warmup), "reference": is_ref})
    return rows
