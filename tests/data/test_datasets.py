"""VideoFolder, SyntheticMotion and make_loader: shapes, ranges, determinism, bad files, batching."""
from __future__ import annotations

import time
import warnings
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from vitok.data.errors import VideoReadError
from vitok.data.folder import VideoFolder
from vitok.data.io import FrameTimingWarning, write_video
from vitok.data.loader import make_loader
from vitok.data.synthetic import KINDS, SyntheticMotion


@pytest.fixture
def video_root(tmp_path, tiny_video, carphone_clip):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    tiny_video.rename(root / "a_tiny.mkv")  # 9 frames, 32x24
    write_video(root / "sub" / "b_carphone.mp4", carphone_clip, 30)  # 8 frames, 176x144
    Image.fromarray(carphone_clip[0]).save(root / "c_still.png")
    (root / "d_bad.mp4").write_bytes(b"not really a video" * 20)
    (root / "notes.txt").write_text("ignored: not a video extension")
    (root / ".ipynb_checkpoints").mkdir()   # a hidden folder: its files are ignored
    write_video(root / ".ipynb_checkpoints" / "hidden.mp4", carphone_clip, 30)
    return root


def test_video_folder(video_root):
    with pytest.warns(UserWarning, match="d_bad.mp4") as record:
        ds = VideoFolder(video_root, num_frames=4, size=16, stride=2, clips_per_video=2, min_scale=0.5)
    assert len(record) == 1 and len(ds) == 6
    assert [p.path.name for p in ds.items] == ["a_tiny.mkv", "c_still.png", "b_carphone.mp4"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        items = [ds[i] for i in range(len(ds))]
    with pytest.warns(UserWarning, match="d_bad.mp4"):
        again = VideoFolder(video_root, num_frames=4, size=16, stride=2, clips_per_video=2, min_scale=0.5)
    for x, y in zip(items, (again[i] for i in range(len(again)))):
        assert x.shape == (3, 4, 16, 16) and x.dtype == torch.float32 and torch.equal(x, y)
        assert -1 <= x.min() and x.max() <= 1
    assert torch.equal(items[2][:, 0], items[2][:, 3])  # the still repeats
    with pytest.warns(UserWarning, match="d_bad.mp4"):
        other = VideoFolder(video_root, num_frames=4, size=16, stride=2, clips_per_video=2, min_scale=0.5, seed=1)
    assert any(not torch.equal(ds[i], other[i]) for i in range(len(ds)))


def test_video_folder_pads_short_videos_and_survives_lost_files(video_root, tmp_path):
    with pytest.warns(UserWarning, match="d_bad.mp4"):
        ds = VideoFolder(video_root, num_frames=12, size=(24, 16))
    x = ds[0]  # a_tiny has 9 frames: the last one repeats
    assert x.shape == (3, 12, 16, 24) and torch.equal(x[:, 8], x[:, 11])
    (video_root / "a_tiny.mkv").unlink()
    with pytest.warns(UserWarning, match="a_tiny.mkv"):
        y = ds[0]  # the next file stands in
    assert y.shape == x.shape
    with pytest.raises(VideoReadError, match="not a folder"):
        VideoFolder(tmp_path / "missing", 4, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="no readable"):
        VideoFolder(tmp_path / "empty", 4, 16)


def test_video_folder_reads_what_extraction_reads_under_any_file_name(tmp_path):
    """Training on a folder skipped .mpg/.ts/.gif files that `vitok latents extract` read (two extension lists), and
    a file name that is not UTF-8 (an old archive's Latin-1) stopped the scan with a UnicodeEncodeError."""
    import os

    from vitok.extract import list_videos

    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 48, 3), dtype=np.uint8)
    for name, codec, pix_fmt in (("ok.mp4", "h264", None), ("clip.mpg", "mpeg2video", None),
                                 ("clip.ts", "h264", None), ("anim.gif", "gif", "rgb8")):
        write_video(tmp_path / name, frames, 25, codec=codec, pix_fmt=pix_fmt)
    latin1 = os.fsdecode(b"caf\xe9.mp4")
    (tmp_path / "ok.mp4").rename(tmp_path / latin1)
    write_video(tmp_path / "ok.mp4", frames, 25)
    ds = VideoFolder(tmp_path, num_frames=4, size=16)
    names = ["anim.gif", latin1, "clip.mpg", "clip.ts", "ok.mp4"]
    assert [i.path.name for i in ds.items] == names == [p.name for p in list_videos(tmp_path)]
    assert all(ds[i].shape == (3, 4, 16, 16) for i in range(len(ds)))


