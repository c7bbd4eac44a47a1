"""Codec throughput benchmark: encode/decode frames per second and peak memory of each codec on one clip.

All codecs run on the same frames, one after another. A codec with a model loads it first, measured on its own
(``load_peak_mb``); memory is then the peak growth of resident memory over the first encode and the first decode
(what one call costs, first-call allocation included, freed memory handed back before each: ``PeakMemory``); with
``isolate`` each codec runs in a fresh process, so no memory left over by an earlier codec is reused and uncounted.
``threads`` sets torch's thread count and the classical codecs' (their encoders' and decoders') alike. Times are the
best of ``repeat`` rounds after that first, untimed, round. x264 at preset medium (CRF 23, its B-frames) is always the
first row: the reference line that other rows are read against.
"""
from __future__ import annotations

import inspect
import time
from fractions import Fraction
from typing import Any, Mapping, Sequence

import numpy as np

from vitok.evaluation.errors import EvaluationError
from vitok.evaluation.memory import PeakMemory
from vitok.evaluation.metrics import psnr
from vitok.evaluation.rd import codec_name

REFERENCE = ("h264", {"crf": 23, "preset": "medium"})


def _get(codec: Any):
    if isinstance(codec, str):
        from vitok.codecs import get_codec

        return get_codec(codec)
    return codec


