"""Clips to evaluate: video files, folders of videos, in-memory arrays, and the bundled sample eval segments."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from vitok.evaluation.errors import EvaluationError

ARRAY_FPS = Fraction(30)  # default rate of in-memory clips: it only scales kbps and tokens/s
EVAL_ALL = "eval"


@dataclass
class Clip:
    """One clip of an RD sweep: ``name`` labels records; ``source`` is a file path or ``sample:<id>``/``array``.

    ``frames`` holds preloaded uint8 (T,H,W,3) frames (sample segments, arrays); files are read where the work
    runs. ``signature`` changes when the source changes (a file's size and content hash; an array's hash; a sample
    segment's shape and hash) and keys the record cache.
    """

    name: str
    source: str
    fps: Fraction = ARRAY_FPS
    frames: np.ndarray | None = field(default=None, repr=False)
    signature: str = ""

    def load(self, max_frames: int | None = None) -> tuple[np.ndarray, Fraction]:
        """``(frames, fps)``; at most ``max_frames`` frames from the start."""
        if self.frames is not None:
            return self.frames[:max_frames], self.fps
        from vitok.data import read_video

        frames, info = read_video(self.source, num_frames=max_frames)
        return frames, Fraction(info.fps)


def _file_clip(path: Path) -> Clip:
    from vitok.data import probe_video

    info = probe_video(path)  # fails early, with the file's name, when it is not a readable video
    # the content, not the mtime, says whether it changed (an edit that keeps size and mtime, as `touch -r` does,
    # must not hit the old records); the resolved path is where the work reads it
    return Clip(path.stem, str(path.resolve()), Fraction(info.fps), None, f"{path.stat().st_size}-{_file_digest(path)}")


def _sample_clips(spec: str) -> list[Clip] | None:
    """``eval`` -> every eval segment; a sample clip name -> its segments; ``clip:first-last`` -> that segment."""
    from vitok.data import SAMPLE_CLIPS, eval_segments, sample_info

    clip = spec.split(":")[0]
    if spec != EVAL_ALL and clip not in SAMPLE_CLIPS:
        return None
    segs = [(sid, f) for sid, f in eval_segments() if spec in (EVAL_ALL, sid, sid.split(":")[0])]
    if not segs:
        return None
    return [Clip(sid, f"sample:{sid}", Fraction(sample_info(sid.split(":")[0]).fps), frames,
                 f"sample-{frames.shape}-{_digest(frames)}") for sid, frames in segs]


def resolve_clips(specs: Iterable) -> list[Clip]:
    """Turn clip specs into ``Clip`` objects.

    A spec is a ``Clip``; a ``(name, frames)`` or ``(name, frames, fps)`` tuple; a video file; a folder (every
    video file directly inside, sorted); ``"eval"`` (all bundled eval segments), a sample clip name (its eval
    segments, 128x128 as ``vitok.data.eval_segments``) or a segment id such as ``carphone:086-102``. Array clips
    default to 30 fps. Raises ``EvaluationError`` for an empty list or a spec that is none of these, and
    ``VideoReadError`` for an unreadable file.
    """
    out: list[Clip] = []
    for spec in specs:
        if isinstance(spec, Clip):
            out.append(spec)
        elif isinstance(spec, tuple):
            name, frames, *rest = spec
            frames = np.asarray(frames)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
                raise EvaluationError(f"clip {name!r}: frames must be a non-empty uint8 (T,H,W,3) array")
            rate = Fraction(rest[0]) if rest else ARRAY_FPS
            out.append(Clip(str(name), "array", rate, frames, f"array-{frames.shape}-{_digest(frames)}"))
        else:
            path = Path(spec)
            if path.is_file():
                out.append(_file_clip(path))
            elif path.is_dir():
                out.extend(_file_clip(p) for p in _folder_videos(path))
            else:
                samples = _sample_clips(str(spec))
                if samples is None:
                    raise EvaluationError(f"clip not found: {spec} (not a file, a folder, 'eval', a sample "
                                          f"name or an eval segment id)")
                out.extend(samples)
    if not out:
        raise EvaluationError("no clips given")
    out = list({(c.name, c.source, c.signature): c for c in out}.values())  # a clip named twice runs once
    names = [c.name for c in out]
    for c in out:  # two files with the same stem in different folders: label them by path instead
        if names.count(c.name) > 1 and Path(c.source).is_file():
            c.name = c.source
    return out


def _digest(frames: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(frames).tobytes()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    """sha1 of a file's bytes, read in blocks (a video file is read whole by its encode anyway)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _folder_videos(path: Path) -> list[Path]:
    """The video files directly inside folder ``path``, sorted; an EvaluationError when there are none."""
    from vitok.data import VIDEO_EXTENSIONS

    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise EvaluationError(f"clip folder {path} holds no video files")
    return files


def load_clip(spec: str, max_frames: int | None = None) -> tuple[str, np.ndarray, Fraction]:
    """One clip's ``(name, frames, fps)`` for single-clip tools: a sample clip name means its whole file at native
    size, a folder its first video file (the others are not read); otherwise the first clip ``resolve_clips``
    finds. At most ``max_frames`` frames."""
    from vitok.data import SAMPLE_CLIPS, sample_path

    if spec in SAMPLE_CLIPS and not Path(spec).exists():
        clip = _file_clip(sample_path(spec))
    elif Path(spec).is_dir():
        clip = _file_clip(_folder_videos(Path(spec))[0])
    else:
        clip = resolve_clips([spec])[0]
    frames, fps = clip.load(max_frames)
    return clip.name, frames[:max_frames], fps
