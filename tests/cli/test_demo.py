"""`vitok demo` end to end with a tiny model (CI also runs the README's real `vitok demo` on the bundled model)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from vitok.cli.main import cli
from vitok.codecs import get_codec


def _tiny_model_dir(root: Path) -> Path:
    import vitok
    from vitok.codecs.entropy import calibrate_entropy, write_entropy_tables
    from vitok.data.samples import load_sample

    torch.manual_seed(0)
    tok = vitok.create_model("vit1d-tiny").freeze()
    frames = load_sample("carphone", "train")[:16, :64, :64]
    tables = calibrate_entropy(tok, [frames[:8], frames[8:]], steps=(0.5, 2.0), iters=30)
    d = root / "tiny"
    tok.save_pretrained(d)
    write_entropy_tables(d, tables)
    return d


def test_demo_writes_outputs_and_refuses_overwrite(tmp_path: Path):
    torch.set_num_threads(1)
    model = _tiny_model_dir(tmp_path)
    out = tmp_path / "demo"
    runner = CliRunner()
    r = runner.invoke(cli, ["demo", "-o", str(out), "--model", str(model), "--frames", "8", "-q", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert [row["codec"] for row in result["rows"]] == [f"vitok:{model}", "h264"]
    vitok_row, h264_row = result["rows"]
    assert vitok_row["bytes"] == (out / "carphone.vtok").stat().st_size
    h264_file = (out / "carphone_h264.mp4").read_bytes()   # counted as its elementary stream, not the mp4 boxes
    assert h264_row["bytes"] == get_codec("h264").stream_bytes(h264_file) < len(h264_file)
    # the tiny model's PSNR lies below what h264 reaches at CRF 51: no bytes at its PSNR, the ratio is to the end
    # setting's (a matched ratio is to h264's bytes at exactly vitok's PSNR: tests/evaluation -k match_psnr)
    assert not h264_row["matched"] and h264_row["bytes_at_psnr"] is None
    assert abs(result["bytes_ratio_vs_h264"] - vitok_row["bytes"] / h264_row["bytes"]) < 1e-9
    png = (out / "side_by_side.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    from vitok.data.io import read_video

    decoded, _ = read_video(out / "carphone_vitok.mkv")
    assert decoded.shape == (8, 144, 176, 3)

    again = runner.invoke(cli, ["demo", "-o", str(out), "--model", str(model), "--frames", "8", "-q"])
    assert again.exit_code != 0 and "output exists" in str(again.exception or again.output)
    # carphone's pixels are 128:117; the demo's array outputs cannot show that, and it says so
    assert result["source_sample_aspect_ratio"] == "128/117"
    text = runner.invoke(cli, ["demo", "-o", str(out), "--model", str(model), "--frames", "8", "-q", "-y"]).stdout
    assert "note: carphone's pixels are 128:117; the demo's outputs show them square" in text
    # -y replaces an earlier demo, not a user's own files that look like one (any *.vtok, *_h264.mp4 were taken)
    (out / "holiday.vtok").write_bytes(b"mine")
    mine = runner.invoke(cli, ["demo", "-o", str(out), "--model", str(model), "--frames", "8", "-q", "-y"])
    assert mine.exit_code != 0 and "holds other files (holiday.vtok)" in str(mine.exception or mine.output)
    assert (out / "holiday.vtok").read_bytes() == b"mine" and (out / "carphone.vtok").is_file()
