"""Latent extraction at scale: a folder of videos -> safetensors shards + one manifest, over torchrun ranks.

Plan: the video files under INPUT_DIR (as rank 0 lists them) are sorted by relative path and cut into shards of
``shard_size`` videos; shard ``i`` belongs to rank ``i % world_size``. Each video gives up to ``clips_per_video``
consecutive clips of ``frames`` frames from its start (a video shorter than ``frames`` gives one shorter clip),
resized to cover ``size`` and center-cropped to it. Clip ids are ``video_index * clips_per_video + j`` and do not
depend on the number of ranks. A rank removes a shard's old record, writes ``shard-XXXXX.safetensors`` and then its
record ``shard-XXXXX.json`` (both atomic; the record marks the shard done, so a rerun skips it while the model's
name, weights and config, the options, the input folder and each source's size and mtime are unchanged), then a
partial manifest ``manifest.rank-XXXXX.json``. A rank that (re)makes a shard first removes ``manifest.json``, so a
folder half way through a new extraction has none. After a barrier rank 0 merges the partials into ``manifest.json``
with per-channel latent mean/std over every present token. Files that cannot be read are listed under ``skipped``
with the reason (other errors, such as running out of memory, stop the run). Multi-node runs need INPUT_DIR and
SHARDS_DIR on a shared file system. The format of the files is described in ``vitok.data.shards``: this writes
format version 2, each shard's clips stored ragged (their tokens one after another, located by ``offset``, none
padded to the shard's longest clip); sets of version 1 (padded rows) still read with ``LatentShards``, and a rerun
over one is another extraction's folder (refused without ``-y``, replaced with it).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from vitok.data.atomic import atomic_path, save_safetensors, write_bytes_atomic
from vitok.data.convert import frames_to_tensor
from vitok.data.errors import VitokError
from vitok.data.io import VIDEO_EXTENSIONS
from vitok.data.shards import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, file_sha256, read_manifest
from vitok.limits import MAX_CHUNK_PIXELS

if TYPE_CHECKING:
    from vitok.latents import Latents

_SHARD_FILE = re.compile(r"shard-\d{5,}\.(?:safetensors|json)")  # a shard or its record, as shard_name() spells them
_OWN_FILE = re.compile(rf"{_SHARD_FILE.pattern}|manifest(?:\.rank-\d{{5,}})?\.json")
_TEMP_FILE = re.compile(rf"\.(?:{_OWN_FILE.pattern})\..+")  # what atomic_path names its temporaries


class ExtractError(VitokError):
    """Extraction cannot run: empty input folder, foreign shards in the output folder, bad options."""


class ExtractOptionError(ExtractError):
    """A bad option, input or output folder, found alike by every rank before any writes: under torchrun rank 0
    alone prints it (the command line skips ``all_ranks`` errors on other ranks), not one line per rank."""

    all_ranks = True


def list_videos(root: str | os.PathLike) -> list[Path]:
    """Video files under ``root`` (recursive, hidden names skipped), sorted by relative path: every rank agrees."""
    base = Path(root)
    if not base.is_dir():
        raise ExtractOptionError(f"{base}: input is not a folder")
    files = [p for p in base.rglob("*")
             if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
             and not any(part.startswith(".") for part in p.relative_to(base).parts)]
    return sorted(files, key=lambda p: p.relative_to(base).as_posix())


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def rank_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    """The shard indices rank ``rank`` owns: ``i % world_size == rank`` (disjoint, covering, balanced)."""
    return list(range(rank, num_shards, world_size))


def iter_clips(path: Path, frames: int, size: tuple[int, int] | None,
               clips_per_video: int) -> tuple[Fraction, Iterator[tuple[int, np.ndarray]]]:
    """The frame rate of ``path`` and its clips ``(start_frame, uint8 (T,H,W,3))``, decoded one at a time as the
    iterator advances, so a long video's clips are never all held: up to ``clips_per_video`` consecutive clips of
    ``frames`` frames from the start (a video shorter than ``frames`` gives one shorter clip, a shorter tail none).

    ``size`` = (H, W): the largest centred region with that aspect ratio, resized to it. An unreadable file raises
    VideoReadError, at once or (truncated part way) from the iterator.
    """
    from vitok.data.io import iter_video, probe_video

    info = probe_video(path)
    if size is None and info.width * info.height * frames > MAX_CHUNK_PIXELS:   # before a frame is decoded
        raise VitokError(f"{path}: clips of {frames} frames at its {info.width}x{info.height} are over the "
                         f"{MAX_CHUNK_PIXELS} pixel limit of one clip; give a --size to extract it at")
    fps = info.fps
    resize = (size[1], size[0]) if size is not None else None
    chunks = iter_video(path, chunk_frames=frames, num_frames=frames * clips_per_video, size=resize,
                        crop="center" if size is not None else None)
    return fps, _whole_clips(chunks, frames)


def _whole_clips(chunks: Iterator[np.ndarray], frames: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start_frame, chunk)`` of the first chunk and of each later one of ``frames`` frames (a short tail is no clip;
    the chunks are still read to their end, where a truncated file is found)."""
    for j, chunk in enumerate(chunks):
        if j == 0 or len(chunk) == frames:
            yield j * frames, chunk


