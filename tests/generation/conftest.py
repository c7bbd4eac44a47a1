"""Shared fixtures: a folder of tiny PyAV-written clips (plus one corrupt file), a tiny saved tokenizer, shards."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

NUM_GOOD = 6
FRAMES = 6
SIDE = 32


def write_clip(path: Path, seed: int, frames: int = FRAMES, side: int = SIDE) -> None:
    """A moving coloured gradient, h264 in mp4, ``frames`` frames of ``side`` x ``side``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    color = rng.uniform(40, 215, size=3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8, options={"crf": "18", "preset": "ultrafast"})
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            base = (xx * 3 + yy * 2 + t * 9 + seed * 17) % 255
            rgb = np.clip(np.stack([base, 255 - base, np.full_like(base, 128)], -1) * 0.5 + color * 0.5, 0, 255)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """``NUM_GOOD`` good clips (one in a sub-folder) and ``broken.mp4`` (random bytes). Read-only for tests."""
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    for i in range(NUM_GOOD):
        write_clip(root / ("sub" if i == 3 else "") / f"clip{i}.mp4", seed=i)
    (root / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny grid ViT tokenizer saved with save_pretrained."""
    import vitok

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tok") / "vit-tiny"
    vitok.create_model("vit-tiny").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory, video_dir, model_dir) -> Path:
    """One extraction shared by the read-only tests (batch size 1, so each clip is encoded on its own)."""
    from vitok.extract import extract_latents

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("shards")
    extract_latents(video_dir, out, str(model_dir), frames=4, size=(SIDE, SIDE), shard_size=3, batch_size=1)
    return out
