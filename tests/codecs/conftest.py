"""Fixtures for the codec tests: a real sample clip and tiny tokenizers with calibrated entropy tables."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

STEPS = (0.5, 2.0)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Other helpers share the 2 cores: keep torch to one thread unless a test asks otherwise."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def clip() -> tuple[np.ndarray, Fraction]:
    """20 frames of carphone cropped to 48x64 (one tile of the tiny models): 3 chunks of 8, 8 and 4 frames."""
    from vitok.data.io import read_video
    from vitok.data.samples import sample_path

    frames, info = read_video(sample_path("carphone"), num_frames=20)
    return np.ascontiguousarray(frames[:, 40:88, 48:112]), info.fps


def _calibrated(name: str, clip, tmp_dir: Path):
    import vitok
    from vitok.codecs.entropy import calibrate_entropy, write_entropy_tables

    torch.manual_seed(0)
    tok = vitok.create_model(name).freeze()
    frames, _ = clip
    tables = calibrate_entropy(tok, [frames[:8], frames[8:16]], steps=STEPS, iters=40)
    d = tmp_dir / name
    tok.save_pretrained(d)
    write_entropy_tables(d, tables)
    return tok, tables, d


@pytest.fixture(scope="session")
def tiny1d(clip, tmp_path_factory):
    """(tokenizer, tables, model dir) of a random-init vit1d-tiny with calibrated tables, saved to a tmp dir."""
    return _calibrated("vit1d-tiny", clip, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tinygrid(clip, tmp_path_factory):
    """The same for the grid model vit-tiny."""
    return _calibrated("vit-tiny", clip, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def codec1d(tiny1d):
    from vitok.codecs.neural import VitokCodec

    tok, tables, _ = tiny1d
    return VitokCodec(tok, tables)


@pytest.fixture(scope="session")
def stream1d(codec1d, clip) -> bytes:
    """A real 3-chunk .vtok of the clip (20 frames, chunks of 8)."""
    frames, fps = clip
    return codec1d.encode(frames, fps, tokens=8)


@pytest.fixture(scope="session")
def codec1d_inter(tiny1d, clip):
    """The tiny 1D model with tables calibrated on two consecutive chunks: inter tables, so chunks predict."""
    from vitok.codecs.entropy import calibrate_entropy
    from vitok.codecs.neural import VitokCodec

    tok, _, _ = tiny1d
    frames, _ = clip
    tables = calibrate_entropy(tok, [frames[:8], frames[8:16]], steps=STEPS, follows=[False, True])
    assert tables.predicts
    return VitokCodec(tok, tables)
