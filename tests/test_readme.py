"""The README's Python API snippet runs as printed (on the carphone sample instead of clip.mp4, with bundled models)."""
from __future__ import annotations

import re
from pathlib import Path

import vitok

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_python_api_snippet_runs(carphone_path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    block = _python_blocks()[0]
    assert '"clip.mp4"' in block
    scope: dict = {}
    exec(compile(block.replace('"clip.mp4"', repr(str(carphone_path))), "README.md", "exec"), scope)
    assert scope["recon"].shape == scope["frames"].shape == (17, 144, 176, 3)
    lat16, K = scope["lat16"], scope["tok1d"].max_tokens
    assert lat16.mask.sum().item() == 16 * lat16.mask.shape[1] // K  # a 16-token prefix of each unit's K slots
    copy = vitok.load(tmp_path / "my-1d")
    assert copy.weights_hash == scope["tok1d"].weights_hash
    assert (tmp_path / "my-1d" / "model.safetensors").stat().st_size < 13 * 10**6
    # the adapter decodes at the latent grid's padded size: 17 frames -> 20 (vitok-grid's temporal stride is 4)
    video, out = scope["video"], scope["out"]
    assert tuple(out.shape) == (*video.shape[:2], 20, *video.shape[3:])
