"""Single-clip tools (`bench codec --clip`, `compare`) given a folder: its first video file, the others unread."""
from __future__ import annotations

import numpy as np
import pytest

from vitok.evaluation.clips import load_clip
from vitok.evaluation.errors import EvaluationError


def test_a_folder_gives_its_first_video_and_reads_no_other(tiny_video, tiny_frames):
    folder = tiny_video.parent
    (folder / "b.mp4").write_text("not a video: a later file the tool never opens")
    tiny_video.rename(folder / "a.mkv")
    name, frames, fps = load_clip(str(folder), max_frames=4)
    assert name == "a" and fps == 25 and np.array_equal(frames, tiny_frames[:4])


def test_a_folder_without_videos_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(EvaluationError, match=f"clip folder {tmp_path} holds no video files"):
        load_clip(str(tmp_path))