def read_clips(path: Path, frames: int, size: tuple[int, int] | None,
               clips_per_video: int) -> tuple[list[tuple[int, np.ndarray]], Fraction]:
    """``iter_clips``'s clips all at once, and the frame rate: for a few short clips (tests, samples)."""
    fps, clips = iter_clips(path, frames, size, clips_per_video)
    return list(clips), fps


class _Stats:
    """Per-channel running count/mean/M2 in float64, mergeable across shards and ranks (Chan et al.)."""

    def __init__(self, channels: int, count: int = 0, mean: list[float] | None = None,
                 m2: list[float] | None = None) -> None:
        self.count = count
        self.mean = torch.tensor(mean, dtype=torch.float64) if mean else torch.zeros(channels, dtype=torch.float64)
        self.m2 = torch.tensor(m2, dtype=torch.float64) if m2 else torch.zeros(channels, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        """Fold in tokens ``x`` (n, C)."""
        if x.shape[0]:
            x = x.double()
            mean = x.mean(0)
            self.merge(_Stats(x.shape[1], x.shape[0], mean.tolist(), ((x - mean) ** 2).sum(0).tolist()))

    def merge(self, other: "_Stats") -> None:
        n = self.count + other.count
        if other.count == 0:
            return
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2 + delta ** 2 * (self.count * other.count / n)
        self.count = n

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    def summary(self) -> dict[str, Any]:
        std = (self.m2 / max(self.count, 1)).sqrt()
        return {"count": self.count, "mean": self.mean.tolist(), "std": std.tolist()}


def _encode(tok: Any, clips: list[np.ndarray], tokens: int | None, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode same-shape clips in one batch: (B, N, C) float32 and mask (B, N) bool, on the CPU. A 1D model held
    to `tokens` per unit keeps only those (N = units * tokens), not the zeroed rest (`make_latents` refills it)."""
    x = frames_to_tensor(np.stack(clips), device=device)
    with torch.inference_mode():
        lat = tok.encode(x, num_tokens=tokens)
    z = lat.z.float().cpu()
    if not bool(torch.isfinite(z).all()):   # said here, not later by the reader as a damaged shard
        raise ExtractError(f"model {tok.config.name} gave NaN or infinite latents (broken weights?); nothing written "
                           "for them")
    K = tok.max_tokens
    if K is not None and tokens is not None and tokens < K:
        B, N, C = z.shape
        z = z.reshape(B, N // K, K, C)[:, :, :tokens].reshape(B, -1, C)
        return z, torch.ones(z.shape[:2], dtype=torch.bool)
    mask = lat.mask.cpu() if lat.mask is not None else torch.ones(z.shape[:2], dtype=torch.bool)
    return z, mask


class _Unreadable(Exception):
    """A video file's own read error, kept apart from errors of encoding the clips already read from it."""


def _file_clips(path: Path, frames: int, size: tuple[int, int] | None,
                clips_per_video: int) -> Iterator[tuple[Fraction, int, np.ndarray]]:
    """``(fps, start_frame, clip)`` of each clip of ``path`` (``iter_clips``); its read errors come as _Unreadable."""
    try:
        fps, clips = iter_clips(path, frames, size, clips_per_video)
        for start, clip in clips:
            yield fps, start, clip
    except VitokError as e:   # the file is unreadable (corrupt, truncated, not a video, no frames); any other error
        raise _Unreadable(str(e)) from e   # (out of memory) is not the file's and must not mark it skipped


class _Batches:
    """Decoded clips encoded in same-shape batches as they come, holding at most ``batch_size`` of them whatever the
    mix of shapes (at native size each video has its own); ``latents`` maps clip id -> (z (N, C), mask (N,))."""

    def __init__(self, tok: Any, tokens: int | None, device: str, batch_size: int) -> None:
        self.tok, self.tokens, self.device, self.batch_size = tok, tokens, device, batch_size
        self.pending: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
        self.latents: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, clip_id: int, clip: np.ndarray) -> None:
        """Queue a clip; with a batch's worth held, encode the largest same-shape group."""
        self.pending.setdefault(clip.shape, []).append((clip_id, clip))
        if sum(map(len, self.pending.values())) >= self.batch_size:
            self.flush(max(self.pending, key=lambda shape: len(self.pending[shape])))

    def flush(self, shape: tuple[int, ...]) -> None:
        """Encode the queued clips of ``shape``."""
        group = self.pending.pop(shape, [])
        if group:
            z, mask = _encode(self.tok, [clip for _, clip in group], self.tokens, self.device)
            for (clip_id, _), zi, mi in zip(group, z, mask):
                self.latents[clip_id] = (zi, mi)

    def flush_all(self) -> None:
        """Encode every queued clip (the shard's videos are all read)."""
        for shape in list(self.pending):
            self.flush(shape)

    def drop(self, clip_ids: set[int]) -> None:
        """Unqueue these clips (a file found unreadable part way: not to be encoded; latents of its clips already
        encoded are left unused, as the shard's rows come from its clip list)."""
        groups = {shape: [item for item in group if item[0] not in clip_ids] for shape, group in self.pending.items()}
        self.pending = {shape: group for shape, group in groups.items() if group}


def extract_shard(tok: Any, input_dir: Path, files: list[Path], first_video: int, job: dict[str, Any],
                  device: str = "cpu") -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Encode one shard's videos; returns its tensors (None when every file was skipped) and its record."""
    frames, tokens, per_video = job["frames"], job["tokens"], job["clips_per_video"]
    size = tuple(job["size"]) if job["size"] else None
    clips: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    batches = _Batches(tok, tokens, device, job["batch_size"])
    for k, path in enumerate(files):
        rel, first_row = path.relative_to(input_dir).as_posix(), len(clips)
        try:
            for j, (fps, start, arr) in enumerate(_file_clips(path, frames, size, per_video)):
                cid = (first_video + k) * per_video + j
                clips.append({"id": cid, "source": rel, "clip": j, "start": start,
                              "frames": int(arr.shape[0]), "height": int(arr.shape[1]), "width": int(arr.shape[2]),
                              "fps": str(fps), "num_tokens": tokens})
                batches.add(cid, arr)
        except _Unreadable as e:   # a file is all skipped, never some of its clips kept
            batches.drop({c["id"] for c in clips[first_row:]})
            del clips[first_row:]
            skipped.append({"source": rel, "reason": str(e)})
    batches.flush_all()
    tensors, stats = _shard_tensors(clips, batches.latents, tok.latent_channels)
    record = {"job": _job_key(job), "clips": clips, "skipped": skipped, "stats": stats.state()}
    return tensors, record


def _shard_tensors(clips: list[dict[str, Any]], latents: dict[int, tuple[torch.Tensor, torch.Tensor]],
                   channels: int) -> tuple[dict[str, torch.Tensor] | None, _Stats]:
    """The shard's ragged tensors (None without clips) and its token statistics; fills each clip's row and counts.

    The clips' tokens lie one after another (``z`` (T, C), ``mask`` (T,)), row ``r`` at ``offset[r]:offset[r+1]``:
    no clip is padded to the shard's longest, which at native size with mixed resolutions stored many times the
    real tokens."""
    stats = _Stats(channels)
    if not clips:
        return None, stats
    zs, masks = [], []
    for row, clip in enumerate(clips):
        zi, mi = latents[clip["id"]]
        zs.append(zi)
        masks.append(mi.bool())
        clip.update(row=row, tokens=int(zi.shape[0]), present=int(mi.sum()))
        stats.add(zi[mi])
    lengths = torch.tensor([c["tokens"] for c in clips], dtype=torch.int64)
    offset = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    tensors = {"z": torch.cat(zs).float().contiguous(), "mask": torch.cat(masks).contiguous(), "offset": offset,
               "clip": torch.tensor([c["id"] for c in clips], dtype=torch.int64), "length": lengths}
    return tensors, stats


def _job_key(job: dict[str, Any]) -> dict[str, Any]:
    """The options that decide a shard's content (batch size does not)."""
    return {k: v for k, v in job.items() if k != "batch_size"}


def _params(job: dict[str, Any]) -> dict[str, Any]:
    """The extraction options the manifest and each shard's metadata record."""
    return {k: job[k] for k in ("frames", "size", "tokens", "clips_per_video", "shard_size")}


def _sources(input_dir: Path, files: list[Path]) -> list[str]:
    """The files' paths relative to the input folder, as shard records name their sources."""
    return [p.relative_to(input_dir).as_posix() for p in files]


def _shard_inputs(input_dir: Path, files: list[Path]) -> dict[str, Any]:
    """What a shard was made from: the input folder, its sources' relative paths and their (size, mtime_ns).

    Size and mtime, not a content hash: hashing every video on each resume would read the whole data set again.
    """
    stats = [p.stat() for p in files]
    return {"input_dir": str(input_dir), "sources": _sources(input_dir, files),
            "stamps": [[st.st_size, st.st_mtime_ns] for st in stats]}


def _read_record(path: Path) -> dict[str, Any] | None:
    """The shard record at ``path`` when it is one this code wrote, else None."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    is_ours = isinstance(record, dict) and isinstance(record.get("job"), dict) \
        and record["job"].get("format") == FORMAT_NAME
    return record if is_ours else None


def _shard_done(out_dir: Path, index: int, job: dict[str, Any], inputs: dict[str, Any],
                overwrite: bool) -> dict | None:
    """The record of a finished shard of this same job and unchanged inputs, or None when it must be (re)made;
    a record of another job, of changed inputs or not this code's is an ExtractError without ``overwrite``."""
    rec_path = out_dir / f"{shard_name(index)}.json"
    if not rec_path.is_file():
        return None
    record = _read_record(rec_path)
    if record is None:
        why = "not a vitok shard record"
    elif record["job"].get("version") != job["version"]:   # a version-1 (padded) set reads, but is not resumed
        why = (f"shard from a different extraction (shard format version {record['job'].get('version')}; "
               f"this vitok writes {job['version']})")
    elif record["job"] != _job_key(job):
        why = "shard from a different extraction (model or options differ)"
    elif any(record.get(k) != v for k, v in inputs.items()):
        why = "shard from a different extraction (input folder or input files differ)"
    else:
        return None if record.get("file") and not (out_dir / record["file"]).is_file() else record
    if overwrite:
        return None
    raise ExtractError(f"{rec_path}: {why}; use another output folder or -y to replace it")


def _is_own(path: Path) -> bool:
    """Whether ``path`` is a file this code wrote: named as it names them *and* marked as a latent shard set's
    (a shard's metadata, a record's or manifest's format); a user's file that only shares a name is not."""
    if not (_OWN_FILE.fullmatch(path.name) and path.is_file()):
        return False
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return (f.metadata() or {}).get("format") == FORMAT_NAME
        except Exception:  # noqa: BLE001 - not readable as safetensors: not ours
            return False
    if _SHARD_FILE.fullmatch(path.name):
        return _read_record(path) is not None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and FORMAT_NAME in (doc.get("format"), (doc.get("job") or {}).get("format"))


def _check_out_dir(out_dir: Path, input_dir: Path, overwrite: bool) -> None:
    """Refuse an output folder that is the input folder or inside it, that is not a folder, or (without
    ``overwrite``) that holds files other than a shard set's, those named like one's included."""
    if out_dir.resolve().is_relative_to(input_dir):
        raise ExtractOptionError(f"output folder {out_dir} is the input folder or inside it; choose another folder")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExtractOptionError(f"output {out_dir} is not a folder")
    if overwrite:
        return
    foreign = sorted(e.name for e in out_dir.iterdir() if not (_TEMP_FILE.fullmatch(e.name) or _is_own(e)))
    if foreign:
        raise ExtractOptionError(f"output folder {out_dir} holds other files ({', '.join(foreign[:3])}"
                                 f"{', ...' if len(foreign) > 3 else ''}); choose another folder, or -y to write "
                                 "the shards beside them")


def _remove_temporaries(out_dir: Path) -> None:
    """Remove the temporaries of shards and manifests that a killed run left in ``out_dir``."""
    for entry in out_dir.iterdir():
        if _TEMP_FILE.fullmatch(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def distributed_context(timeout_s: float = 86400.0) -> Iterator[tuple[int, int]]:
    """``(rank, world_size)`` from torchrun's environment; joins a gloo process group when WORLD_SIZE > 1.

    Gloo is used whatever the compute device: ranks only meet at one barrier, and the long timeout lets slow
    ranks finish their shards. The group is torn down on exit if this call created it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1
        return
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        if created:
            dist.destroy_process_group()


def _rank0_files(files: list[Path], world: int) -> list[Path]:
    """Rank 0's listing of the input folder on every rank: ranks that listed it apart could see a file that
    arrived in between and plan different shards (clips duplicated or lost)."""
    if world <= 1:
        return files
    import torch.distributed as dist

    shared = [[str(p) for p in files]]
    dist.broadcast_object_list(shared, src=0)
    return [Path(p) for p in shared[0]]


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _resolve_device(device: str) -> str:
    """Under torchrun, plain ``cuda`` means this rank's GPU (LOCAL_RANK, wrapping when ranks outnumber GPUs)."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK']) % max(1, torch.cuda.device_count())}"
    return device


