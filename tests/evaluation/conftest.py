"""Shared fixtures: 9 frames of the carphone sample (176x144) and a tiny 1D vitok model with entropy tables."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def carphone_path():
    from vitok.data import sample_path

    return sample_path("carphone")


@pytest.fixture(scope="session")
def carphone9(carphone_path):
    from vitok.data import read_video

    frames, info = read_video(carphone_path, num_frames=9)
    return frames, info.fps


@pytest.fixture(scope="session")
def small_clip(tmp_path_factory, carphone9):
    """A 64x64 crop of those 9 frames as an mp4 file (one tile for the tiny model: quick CLI runs)."""
    from vitok.data import write_video

    path = tmp_path_factory.mktemp("clips") / "face.mp4"
    write_video(path, np.ascontiguousarray(carphone9[0][:, 30:94, 56:120]), carphone9[1], crf=12)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, carphone9):
    """A randomly initialised ``vit1d-tiny`` saved with calibrated entropy tables: usable as ``vitok:<dir>``."""
    import torch

    import vitok
    from vitok.codecs import calibrate_entropy, write_entropy_tables

    torch.set_num_threads(1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "vit1d-tiny"
    tok = vitok.create_model("vit1d-tiny")
    tok.save_pretrained(path)
    write_entropy_tables(path, calibrate_entropy(tok, [np.ascontiguousarray(carphone9[0][:8, :64, :64])], iters=50))
    return str(path)


@pytest.fixture(scope="session")
def is_png():
    """A check that a file is non-empty and starts with the PNG signature."""

    def check(path) -> bool:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"

    return check
