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
    assert d["frames"] is None and d["duration"] is None and d["hdr"] is None


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


@pytest.mark.parametrize("trc,name", [(18, "HLG"), (16, "PQ")])
def test_info_says_a_video_is_hdr(tmp_path, capsys, trc, name):
    """HDR reads as flat SDR (no tone mapping here): info names the transfer, as text and as JSON."""
    path = tmp_path / "hdr.mkv"
    with av.open(str(path), "w") as c:   # 10-bit BT.2020 tagged PQ or HLG
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p10le"
        s.codec_context.color_trc, s.codec_context.color_primaries, s.codec_context.colorspace = trc, 9, 9
        frame = av.VideoFrame.from_ndarray(np.zeros((24, 32, 3), np.uint8), format="rgb24").reformat(format=s.pix_fmt)
        frame.pts = 0
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with pytest.raises(SystemExit):
        main(["info", str(path)])
    assert capsys.readouterr().out.rstrip().endswith(f"kbps, {name} HDR")
    with pytest.raises(SystemExit):
        main(["info", "--json", str(path)])
    assert json.loads(capsys.readouterr().out)["hdr"] == name