def _config_hash(tok: Any) -> str:
    """sha256 (16 hex digits) of the model's config as canonical JSON: an edited config.json (tile size, clip
    frames, ...) changes what encode gives under the same name and weights. The latent statistics are left out:
    stored for ``Latents.normalized``, they do not change the latents extracted."""
    return tok.config.digest(without=("latent_mean", "latent_std"))[:16]


def _model_source(model: str) -> str:
    """What ``vitok.load`` should be given later: an absolute folder path, or the registry name."""
    from vitok.registry import local_model_dir

    local = local_model_dir(model)
    return str(local.resolve()) if local is not None else model


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"WxH"`` (width first, as ``vitok encode --size``) or ``"S"`` -> (H, W)."""
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ExtractOptionError(f"--size {text!r}: expected WxH (e.g. 128x128) or one number")
    return parts[1], parts[0]


def extract_latents(input_dir: str | os.PathLike, out_dir: str | os.PathLike, model: str, *,
                    frames: int | None = None, size: tuple[int, int] | None = None, tokens: int | None = None,
                    clips_per_video: int = 1, shard_size: int = 64, batch_size: int = 8, device: str = "cpu",
                    overwrite: bool = False, tok: Any = None,
                    on_shard: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Encode every video of ``input_dir`` into shards under ``out_dir``; run alone or under torchrun.

    Returns this rank's summary (clips and shards made or reused, seconds, clips/s); rank 0's also holds
    ``manifest`` (its path). ``tok`` may pass an already loaded frozen tokenizer (tests); otherwise
    ``vitok.load(model)`` loads it. ``on_shard(index, record)`` is called after each shard this rank finishes.
    """
    import vitok

    if shard_size < 1 or batch_size < 1 or clips_per_video < 1:
        raise ExtractOptionError("--shard-size, --batch-size and --clips-per-video must be >= 1")
    input_dir, out_dir = Path(input_dir).resolve(), Path(out_dir)
    files = list_videos(input_dir)
    if not files:
        raise ExtractOptionError(f"{input_dir}: no video files found")
    _check_out_dir(out_dir, input_dir, overwrite)
    device = _resolve_device(device)
    with distributed_context() as (rank, world):
        t_load = time.perf_counter()
        tok = tok if tok is not None else vitok.load(model, device=device, frozen=True)
        load_s = time.perf_counter() - t_load
        if tokens is not None and tok.max_tokens is None:
            raise ExtractOptionError(f"--tokens is only for 1D models; {tok.config.name} is a {tok.config.kind} "
                                     "model")
        if tokens is not None and not 1 <= tokens <= tok.max_tokens:
            raise ExtractOptionError(f"--tokens {tokens}: {tok.config.name} takes 1 to {tok.max_tokens} tokens "
                                     "per unit")
        job = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": tok.config.name,
               "weights_hash": tok.weights_hash, "config_hash": _config_hash(tok),
               "frames": int(frames or tok.clip_frames), "size": list(size) if size else None, "tokens": tokens,
               "clips_per_video": clips_per_video, "shard_size": shard_size, "batch_size": batch_size}
        metadata = {"format": FORMAT_NAME, "weights_hash": tok.weights_hash, "config_hash": job["config_hash"],
                    "params": json.dumps(_params(job))}
        files = _rank0_files(files, world)
        plan = [files[i:i + shard_size] for i in range(0, len(files), shard_size)]
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            _remove_temporaries(out_dir)
        _barrier(world)  # no rank writes before rank 0 has cleared what a killed run left
        t0 = time.perf_counter()
        records, made, made_clips = [], 0, 0
        for index in rank_shards(len(plan), rank, world):
            inputs = _shard_inputs(input_dir, plan[index])
            record = _shard_done(out_dir, index, job, inputs, overwrite)
            if record is None:
                (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # the folder no longer holds that manifest's set
                # nor a record of the shard about to be replaced: killed between the two writes, a rerun of that
                # record's extraction would otherwise take this run's shard as its own
                (out_dir / f"{shard_name(index)}.json").unlink(missing_ok=True)
                t_shard = time.perf_counter()
                tensors, record = extract_shard(tok, input_dir, plan[index], index * shard_size, job, device)
                record.update(inputs, index=index, rank=rank, file=None, seconds=time.perf_counter() - t_shard)
                for clip in record["clips"]:
                    clip["shard"] = f"{shard_name(index)}.safetensors"
                if tensors is not None:
                    record["file"] = f"{shard_name(index)}.safetensors"
                    with atomic_path(out_dir / record["file"]) as tmp:
                        save_safetensors(tensors, tmp, metadata={**metadata, "shard": str(index)})
                        record["sha256"] = file_sha256(tmp)   # what `vitok latents verify` checks the file against
                write_bytes_atomic(out_dir / f"{shard_name(index)}.json", json.dumps(record).encode())
                made, made_clips = made + 1, made_clips + len(record["clips"])
            records.append(record)
            if on_shard is not None:
                on_shard(index, record)
        partial = {"rank": rank, "world_size": world, "job": _job_key(job), "clips_made": made_clips,
                   "shards": records}
        write_bytes_atomic(out_dir / f"manifest.rank-{rank:05d}.json", json.dumps(partial).encode())
        work_s = time.perf_counter() - t0
        _barrier(world)
        wall_s = time.perf_counter() - t0
        summary = {"rank": rank, "world_size": world, "shards_made": made, "shards_reused": len(records) - made,
                   "clips_made": made_clips, "load_seconds": load_s, "work_seconds": work_s}
        if rank == 0:
            manifest = merge_manifests(out_dir, world, plan, job, input_dir, model, tok, overwrite)
            wall_s = time.perf_counter() - t0
            summary.update(manifest=str(out_dir / MANIFEST_NAME), clips=manifest["num_clips"],
                           skipped=len(manifest["skipped"]), shards=len(manifest["shards"]),
                           clips_made_total=sum(r["clips_made"] for r in manifest["ranks"]))
            summary["clips_per_s"] = summary["clips_made_total"] / wall_s if wall_s > 0 else float("nan")
        summary["wall_seconds"] = wall_s
        _barrier(world)
    return summary


def merge_manifests(out_dir: Path, world: int, plan: list[list[Path]], job: dict[str, Any], input_dir: Path,
                    model: str, tok: Any, overwrite: bool = False) -> dict[str, Any]:
    """Rank 0: fold the per-rank partial manifests into ``manifest.json`` (clips sorted by id, global stats);
    every shard must hold the videos rank 0's ``plan`` gives it."""
    num_shards = len(plan)
    shards: dict[int, dict[str, Any]] = {}
    ranks = []
    for r in range(world):
        path = out_dir / f"manifest.rank-{r:05d}.json"
        partial = json.loads(path.read_text())
        for record in partial["shards"]:
            if record["index"] in shards:
                raise ExtractError(f"{path}: shard {record['index']} written by two ranks")
            shards[record["index"]] = record
        ranks.append({"rank": r, "shards": len(partial["shards"]), "clips_made": partial["clips_made"]})
    missing = sorted(set(range(num_shards)) - set(shards))
    if missing:
        raise ExtractError(f"{out_dir}: shards {missing[:5]} missing after all ranks finished")
    for index in range(num_shards):
        if shards[index]["sources"] != _sources(input_dir, plan[index]):
            raise ExtractError(f"{out_dir}: {shard_name(index)} holds other videos than planned (the input folder "
                               "changed during the run?); run again")
    stats = _Stats(tok.latent_channels)
    clips, skipped, shard_list = [], [], []
    for index in range(num_shards):
        record = shards[index]
        stats.merge(_Stats(tok.latent_channels, **record["stats"]))
        clips.extend(record["clips"])
        skipped.extend(record["skipped"])
        shard_list.append({"index": index, "file": record["file"], "rank": record["rank"],
                           "num_clips": len(record["clips"]), "sources": record["sources"],
                           "sha256": record.get("sha256")})
    if not clips:  # every file unreadable: a manifest of nothing would only fail later, in training
        _remove_clipless_set(out_dir, num_shards)
        first = f"; first: {skipped[0]['source']}: {' '.join(skipped[0]['reason'].split())}" if skipped else ""
        raise ExtractError(f"{input_dir}: no clip could be read ({len(skipped)} files skipped{first})")
    clips.sort(key=lambda c: c["id"])
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "input_dir": str(input_dir),
        "model": {"name": tok.config.name, "source": _model_source(model), "weights_hash": tok.weights_hash,
                  "config_hash": job["config_hash"], "kind": getattr(tok.config, "kind", None)},
        "latent_channels": tok.latent_channels,
        "params": _params(job),
        "world_size": world, "ranks": ranks,
        "num_clips": len(clips), "shards": shard_list, "clips": clips, "skipped": skipped,
        "stats": stats.summary(),
    }
    write_bytes_atomic(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=1).encode())
    _remove_partial_manifests(out_dir)
    if overwrite:  # shards (and their records) of an earlier extraction, never files this code did not write
        keep = {f"{shard_name(i)}.json" for i in range(num_shards)} | {r["file"] for r in shards.values()}
        for stale in out_dir.iterdir():
            if _SHARD_FILE.fullmatch(stale.name) and stale.name not in keep and _is_own(stale):
                stale.unlink()
    return manifest