def test_video_folder_says_when_a_file_is_shorter_than_its_header(tmp_path):
    """A cut-short file probes at its header's frame count; a start past its real end fell back to frame 0 without a
    word, so several draws of the file gave one clip: it now says so, once."""
    root = tmp_path / "cut"
    root.mkdir()
    write_video(root / "long.mkv", np.random.default_rng(0).integers(0, 256, (60, 32, 32, 3), dtype=np.uint8), 10)
    data = (root / "long.mkv").read_bytes()
    (root / "long.mkv").write_bytes(data[:len(data) // 3])
    ds = VideoFolder(root, num_frames=4, size=16, clips_per_video=8)
    assert ds.items[0].num_frames == 60
    with pytest.warns(UserWarning, match="long.mkv: fewer frames than its header's 60; clips from its start") as rec:
        clips = [ds[i] for i in range(8)]
    assert len(rec) == 1 and all(c.shape == (3, 4, 16, 16) for c in clips)


def test_video_folder_says_once_that_a_files_frame_times_are_uneven(tmp_path):
    """Every draw reads the file again, and each read of a variable-rate file gave a timing notice: a folder of
    them printed one per clip while training; now one per file (and process)."""
    import av

    root = tmp_path / "vfr"
    root.mkdir()
    with av.open(str(root / "vfr.mkv"), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "bgr0"
        s.codec_context.time_base = Fraction(1, 1000)
        times = sorted([*range(0, 1440, 120), *range(40, 1440, 120)])   # 40 ms then 80 ms apart, in turn
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    ds = VideoFolder(root, num_frames=4, size=16, clips_per_video=6)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        clips = [ds[i] for i in range(6)]
    assert [w.category for w in rec] == [FrameTimingWarning], [str(w.message) for w in rec]
    assert "frame times jump" in str(rec[0].message) and all(c.shape == (3, 4, 16, 16) for c in clips)


def test_video_folder_counts_the_frames_of_a_file_whose_header_has_none(tmp_path):
    """A webm written live holds no frame count or duration: every draw took its first window, unsaid."""
    import av

    root = tmp_path / "live"
    root.mkdir()
    with av.open(str(root / "live.webm"), "w", options={"live": "1"}) as out:
        stream = out.add_stream("libvpx-vp9", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(60):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 4 * i, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    ds = VideoFolder(root, num_frames=8, size=16)
    assert ds.items[0].num_frames == 60
    starts = {round(float(ds.read_item(0, np.random.default_rng(seed))[:, 0].mean() + 1) * 127.5 / 4)
              for seed in range(12)}
    assert len(starts) > 3 and max(starts) <= 52


def _sources() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:128]
    smooth = np.stack([x * 2, y * 2, (x + y)], -1).astype(np.uint8)
    return [smooth, rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)]


def test_synthetic_motion_is_deterministic_and_in_range():
    ds = SyntheticMotion(60, 5, (24, 16), seed=3, sources=_sources())
    x = ds[7]
    assert x.shape == (3, 5, 16, 24) and x.dtype == torch.float32
    assert torch.equal(x, SyntheticMotion(60, 5, (24, 16), seed=3, sources=_sources())[7])
    assert not torch.equal(x, SyntheticMotion(60, 5, (24, 16), seed=4, sources=_sources())[7])
    kinds = Counter(ds.params(i)["kind"] for i in range(len(ds)))
    assert set(kinds) == set(KINDS)
    for i in range(0, 60, 5):
        clip = ds[i]
        assert -1 <= clip.min() and clip.max() <= 1
        assert torch.allclose((clip + 1) * 127.5, ((clip + 1) * 127.5).round(), atol=1e-3)  # uint8 grid
        assert (clip[:, -1] - clip[:, 0]).abs().max() > 0  # it moves
    assert SyntheticMotion(2, 1, 8, sources=_sources())[1].shape == (3, 1, 8, 8)
    with pytest.raises(IndexError):
        ds[60]


def test_synthetic_motion_default_sources_and_speed():
    ds = SyntheticMotion(10, 3, 32)
    assert len(ds.stills) >= 50  # 44 training frames of the sample clips + scikit-image images
    assert ds[0].shape == (3, 3, 32, 32)
    fast = SyntheticMotion(12, 17, 128, sources=[np.asarray(s.resize((400, 256))) for s in
                                                 (Image.fromarray(a) for a in _sources())])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for i in range(len(fast)):
            fast[i]
        per_clip = (time.perf_counter() - start) / len(fast)
    finally:
        torch.set_num_threads(threads)
    assert per_clip < 0.25  # ~10-30 ms on one shared core


def test_make_loader_batches_and_seeds():
    ds = SyntheticMotion(10, 3, 16, sources=_sources())
    batches = list(make_loader(ds, 4, seed=1))
    assert len(batches) == 2 and all(b.shape == (4, 3, 3, 16, 16) for b in batches)
    assert all(torch.equal(a, b) for a, b in zip(batches, make_loader(ds, 4, seed=1)))
    assert len(list(make_loader(ds, 4, drop_last=False, shuffle=False))) == 3
    workers = list(make_loader(ds, 5, num_workers=2, seed=1))
    assert len(workers) == 2 and workers[0].shape == (5, 3, 3, 16, 16)


class _Indexed(torch.utils.data.Dataset):
    """Item i is a (3, 1, 1, 1) clip filled with i: a batch says which items it holds."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((3, 1, 1, 1), float(i))


def test_make_loader_order_is_the_same_for_any_worker_count():
    """The shuffle had shared its generator with the workers' base seed (drawn each epoch without persistent
    workers): from the second epoch on, the order depended on num_workers."""
    def epochs(num_workers: int) -> list[list[int]]:
        loader = make_loader(_Indexed(), 4, seed=1, num_workers=num_workers)
        return [[int(v) for b in loader for v in b[:, 0, 0, 0, 0]] for _ in range(3)]

    serial = epochs(0)
    assert serial == epochs(1) and serial[0] != serial[1] and sorted(serial[2]) == list(range(12))


def test_make_loader_distributed(tmp_path, monkeypatch):
    """Under an initialised process group each rank reads its own half of the items (the two halves disjoint and
    together the whole set), in the same order whenever the seed is the same."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loader = make_loader(SyntheticMotion(6, 2, 8, sources=_sources()), 2, distributed=True)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        assert next(iter(loader)).shape == (2, 3, 2, 8, 8)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)   # as rank r of two processes
        seen = []
        for rank in (0, 1, 0):
            monkeypatch.setattr(dist, "get_rank", lambda group=None, r=rank: r)
            seen.append([int(b[j, 0, 0, 0, 0]) for b in make_loader(_Indexed(), 2, distributed=True, seed=3)
                         for j in range(len(b))])
        assert len(seen[0]) == len(seen[1]) == 6 and sorted(seen[0] + seen[1]) == list(range(12))
        assert seen[0] == seen[2]
    finally:
        dist.destroy_process_group()
