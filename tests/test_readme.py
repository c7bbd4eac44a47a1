"""The README's Python API snippet runs as printed (on the carphone sample instead of clip.mp4, with bundled models)."""
from __future__ import annotations

import re
from pathlib import Path

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
    assert scope["lat16"].z.shape[1] < scope["tok1d"].encode(scope["video"]).z.shape[1]
    assert tuple(scope["out"].shape) == tuple(scope["video"].shape)