def _remove_partial_manifests(out_dir: Path) -> None:
    """Remove every rank's partial manifest, those of an earlier run with more ranks too: merged, or of no use."""
    for partial in out_dir.glob("manifest.rank-*.json"):
        partial.unlink(missing_ok=True)


def _remove_clipless_set(out_dir: Path, num_shards: int) -> None:
    """Remove what a run that read no clip wrote (shard records without a shard file, partial manifests): left
    behind, they would refuse the rerun after the input is fixed as a different extraction's."""
    for index in range(num_shards):
        (out_dir / f"{shard_name(index)}.json").unlink(missing_ok=True)
    _remove_partial_manifests(out_dir)


def latent_stats(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest's per-channel statistics plus a short description of the set (for ``vitok latents stats``)."""
    manifest = read_manifest(root)
    model = manifest["model"]
    return {"shards_dir": str(root), "model": model["name"], "weights_hash": model["weights_hash"],
            "clips": manifest["num_clips"], "skipped": len(manifest["skipped"]),
            "latent_channels": manifest["latent_channels"], **manifest["stats"]}


def latents_from_batch(tok: Any, batch: dict[str, Any], mean: torch.Tensor | None = None,
                       std: torch.Tensor | None = None) -> "Latents":
    """A ``LatentShards`` batch (from ``collate_latents``) -> ``vitok.Latents`` for ``tok.decode``, in one call.

    All clips of the batch must share one geometry (frames, height, width, token count). Pass the manifest's
    ``mean``/``std`` (``LatentShards.mean``/``.std``) when the batch was read with ``normalize=True``, and only
    then: a batch that says how it was read (``normalized``) is checked, since either mistake decodes garbage.
    """
    geometry = {}
    for key in ("frames", "height", "width", "num_tokens"):
        values = torch.as_tensor(batch[key]).flatten().unique()
        if values.numel() != 1:
            raise ValueError(f"latents_from_batch: clips of one batch differ in {key} ({values.tolist()})")
        geometry[key] = int(values[0])
    if (mean is None) != (std is None):
        raise ValueError("latents_from_batch: pass both mean and std (LatentShards.mean, .std) or neither")
    if "normalized" in batch:
        read = torch.as_tensor(batch["normalized"]).flatten().unique().tolist()
        if len(read) != 1:
            raise ValueError("latents_from_batch: the batch mixes normalized and raw clips")
        if read[0] and std is None:
            raise ValueError("latents_from_batch: the batch was read with normalize=True; pass the set's mean and "
                             "std (LatentShards.mean, .std) to undo it")
        if not read[0] and std is not None:
            raise ValueError("latents_from_batch: the batch was read without normalize=True; do not pass mean/std")
    z = batch["z"]
    if std is not None:
        z = z * std.to(z) + mean.to(z)
    k, mask = geometry["num_tokens"], batch["mask"]
    return tok.make_latents(z, geometry["frames"], geometry["height"], geometry["width"],
                            num_tokens=None if k < 0 else k, mask=None if bool(mask.all()) else mask)
