"""Rate-distortion sweeps: encode and decode every clip with every codec at every operating point, and measure.

``rd_sweep`` returns one record (a flat dict) per (clip, codec, operating point):

=============  ====================================================================================
clip, codec    clip name and codec name (``h264``, ``vitok:NAME``); ``op`` is the knob dict used
bytes          ``codec.rate_bytes``: elementary stream for classical codecs, whole .vtok file for vitok;
               ``file_bytes`` the file as written (mp4 included), ``stream_bytes`` the codec payload
bpp, kbps      ``bytes * 8 / (frames * width * height)`` and ``bytes * 8 / duration / 1000``
psnr ... lpips per-frame means (see ``vitok.evaluation.metrics``); ``None`` = not applicable/unavailable
tokens         latent tokens coded in the clip (vitok codecs; ``None`` for classical); ``tokens_per_s`` per
               second of video; ``tokens_per_chunk`` (1D models) tokens per unit kept in each chunk (a list,
               one per tile, where rate control chose per tile)
encode_s ...   wall-clock encode and decode seconds; ``peak_mem_mb`` peak extra memory of encode+decode
frames ...     ``frames, width, height, fps`` of the clip; ``frame``/``ref_frame`` PNG paths (relative to cache)
key            the cache key of the record
=============  ====================================================================================

Work runs in ``workers`` spawned processes (one job per record; a process keeps its codecs and last clip loaded).
With ``cache_dir``, each finished record is appended to ``cache_dir/records.jsonl`` and a rerun skips records
already there (keyed by clip source and signature, codec name and model weights, operating point and metrics), and
the middle frame of every decoded clip is kept as a PNG under ``cache_dir/frames`` for side-by-side figures.
Timings and memory are per process: with several workers on few cores they include contention.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from vitok.data.errors import VitokError
from vitok.evaluation.clips import Clip, resolve_clips
from vitok.evaluation.errors import EvaluationError
from vitok.evaluation.memory import PeakMemory
from vitok.evaluation.metrics import METRICS, compute_metrics, lpips_available

CACHE_FILE = "records.jsonl"
FRESH_FILE = "records.fresh.jsonl"   # a fresh sweep's records, until they replace the cache
FRAMES_DIR = "frames"


@dataclass
class _Job:
    clip: Clip
    codec: Any  # a codec name, or a Codec object (in-process runs only)
    op: dict
    key: str
    metrics: tuple[str, ...]
    max_frames: int | None
    cache_dir: str | None


def codec_name(codec: Any) -> str:
    """The registry name of a codec given by name or as an object."""
    return codec if isinstance(codec, str) else str(getattr(codec, "name", type(codec).__name__))


def _ops_for(codec: Any, obj: Any, operating_points: Any) -> list[dict]:
    name = codec_name(codec)
    if operating_points is None:
        ops = obj.operating_points()
    elif isinstance(operating_points, Mapping):
        ops = operating_points.get(name)
        ops = obj.operating_points() if ops is None else ops
    else:
        ops = operating_points
    ops = list({json.dumps(op, sort_keys=True, default=str): dict(op) for op in ops}.values())  # drop repeats
    if not ops:
        raise EvaluationError(f"codec {name!r} has no operating points to sweep")
    return ops


def curve_name(codec: str, op: dict) -> str:
    """The curve a record belongs to: its codec's name, with ``+refineN`` for points whose tokens were refined by N
    steps (another encoder of the same decoder and streams)."""
    steps = op.get("refine")
    return f"{codec}+refine{steps}" if steps else codec


def codec_identity(codec: Any, op: dict | None = None) -> str:
    """What makes a codec's output change besides its name (``Codec.identity``: a vitok model's weights and entropy
    tables, a classical codec's FFmpeg build); "" for codec objects that do not say. A point refined (``refine``
    in ``op``) takes the refining codec's identity, which says how it refines."""
    steps = (op or {}).get("refine")
    if steps and hasattr(codec, "with_refinement"):
        codec = codec.with_refinement(steps)
    return getattr(codec, "identity", "")


def _point_identity(name: str, codec: Any, op: dict) -> str:
    """``codec_identity`` of one point of a sweep; a point it cannot make (a bad ``refine``) is named in the error."""
    try:
        return codec_identity(codec, op)
    except VitokError as e:
        raise EvaluationError(f"{name} {op}: {e}") from None