def _timed(call: Any, /, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``call(*args, **kwargs)`` and its wall-clock seconds."""
    t0 = time.perf_counter()
    out = call(*args, **kwargs)
    return out, time.perf_counter() - t0


def bench_one(codec: Any, frames: np.ndarray, fps: Fraction, op: Mapping[str, Any] | None = None, *,
              repeat: int = 1, warmup: bool = True) -> dict:
    """Benchmark one codec at one operating point; returns a row (fps, seconds, peak MiB, bytes, bpp, PSNR).
    ``bytes`` is what RD counts (`Codec.rate_bytes`: h264's elementary stream), ``file_bytes`` the file as written.

    Memory comes from the model's load (None without a model), then the first encode and decode; with ``warmup``
    that round is not timed. A codec given ``threads`` in ``op`` whose ``decode`` takes it too (the classical codecs) decodes with it."""
    obj = _get(codec)
    op = dict(op or {})
    takes_threads = "threads" in inspect.signature(obj.decode).parameters   # the classical codecs' decode
    dec = {"threads": op["threads"]} if "threads" in op and takes_threads else {}
    load, load_mb = getattr(obj, "load", None), None
    if load is not None:
        with PeakMemory() as load_mem:
            load()
        load_mb = load_mem.peak_mb
    with PeakMemory() as enc_mem:
        data, first_enc = _timed(obj.encode, frames, fps, **op)
    with PeakMemory() as dec_mem:
        (decoded, _), first_dec = _timed(obj.decode, data, **dec)
    enc_s, dec_s = ([], []) if warmup else ([first_enc], [first_dec])
    while len(enc_s) < max(1, repeat):
        data, seconds = _timed(obj.encode, frames, fps, **op)
        enc_s.append(seconds)
        (decoded, _), seconds = _timed(obj.decode, data, **dec)
        dec_s.append(seconds)
    t, h, w = frames.shape[:3]
    nbytes = obj.rate_bytes(data)
    return {"codec": codec_name(codec), "op": op, "frames": t, "width": w, "height": h,
            "encode_fps": t / min(enc_s), "decode_fps": t / min(dec_s), "encode_s": min(enc_s),
            "decode_s": min(dec_s), "load_peak_mb": load_mb,
            "encode_peak_mb": enc_mem.peak_mb, "decode_peak_mb": dec_mem.peak_mb,
            "bytes": nbytes, "file_bytes": len(data), "bpp": nbytes * 8 / (t * h * w),
            "psnr": psnr(frames, np.asarray(decoded))}


def _bench_in_child(name: str, frames: np.ndarray, fps: Fraction, op: dict, repeat: int, warmup: bool,
                    threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    return bench_one(name, frames, fps, op, repeat=repeat, warmup=warmup)


def _child_main(send: Any, *args: Any) -> None:
    """The spawned process: ``(True, row)`` or ``(False, exception)`` back through ``send``."""
    try:
        send.send((True, _bench_in_child(*args)))
    except BaseException as e:  # noqa: BLE001 - the parent raises it
        send.send((False, e))


def _bench_isolated(name: str, frames: np.ndarray, fps: Fraction, op: dict, repeat: int, warmup: bool) -> dict:
    """``bench_one`` in a fresh (spawned) process with this process's torch thread count. Ctrl-C or SIGTERM
    terminates it at once (not after its whole benchmark), and a process that dies (killed for memory, a crashed
    encoder) is an error, not a wait."""
    import multiprocessing

    import torch

    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send, name, frames, fps, op, repeat, warmup, torch.get_num_threads()),
                       daemon=True)
    proc.start()
    send.close()
    try:
        while not recv.poll(0.2):   # short waits: a signal's handler runs between them
            pass
        try:
            ok, value = recv.recv()
        except EOFError:   # the process ended without a word: its end of the pipe closed
            proc.join()
            raise EvaluationError(f"{name}: the benchmark process died (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join()
    if not ok:
        raise value
    return value


def _with_threads(codec: Any, op: dict, threads: int | None) -> dict:
    """``op`` with the coder thread count set to ``threads`` for codecs that take it (unless ``op`` sets it)."""
    if threads is None or "threads" not in (getattr(codec, "knobs", None) or ()):
        return op
    return {"threads": threads, **op}


def bench_codecs(codecs: Sequence[Any], frames: np.ndarray, fps: Fraction,
                 ops: Mapping[str, Mapping[str, Any]] | None = None, *, repeat: int = 1, warmup: bool = True,
                 reference: bool = True, progress: bool = False, isolate: bool = False,
                 threads: int | None = None) -> list[dict]:
    """Rows for the x264-medium reference (first, ``reference: True``) and each codec (``ops``: knobs by name).

    A plain ``h264`` with no knobs of its own is the reference itself and is not run twice. With ``isolate`` every
    row is measured in a fresh process that resolves the codec again by name (so codecs must be given by name).
    ``threads``: torch's thread count (set here, for the rows measured here and in fresh processes) and the
    classical codecs' (their ``threads`` knob, for encoder and decoder); None leaves both at their defaults. Each
    row records torch's count.
    """
    import torch
    from tqdm.auto import tqdm

    ops = dict(ops or {})
    if isolate and not all(isinstance(c, str) for c in codecs):
        raise ValueError("bench_codecs(isolate=True) needs every codec given by name")
    resolved = [_get(c) for c in codecs]  # unknown names and models fail here, before any clip is timed
    todo: list[tuple[Any, Any, dict, bool]] = []
    if reference:
        todo.append((REFERENCE[0], _get(REFERENCE[0]), dict(REFERENCE[1]), True))
    for spec, c in zip(codecs, resolved):
        op = dict(ops.get(codec_name(c), {}))
        if reference and codec_name(c) == REFERENCE[0] and (not op or op == REFERENCE[1]):
            continue
        todo.append((spec, c, op, False))
    if threads is not None:
        torch.set_num_threads(threads)
    rows = []
    # a bar on a terminal only (None: tqdm leaves it out when stderr is not one)
    bar = tqdm(todo, desc="bench", unit="codec", disable=None if progress else True, leave=False)
    for spec, c, op, is_ref in bar:
        run_op = _with_threads(c, op, threads)
        if isolate:
            row = _bench_isolated(spec, frames, fps, run_op, repeat, warmup)
        else:
            row = bench_one(c, frames, fps, run_op, repeat=repeat, warmup=warmup)
        rows.append({**row, "threads": torch.get_num_threads(), "reference": is_ref})
    return rows
