"""Golden streams: `.vtok` files written once by the bundled models (tools/golden_streams.py) decode to exactly the
integers they held, so no change to vitok, its format or CompressAI's coder leaves older files undecodable."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from vitok.codecs.neural import VitokCodec

GOLDEN = Path(__file__).resolve().parent / "golden"
TOOL = Path(__file__).resolve().parents[2] / "tools" / "golden_streams.py"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("golden_streams", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not TOOL.is_file(), reason="tools/ is not in this checkout")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_stream_decodes_to_the_same_integers(tool, name):
    want = EXPECTED[name]
    data = (GOLDEN / f"{name}.vtok").read_bytes()
    codec = VitokCodec(want["model"])
    assert len(data) == want["bytes"] and tool.symbols_hash(codec, data) == want["symbols"]
    frames, _ = codec.decode(data)   # pixels may move by one level on other hardware: the PSNR stays
    assert tool.psnr(frames, tool.golden_frames(name)) == pytest.approx(want["psnr"], abs=0.05)
