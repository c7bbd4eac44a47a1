"""The pretrained models that ship inside the package: present, small, documented, and actually trained.

The floors sit about 1 dB under what `python -m vitok.train.evaluate NAME` measured on the first held-out segment when
the model was bundled, with the same reconstruction and PSNR functions; one segment keeps the test fast.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import vitok
from vitok.data.samples import eval_segments
from vitok.registry import PRETRAINED_DIR, bundled_models
from vitok.train.evaluate import frame_psnr, reconstruct

# name -> (kind, PSNR floor in dB on the first held-out 17x128x128 segment)
SHIPPED = {"vitok-grid": ("vit", 27.7), "vitok-cnn": ("cnn", 28.7), "vitok-1d": ("vit1d", 25.0)}


@pytest.fixture(scope="module")
def segment() -> np.ndarray:
    return eval_segments(num_frames=17, size=128)[0][1]


def test_three_models_ship():
    assert set(SHIPPED) <= set(bundled_models())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_bundled_files(name):
    folder = PRETRAINED_DIR / name
    assert (folder / "model.safetensors").stat().st_size <= 25 * 2**20
    training = json.loads((folder / "training.json").read_text())
    assert training["steps"] > 0 and training["train_seconds"] > 0 and training["hardware"]
    assert training["command"].startswith("vitok train ")
    config = json.loads((folder / "config.json").read_text())
    assert config["name"] == name


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_bundled_model_reconstructs_held_out_video(name, segment):
    kind, floor = SHIPPED[name]
    tok = vitok.load(name)
    assert tok.frozen and tok.config.kind == kind
    recon = reconstruct(tok, segment)
    assert recon.shape == segment.shape
    assert frame_psnr(segment, recon) > floor


def test_bundled_1d_quality_rises_with_tokens(segment):
    tok = vitok.load("vitok-1d")
    few, all_ = (frame_psnr(segment, reconstruct(tok, segment, num_tokens=k))
                 for k in (tok.max_tokens // 16, tok.max_tokens))
    assert all_ > few + 0.5
