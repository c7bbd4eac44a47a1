"""tools/tile_seams.py: bytes, PSNR and seam error per tile overlap, with the seam band where tiles meet."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from vitok.codecs.neural import VitokCodec

TOOL = Path(__file__).resolve().parents[2] / "tools" / "tile_seams.py"


@pytest.mark.skipif(not TOOL.is_file(), reason="tools/ is not in this checkout")
def test_overlaps_are_measured_with_the_band_around_each_seam(tinygrid):
    from vitok.data.io import read_video
    from vitok.data.samples import sample_path

    spec = importlib.util.spec_from_file_location("tile_seams_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    frames = np.ascontiguousarray(read_video(sample_path("carphone"), num_frames=8)[0][:, 40:88, 16:104])
    codec = VitokCodec(tinygrid[0], tinygrid[1])
    for pixels in (0, 16):   # 88 px: two tiles of 48 (no overlap) or 56 (16 px), meeting around column 48
        band = tool.seam_mask(codec.with_overlap(pixels).plan(8, 48, 88))
        assert set(np.flatnonzero(band.any(axis=0))) == set(range(44, 52)) and band[:, 44:52].all()
    rows = tool.measure(codec, frames, [0, 16])
    assert [r["overlap"] for r in rows] == [0, 16] and [r["tiles"] for r in rows] == ["1x2 of 48x48", "1x2 of 48x56"]
    assert rows[0]["bytes"] < rows[1]["bytes"] and all(r["psnr"] > 0 and r["seam_ratio"] > 0 for r in rows)
