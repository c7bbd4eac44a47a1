"""`vitok info`: what a file states and does not (`?`, never `None`), and how it is shown (rotation, mirroring)."""
from __future__ import annotations

import json

import av
import numpy as np
import pytest

from vitok.cli.main import main


def test_info_on_a_raw_h264_stream_says_unknown(tmp_path, capsys, tiny_frames):
    path = tmp_path / "raw.h264"   # Annex-B elementary stream: no container, no count, no duration
    with av.open(str(path), "w", format="h264") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = tiny_frames.shape[2], tiny_frames.shape[1], "yuv420p"
        for k, f in enumerate(tiny_frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            frame.pts = k
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with pytest.raises(SystemExit) as e:
        main(["info", str(path)])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "32x24 @ 25 fps, ? frames, ? s" in out and "None" not in out, out
    with pytest.raises(SystemExit):
        main(["info", "--json", str(path)])
    d = json.loads(capsys.readouterr().out)
    assert d["frames"] is None and d["duration"] is None


def test_info_says_a_picture_is_mirrored(tmp_path, capsys):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 2   # EXIF: flipped left-right
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(tmp_path / "m.jpg", exif=exif)
    with pytest.raises(SystemExit):
        main(["info", str(tmp_path / "m.jpg")])
    assert capsys.readouterr().out.rstrip().endswith("bytes, mirrored")
    with pytest.raises(SystemExit):
        main(["info", "--json", str(tmp_path / "m.jpg")])
    assert json.loads(capsys.readouterr().out)["mirrored"] is True