def record_key(clip: Clip, codec: str, op: dict, metrics: Sequence[str], max_frames: int | None,
               identity: str = "") -> str:
    """Cache key of one record: changes with the clip's name and content (``signature``; not where it lies, so a
    folder moved or copied elsewhere keeps its records), codec (name and ``codec_identity``), knobs, metrics and
    frame limit, so retraining a model in place does not reuse stale records."""
    blob = json.dumps([clip.name, clip.signature, codec, identity, op, sorted(metrics), max_frames],
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def read_json_lines(data: bytes) -> tuple[list, int]:
    """The JSON values of the lines of a ``.jsonl`` file, and how many non-blank lines were skipped because they
    are not JSON: torn by an interrupted sweep, or bytes that are not UTF-8 text."""
    values, skipped = [], 0
    for line in filter(bytes.strip, data.splitlines()):
        try:
            values.append(json.loads(line.decode()))
        except (UnicodeDecodeError, json.JSONDecodeError):
            skipped += 1
    return values, skipped


def load_cache(cache_dir: str | os.PathLike, name: str = CACHE_FILE) -> dict[str, dict]:
    """Records already finished in ``cache_dir`` (in its file ``name``) by key; lines that are not JSON (a torn last
    line of an interrupted run, undecodable bytes) are ignored."""
    path = Path(cache_dir) / name
    if not path.is_file():
        return {}
    records, _ = read_json_lines(path.read_bytes())
    # older records (no file_bytes) counted mp4 boxes: measured again
    return {rec["key"]: rec for rec in records if isinstance(rec, dict) and "key" in rec and "file_bytes" in rec}


def _append_cache(cache_dir: str | os.PathLike, record: dict, name: str = CACHE_FILE) -> None:
    path = Path(cache_dir) / name
    with open(path, "ab+") as f:
        torn = False                         # a last line cut by an interrupt: end it before appending
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        f.write((("\n" if torn else "") + json.dumps(record) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def fresh_cache(cache_dir: str | os.PathLike) -> Iterator[str]:
    """The cache file name for sweeps that measure their points again: over an existing cache, a file aside that
    replaces those points' records only when the block ends without error, so a failed or interrupted fresh run
    keeps the old records usable. The cache's other records (other codecs, clips or points) stay."""
    cache = Path(cache_dir) / CACHE_FILE
    if not cache.is_file():   # no records to keep: write the cache itself
        yield CACHE_FILE
        return
    aside = cache.with_name(FRESH_FILE)
    aside.unlink(missing_ok=True)   # left by a fresh run that was killed
    try:
        yield FRESH_FILE
    except BaseException:
        aside.unlink(missing_ok=True)
        raise
    measured = set(load_cache(cache_dir, FRESH_FILE))
    kept = [rec for key, rec in load_cache(cache_dir).items() if key not in measured]
    with open(aside, "ab") as f:   # the fresh records first in the file, then the others': one rename
        f.writelines((json.dumps(rec) + "\n").encode() for rec in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(aside, cache)


@contextmanager
def _cache_folder(cache_dir: Path | None) -> Iterator[None]:
    """Make the cache folder (and missing parents) for the block; if the block fails before a file landed in them,
    remove what it made, so a failed run leaves no empty output folder behind."""
    if cache_dir is None or cache_dir.is_dir():
        yield
        return
    top = cache_dir
    while not top.parent.exists():
        top = top.parent
    cache_dir.mkdir(parents=True)
    try:
        yield
    except BaseException:
        if not any(p.is_file() for p in top.rglob("*")):
            shutil.rmtree(top, ignore_errors=True)
        raise


# -- work done in the worker processes (or inline when workers == 1) -----------------------------------------
_codecs: dict[str, Any] = {}
_clip_cache: dict[str, tuple[np.ndarray, Fraction]] = {}


def _exit_on_term(signum: int, frame: Any) -> None:
    """A worker's SIGTERM: raise SystemExit once (atomic outputs clean up on the way out); a second one kills."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def _job_in_worker(job: _Job) -> dict:
    """``run_job`` in a pool worker: stopped by the parent (SystemExit from ``_exit_on_term``), the worker ends once
    the job has unwound, rather than report back and wait for more work."""
    try:
        return run_job(job)
    except SystemExit as e:
        os._exit(e.code if isinstance(e.code, int) else 1)


def _worker_init(threads: int) -> None:
    """Share the cores between workers; torch is not imported for codecs and metrics that do not need it.

    Workers ignore SIGINT: Ctrl-C reaches the terminal's whole process group, and a worker interrupted mid-job or
    inside the pool's queues (holding their locks) leaves the others and the parent waiting forever. The parent alone
    handles it, and stops the workers (see ``_execute``)."""
    import sys
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)   # the parent's stop: unwind, so a half-written output is removed

    warnings.filterwarnings("ignore", message="LPIPS unavailable")  # the parent process warns once
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _load_clip(job: _Job) -> tuple[np.ndarray, Fraction]:
    ident = f"{job.clip.source}|{job.clip.signature}|{job.max_frames}"
    if ident not in _clip_cache:
        _clip_cache.clear()  # keep one clip per process: jobs arrive grouped by clip
        _clip_cache[ident] = job.clip.load(job.max_frames)
    return _clip_cache[ident]


def _codec_obj(codec: Any):
    if not isinstance(codec, str):
        return codec
    if codec not in _codecs:
        from vitok.codecs import get_codec

        _codecs[codec] = get_codec(codec)  # unknown names raise CodecError (a VitokError) naming the codec
    return _codecs[codec]


def _save_png(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    from vitok.data.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(frame).save(tmp, format="PNG")


def _encode(codec: Any, frames: np.ndarray, fps: Fraction, op: dict) -> tuple[bytes, dict]:
    """Encode; for vitok codecs also count tokens: total coded, and per chunk the tokens per unit kept (a list, one
    per tile, where rate control chose per tile)."""
    if not hasattr(codec, "encode_with_stats"):
        return codec.encode(frames, fps, **op), {"tokens": None, "tokens_per_chunk": None}
    data, stats = codec.encode_with_stats(frames, fps, **op)
    per_chunk = None if any(k is None for k in stats.tokens) else \
        [list(map(int, k)) if isinstance(k, tuple) else int(k) for k in stats.tokens]
    return data, {"tokens": stats.coded_tokens, "tokens_per_chunk": per_chunk}


def run_job(job: _Job) -> dict:
    """Encode, decode and measure one (clip, codec, operating point); returns its record."""
    frames, fps = _load_clip(job)
    codec = _codec_obj(job.codec)
    try:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            data, tokens = _encode(codec, frames, fps, job.op)
            t1 = time.perf_counter()
            decoded, _ = codec.decode(data)
            t2 = time.perf_counter()
    except VitokError as e:  # say which point of the sweep failed; records finished so far stay cached
        raise EvaluationError(f"{job.clip.name} with {codec_name(job.codec)} {job.op}: {e}") from None
    decoded = np.asarray(decoded)
    if decoded.shape != frames.shape:
        raise EvaluationError(f"codec {codec_name(job.codec)} decoded {job.clip.name} to shape {decoded.shape}, "
                              f"expected {frames.shape}")
    t, h, w = frames.shape[:3]
    seconds = t / float(fps)
    rate = codec.rate_bytes(data)
    rec: dict[str, Any] = {
        "key": job.key, "clip": job.clip.name, "codec": curve_name(codec_name(job.codec), job.op), "op": job.op,
        "bytes": rate, "file_bytes": len(data), "stream_bytes": int(codec.stream_bytes(data)),
        "bpp": rate * 8 / (t * h * w), "kbps": rate * 8 / seconds / 1000,
    }
    rec.update({m: None for m in METRICS})
    rec.update(compute_metrics(frames, decoded, which=job.metrics))
    rec.update({
        **tokens, "tokens_per_s": None if tokens["tokens"] is None else tokens["tokens"] / seconds,
        "encode_s": t1 - t0, "decode_s": t2 - t1, "peak_mem_mb": mem.peak_mb,
        "frames": t, "width": w, "height": h, "fps": float(fps), "frame": None, "ref_frame": None,
    })
    if job.cache_dir is not None:
        mid = t // 2
        rec["frame"] = f"{FRAMES_DIR}/{job.key}.png"
        ref_id = hashlib.sha1(f"{job.clip.source}|{job.clip.signature}|{job.max_frames}".encode()).hexdigest()[:16]
        rec["ref_frame"] = f"{FRAMES_DIR}/ref_{ref_id}.png"
        _save_png(Path(job.cache_dir) / rec["frame"], decoded[mid])
        if not (Path(job.cache_dir) / rec["ref_frame"]).exists():
            _save_png(Path(job.cache_dir) / rec["ref_frame"], frames[mid])
    return rec


# -- the sweep --------------------------------------------------------------------------------------------------
def rd_sweep(clips: Iterable, codecs: Sequence, operating_points: Any = None, *, workers: int = 1,
             cache_dir: str | os.PathLike | None = None, cache_name: str = CACHE_FILE, progress: bool = True,
             metrics: Sequence[str] = METRICS, max_frames: int | None = None) -> list[dict]:
    """Run every (clip, codec, operating point) and return the records, ordered by clip, codec, point.

    ``clips``: specs for ``resolve_clips`` (files, folders, ``"eval"``, segment ids, ``(name, frames[, fps])``).
    ``codecs``: names for ``vitok.codecs.get_codec`` (or Codec objects when ``workers == 1``).
    ``operating_points``: ``None`` (each codec's own list), one list of knob dicts for every codec, or a dict
    ``{codec name: list}`` (codecs not in it use their own). ``max_frames`` truncates file clips. ``cache_name``: the
    file in ``cache_dir`` that records are resumed from and appended to (``fresh_cache`` gives one aside).
    """
    if not codecs:
        raise EvaluationError("no codecs given")
    clip_list = resolve_clips(list(clips))
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise EvaluationError(f"unknown metric {bad[0]!r}; choose from {', '.join(METRICS)}")
    if workers > 1 and not all(isinstance(c, str) for c in codecs):
        raise EvaluationError("parallel sweeps (workers > 1) need codecs given by name")
    _codecs.clear()   # codecs load afresh per sweep: a model saved again since the last sweep is read again
    objs = {codec_name(c): _codec_obj(c) for c in codecs}  # unknown names fail here, before any work
    # metrics as they can be measured now: a record made while LPIPS was unavailable is measured again once it is
    measured = [f"{m}:available" if m == "lpips" and lpips_available() else m for m in metrics]
    cache = load_cache(cache_dir, cache_name) if cache_dir is not None else {}
    cache_str = None if cache_dir is None else str(cache_dir)

    once = list({codec_name(c): c for c in codecs}.values())   # a codec named twice runs once
    # each codec's points with their identities, the same for every clip
    points = {codec_name(c): [(op, _point_identity(codec_name(c), objs[codec_name(c)], op))
                              for op in _ops_for(c, objs[codec_name(c)], operating_points)] for c in once}
    jobs: list[_Job] = []
    for clip in clip_list:
        for c in once:
            name = codec_name(c)
            for op, identity in points[name]:
                key = record_key(clip, name, op, measured, max_frames, identity)
                jobs.append(_Job(clip, c, op, key, metrics, max_frames, cache_str))
    todo = [j for j in jobs if j.key not in cache]
    done: dict[str, dict] = {j.key: cache[j.key] for j in jobs if j.key in cache}

    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), initial=len(done), desc="rd", unit="pt", disable=None if progress else True,
               leave=False)   # a bar on a terminal only (None: tqdm leaves it out when stderr is not one)
    try:
        with _cache_folder(None if cache_dir is None else Path(cache_dir)):
            for rec in _execute(todo, workers):
                done[rec["key"]] = rec
                if cache_dir is not None:
                    _append_cache(cache_dir, rec, cache_name)
                bar.update(1)
    finally:
        bar.close()
    return [done[j.key] for j in jobs]


def rate_control_ops(records: Sequence[dict], codec: str,
                     quantiles: Sequence[float] = (0.25, 0.5, 0.75)) -> list[dict]:
    """Rate-control operating points for a 1D vitok codec: ``{"psnr": target}`` at quantiles of the PSNRs its
    fixed-token points reached (rounded to 0.1 dB), so rate control is studied where the model actually works.
    Empty when the records hold no fixed-token (``tokens`` knob) points of ``codec``."""
    vals = [float(r["psnr"]) for r in records
            if r["codec"] == codec and "tokens" in (r.get("op") or {}) and r.get("psnr") is not None]
    if not vals:
        return []
    targets = sorted({round(float(np.quantile(vals, q)), 1) for q in quantiles})
    return [{"psnr": t} for t in targets]


def _execute(jobs: list[_Job], workers: int) -> Iterable[dict]:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield run_job(job)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_worker_init, initargs=(threads,))
    try:
        futures = [pool.submit(_job_in_worker, job) for job in jobs]
        for fut in as_completed(futures):
            yield fut.result()
    except BaseException:   # Ctrl-C, SIGTERM (KeyboardInterrupt in the CLI), a failed job, the consumer stopping
        _stop_pool(pool)    # no waiting for jobs in flight: records finished so far are already with the caller
        raise
    pool.shutdown(wait=True)


def _stop_pool(pool: Any, grace: float = 5.0) -> None:
    """Shut ``pool`` down without waiting and end its worker processes: pending jobs are cancelled, running ones
    terminated (killed if they have not ended within ``grace`` seconds), so an interrupted sweep ends at once."""
    procs = list((getattr(pool, "_processes", None) or {}).values())   # shutdown forgets them
    for proc in procs:   # first: a second Ctrl-C cutting this short leaves no worker at its job
        if proc.is_alive():
            proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
