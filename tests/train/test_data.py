"""Training data: the step-indexed sampler (sharding, resume position) and the clip mix with augmentation."""
from __future__ import annotations

import itertools

import numpy as np
import torch

from vitok.train.config import DEFAULTS
from vitok.train.data import StepSampler, TrainClips, make_train_loader


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_sampler_shards_epochs_and_resumes():
    n, b = 10, 2
    single = _take(StepSampler(n, b, seed=3), 20)                         # 10 steps of one process
    assert sorted(i for i, _ in single[:10]) == list(range(10))          # an epoch is a permutation
    assert [i for i, _ in single[:10]] != [i for i, _ in single[10:]]    # reshuffled per epoch
    r0 = _take(StepSampler(n, b, seed=3, rank=0, world=2), 10)
    r1 = _take(StepSampler(n, b, seed=3, rank=1, world=2), 10)
    merged = [x for k in range(5) for x in r0[2 * k:2 * k + 2] + r1[2 * k:2 * k + 2]]
    assert merged == single                                              # ranks split one global stream
    assert _take(StepSampler(n, b, seed=3, start_step=4), 12) == single[8:]   # resume = start later


def test_clip_mix_samples_folder_and_augmentation(tmp_path):
    from vitok.data.io import write_video

    frames = np.random.default_rng(0).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    write_video(tmp_path / "v.mp4", frames, 10)
    cfg = {**DEFAULTS["data"], "size": 16, "synthetic": {"num_clips": 3, "seed": 0},
           "samples": {"repeat": 1, "sizes": [32]}, "folder": str(tmp_path)}
    ds = TrainClips(cfg, num_frames=4)
    kinds = [k for k, _, _ in ds.sources]
    assert kinds == ["synthetic", "samples", "folder"] and len(ds) == ds.offsets[-1]
    first_sample = int(ds.offsets[1])
    a, b = ds[(first_sample, 7)], ds[(first_sample, 7)]
    assert a.shape == (3, 4, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)   # same draw, same crop
    assert not torch.equal(a, ds[(first_sample, 8)])
    assert ds[(len(ds) - 1, 0)].shape == (3, 4, 16, 16)
    loader = make_train_loader(ds, 2, seed=0, rank=0, world=1, start_step=0, num_workers=0)
    state = torch.get_rng_state()
    batch = next(iter(loader))
    assert batch.shape == (2, 3, 4, 16, 16) and torch.equal(state, torch.get_rng_state())   # global RNG untouched


def test_sample_clips_left_out_or_upsampled_are_named():
    """A sizes entry under data.size, or a clip too short, was dropped unsaid; sizes over a clip's own height
    upsampled it unsaid (carphone is 144 px high)."""
    import pytest

    cfg = {**DEFAULTS["data"], "size": 48, "synthetic": {"num_clips": 0, "seed": 0},
           "samples": {"repeat": 1, "sizes": [32, 48, 160]}}
    with pytest.warns(UserWarning) as rec:
        ds = TrainClips(cfg, num_frames=4)
    said = " | ".join(str(w.message) for w in rec)
    assert "left out bigbuckbunny at 32 px, bikes at 32 px, carphone at 32 px (fewer than 4 frames or smaller than " \
           "data.size 48)" in said
    assert "upsamples carphone (144 px) to 160 px squares" in said and "bikes" not in said.split("upsamples")[1]
    assert len(ds.sources[0][1][0]) == 6   # the 48 and 160 px clips


def test_folder_clips_take_a_new_window_each_draw(tmp_path):
    """A folder video gave one fixed window for every draw (its start frame came from the item alone): now each draw
    seed picks its own start, and the same draw gives the same clip."""
    from vitok.data.io import write_video

    frames = np.repeat(np.arange(0, 240, 6, dtype=np.uint8)[:, None, None, None], 3, axis=3)   # frame i is 6 * i
    write_video(tmp_path / "count.mkv", np.ascontiguousarray(np.broadcast_to(frames, (40, 16, 16, 3))), 10)
    cfg = {**DEFAULTS["data"], "size": 16, "synthetic": {"num_clips": 0, "seed": 0},
           "samples": {"repeat": 0, "sizes": [32]}, "folder": str(tmp_path), "hflip": False}
    ds = TrainClips(cfg, num_frames=8)
    starts = {round(float((ds[(0, seed)][0, 0].mean() + 1) * 127.5) / 6) for seed in range(30)}
    assert len(starts) > 10 and starts <= set(range(33)), starts
    assert torch.equal(ds[(0, 5)], ds[(0, 5)])
