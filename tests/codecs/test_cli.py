"""`vitok encode | decode | info` through click: success paths on a real clip, and every user error as one line."""
from __future__ import annotations

import errno
import json
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vitok.cli.main import cli, main
from vitok.codecs.container import read_vtok


@pytest.fixture(scope="module")
def video(clip, tmp_path_factory) -> Path:
    """The test clip (20 frames 64x48) as a lossless mkv."""
    from vitok.data.io import write_video

    frames, fps = clip
    path = tmp_path_factory.mktemp("cli") / "clip.mkv"
    write_video(path, frames, fps, codec="ffv1")
    return path


@pytest.fixture(scope="module")
def encoded(video, tiny1d, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "clip.vtok"
    r = CliRunner().invoke(cli, ["encode", str(video), "-o", str(out), "--model", str(tiny1d[2]), "--tokens", "8",
                                 "-q"])
    assert r.exit_code == 0, r.output
    return out


def _run(*args: str) -> dict:
    r = CliRunner().invoke(cli, [*args, "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    return json.loads(r.stdout)


def _error(capsys, *args: str) -> str:
    """Run through the console entry point; return its one-line error."""
    with pytest.raises(SystemExit) as e:
        main(list(args))
    assert e.value.code not in (0, None)
    err = capsys.readouterr().err.split("\r")[-1]  # after any (cleared) progress bar
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_encode_json_and_options(video, tiny1d, tmp_path):
    out = tmp_path / "a.vtok"
    res = _run("encode", str(video), "-o", str(out), "--model", str(tiny1d[2]), "--frames", "9", "--start", "2",
               "--size", "32x32", "--step", "2", "-q", "--threads", "1", "--device", "cpu")
    assert res["frames"] == 9 and (res["width"], res["height"]) == (32, 32)
    assert res["file_bytes"] == out.stat().st_size and res["tokens_per_chunk"] == [16, 16]
    assert res["steps"] == [2.0, 2.0] and res["bpp"] > 0 and res["kbps"] > 0
    res = _run("encode", str(video), "-o", str(out), "--model", str(tiny1d[2]), "--psnr", "5", "-y", "-q")
    assert res["tokens_per_chunk"] == [1, 1, 1]


def test_encode_per_tile_rate_control(video, tiny1d, tmp_path):
    """Frames of 2x2 tiles: --psnr picks counts per tile (a list where they differ), `vitok info` shows what the
    chunk headers hold, --per-chunk keeps one count per chunk."""
    out = tmp_path / "tiles.vtok"
    with pytest.warns(UserWarning, match="could not reach 99 dB"):   # 99 dB: the richest setting of each tile
        res = _run("encode", str(video), "-o", str(out), "--model", str(tiny1d[2]), "--size", "96x72", "--psnr",
                   "99", "-q")
    counts = res["tokens_per_chunk"]
    assert all(isinstance(k, int) or (len(k) == 4 and all(1 <= n <= 16 for n in k)) for k in counts)
    assert any(isinstance(k, list) and len(set(k)) > 1 for k in counts), counts   # tiles that differ
    assert [c["tokens"] for c in _run("info", str(out))["chunk_list"]] == res["tokens_per_chunk"]
    with pytest.warns(UserWarning, match="could not reach 99 dB"):
        res = _run("encode", str(video), "-o", str(out), "--model", str(tiny1d[2]), "--size", "96x72", "--psnr",
                   "99", "--per-chunk", "-y", "-q")
    assert res["tokens_per_chunk"] == [16, 16, 16]
    from vitok.cli.codec_cmds import _runs, _tokens_text

    assert _tokens_text([64, 8]) == "64/8" and _tokens_text(None) == "all"
    assert _runs([(64, 8), (64, 8), 16, (4, 2)]) == "(64/8)x2 16 4/2"   # not 64/8x2: the 8x2 read as one tile
    from vitok.cli.common import count

    assert (count(1, "chunk"), count(0, "chunk"), count(3, "thread")) == ("1 chunk", "0 chunks", "3 threads")


def test_encode_text_output(video, tiny1d, tmp_path):
    r = CliRunner().invoke(cli, ["encode", str(video), "-o", str(tmp_path / "t.vtok"), "--model", str(tiny1d[2]),
                                 "--bytes", "2000", "-q"])
    assert r.exit_code == 0, r.output
    assert "bytes" in r.stdout and "bpp" in r.stdout and "tokens/chunk" in r.stdout
    assert "could not reach" not in r.stdout
    with pytest.warns(UserWarning, match="3 of 3 chunks could not reach 99 dB even at the finest setting"):
        r = CliRunner().invoke(cli, ["encode", str(video), "-o", str(tmp_path / "p.vtok"), "--model",
                                     str(tiny1d[2]), "--psnr", "99", "-q", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["psnr_met"] is False   # a target missed: said, and in the JSON
    r = CliRunner().invoke(cli, ["encode", str(video), "-o", str(tmp_path / "q.vtok"), "--model", str(tiny1d[2]),
                                 "--psnr", "5", "-q", "--json"])
    reached = json.loads(r.stdout)["chunk_psnr"]
    assert json.loads(r.stdout)["psnr_target"] == 5 and json.loads(r.stdout)["psnr_met"] is True
    r = CliRunner().invoke(cli, ["encode", str(video), "-o", str(tmp_path / "q.vtok"), "--model", str(tiny1d[2]),
                                 "--psnr", "5", "-q", "-y"])   # the text says what the target gave
    assert len(reached) == 3 and min(reached) >= 5
    import re

    said = re.search(r"PSNR ([\d.]+) to ([\d.]+) dB over 3 chunks \(target 5\)", r.stdout)
    assert said and [float(v) for v in said.groups()] == pytest.approx([min(reached), max(reached)], abs=0.006)


def test_encode_frame_folder(clip, tiny1d, tmp_path, capsys):
    from PIL import Image

    frames, _ = clip
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames[:5]):
        Image.fromarray(f).save(folder / f"f{i}.png")
    res = _run("encode", str(folder), "-o", str(tmp_path / "f.vtok"), "--model", str(tiny1d[2]), "-q")
    assert res["frames"] == 5
    res = _run("encode", str(folder / "f*.png"), "-o", str(tmp_path / "g.vtok"), "--model", str(tiny1d[2]), "-q")
    assert res["frames"] == 5
    res = _run("encode", str(folder), "-o", str(tmp_path / "h.vtok"), "--model", str(tiny1d[2]), "-q", "--start", "1",
               "--frames", "3")
    only = tmp_path / "only"
    only.mkdir()
    for i in (1, 2, 3):
        (only / f"f{i}.png").write_bytes((folder / f"f{i}.png").read_bytes())
    _run("encode", str(only), "-o", str(tmp_path / "i.vtok"), "--model", str(tiny1d[2]), "-q")
    assert res["frames"] == 3 and (tmp_path / "h.vtok").read_bytes() == (tmp_path / "i.vtok").read_bytes()
    assert "start=5 is past the end (5 frames)" in _error(capsys, "encode", str(folder), "-o", str(tmp_path / "j.vtok"),
                                                          "--model", str(tiny1d[2]), "-q", "--start", "5")
    assert not (tmp_path / "j.vtok").exists()


def test_no_progress_bars_when_stderr_is_not_a_terminal(encoded, video, tiny1d, tmp_path):
    """Without -q, bars show on a terminal only: a log that captures stderr gets no carriage-return bar lines
    beside its messages."""
    for args in (["encode", str(video), "-o", str(tmp_path / "b.vtok")], ["decode", str(encoded), "-o",
                                                                          str(tmp_path / "b.npy")]):
        r = CliRunner().invoke(cli, [*args, "--model", str(tiny1d[2])])
        assert r.exit_code == 0, r.output
        assert "\r" not in r.stderr and "%|" not in r.stderr


@pytest.mark.parametrize("suffix", [".mkv", ".mp4", ".npy", ""])
def test_decode_outputs(encoded, tiny1d, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    res = _run("decode", str(encoded), "-o", str(out), "--model", str(tiny1d[2]), "-q")
    assert res["frames"] == 20 and out.exists()
    if suffix == ".npy":
        assert np.load(out).shape == (20, 48, 64, 3)
    elif suffix == "":
        assert len(list(out.glob("*.png"))) == 20
    else:
        from vitok.data.io import probe_video

        info = probe_video(out)
        assert (info.width, info.height, info.num_frames) == (64, 48, 20)


def test_decode_matches_library(encoded, codec1d, tiny1d, tmp_path):
    out = tmp_path / "x.npy"
    _run("decode", str(encoded), "-o", str(out), "--model", str(tiny1d[2]), "-q")
    ref, _ = codec1d.decode(encoded.read_bytes())
    assert np.array_equal(np.load(out), ref)


def test_decode_a_range_of_frames(capsys, encoded, codec1d, tiny1d, tmp_path):
    """--start/--frames decode those frames alone (PNGs numbered as in the stream); a start past the end is an
    error before any output."""
    ref, _ = codec1d.decode(encoded.read_bytes())
    out = tmp_path / "part.npy"
    res = _run("decode", str(encoded), "-o", str(out), "--model", str(tiny1d[2]), "--start", "7", "--frames", "5",
               "-q")
    assert (res["start"], res["frames"]) == (7, 5) and np.array_equal(np.load(out), ref[7:12])
    res = _run("decode", str(encoded), "-o", str(tmp_path / "pngs"), "--model", str(tiny1d[2]), "--start", "17", "-q")
    assert res["frames"] == 3 and sorted(p.name for p in (tmp_path / "pngs").iterdir()) == [
        "frame_000017.png", "frame_000018.png", "frame_000019.png"]
    err = _error(capsys, "decode", str(encoded), "-o", str(tmp_path / "late.npy"), "--start", "20", "-q")
    assert "start must be a frame index in 0..19 (the stream has 20 frames), got 20" in err
    assert not (tmp_path / "late.npy").exists()


def test_info_vtok_and_video(encoded, video):
    d = _run("info", str(encoded))
    assert d["frames"] == 20 and d["chunks"] == 3 and [c["tokens"] for c in d["chunk_list"]] == [8, 8, 8]
    assert d["file_bytes"] == encoded.stat().st_size and d["meta"]["model"] == "vit1d-tiny"
    header, chunks = read_vtok(encoded)
    assert d["format_version"] == 2 and d["header_bytes"] == len(header.pack()) == chunks[0][0].offset
    r = CliRunner().invoke(cli, ["info", str(encoded)])
    assert r.exit_code == 0 and "chunk" in r.stdout and "bpp" in r.stdout
    assert f"header {d['header_bytes']} bytes, payload {d['payload_bytes']} bytes" in r.stdout
    v = _run("info", str(video))
    assert (v["width"], v["height"], v["codec"]) == (64, 48, "ffv1")


def test_info_lists_the_ends_of_a_long_file(encoded, tmp_path):
    """A file of 25 chunks: `vitok info` lists the first and last ten and says how many lie between; --json lists
    them all."""
    from vitok.codecs.container import VtokReader, VtokWriter

    with VtokReader(encoded) as r:
        header, (info, payload) = r.header, next(iter(r.chunks()))
    long = tmp_path / "long.vtok"
    with long.open("wb") as f:
        writer = VtokWriter(f, header)
        for _ in range(25):
            writer.write_chunk(payload, info.frames)
        writer.close()
    assert len(_run("info", str(long))["chunk_list"]) == 25
    rows = CliRunner().invoke(cli, ["info", str(long)]).stdout.splitlines()
    table = rows[rows.index("  chunk  frames  bytes  tokens  step") + 1:]
    assert [r.split()[0] for r in table] == [*map(str, range(10)), "...", *map(str, range(15, 25))]
    assert not any(r.endswith(" +") for r in table)   # a 1D model's chunks never continue
    assert table[10] == "  ... 5 more chunks (--json lists every chunk)"


def test_info_marks_chunks_that_continue_the_one_before(video, tinygrid, tmp_path):
    """A grid model's 20 frames in chunks of 8: the second and third continue the entropy contexts of the one
    before, which `vitok info` marks (and --json says per chunk)."""
    out = tmp_path / "grid.vtok"
    _run("encode", str(video), "-o", str(out), "--model", str(tinygrid[2]), "-q")
    assert [c["continues"] for c in _run("info", str(out))["chunk_list"]] == [False, True, True]
    rows = CliRunner().invoke(cli, ["info", str(out)]).stdout.splitlines()
    assert [r.endswith(" +") for r in rows[-4:-1]] == [False, True, True]
    assert rows[-1] == "  +: its entropy contexts continue from the chunk before"


def test_encode_with_another_tile_overlap(capsys, video, tinygrid, tmp_path):
    """--overlap cuts 88x48 frames into tiles that do not overlap: fewer tokens and bytes, `vitok info` shows the
    tiling, `vitok decode` follows it; an overlap off the stride is one line and no file."""
    model = str(tinygrid[2])
    a, b = tmp_path / "a.vtok", tmp_path / "b.vtok"
    own = _run("encode", str(video), "-o", str(a), "--model", model, "--size", "88x48", "-q")
    res = _run("encode", str(video), "-o", str(b), "--model", model, "--size", "88x48", "--overlap", "0", "-q")
    assert res["file_bytes"] < own["file_bytes"] and res["frames"] == own["frames"] == 20
    assert _run("info", str(b))["meta"]["tiling"] == {"fit": True, "overlap": 0.0, "tile": 64}
    assert "tiles of at most 64 px overlapping by 0 px" in CliRunner().invoke(cli, ["info", str(b)]).stdout
    assert "overlapping by 16 px" in CliRunner().invoke(cli, ["info", str(a)]).stdout
    from vitok.cli.codec_cmds import _tiles_text

    assert _tiles_text({"tiling": {"tile": 200, "overlap": 0.03125, "fit": True}}) == \
        ", tiles of at most 200 px overlapping by 0.03125 of a tile"   # 6.25 px, which the stride rounds
    assert _tiles_text({"tiling": {"tile": True, "overlap": 0.0, "fit": True}}) == _tiles_text({}) == ""
    for bad in (float("inf"), float("nan"), 1e308, True):   # records the decoder refuses: nothing shown, no crash
        assert _tiles_text({"tiling": {"tile": 64, "overlap": bad, "fit": True}}) == ""
    out = tmp_path / "b.npy"
    with pytest.warns(UserWarning, match="cannot keep the pixel aspect"):   # 64x48 stretched to 88x48
        _run("decode", str(b), "-o", str(out), "--model", model, "-q")
    assert np.load(out).shape == (20, 48, 88, 3)
    bad = tmp_path / "c.vtok"
    assert "vit-tiny's stride 8, got 4" in _error(capsys, "encode", str(video), "-o", str(bad), "--model", model,
                                                       "--overlap", "4")
    assert not bad.exists()


def test_errors_are_one_line(capsys, encoded, video, tiny1d, tmp_path):
    model = str(tiny1d[2])
    assert "input not found" in _error(capsys, "encode", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "m.vtok"),
                                       "--model", model)
    assert "output exists" in _error(capsys, "encode", str(video), "-o", str(encoded), "--model", model)
    assert "unknown vitok model" in _error(capsys, "encode", str(video), "-o", str(tmp_path / "u.vtok"),
                                           "--model", "no-such-model")
    assert not (tmp_path / "u.vtok").exists()
    for name in ("out.mp4", "out"):  # a .vtok under a video's name would look like a broken video
        assert "the output of encode is a .vtok file" in _error(capsys, "encode", str(video), "-o",
                                                                str(tmp_path / name), "--model", model)
        assert not (tmp_path / name).exists()
    corrupt = tmp_path / "corrupt.vtok"
    data = bytearray(encoded.read_bytes())
    data[-5] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    assert "chunk 2: CRC mismatch" in _error(capsys, "decode", str(corrupt), "-o", str(tmp_path / "c.npy"),
                                             "--model", model)
    assert not (tmp_path / "c.npy").exists()  # atomic: no partial output
    assert "CRC mismatch" in _error(capsys, "info", str(corrupt))
    assert "not a .vtok file" in _error(capsys, "decode", str(video), "-o", str(tmp_path / "d.npy"), "--model",
                                        model)
    assert "input not found" in _error(capsys, "decode", str(tmp_path / "nope.vtok"), "-o", str(tmp_path / "e.npy"))
    assert "not bundled" in _error(capsys, "decode", str(encoded), "-o", str(tmp_path / "f.npy"))
    assert "input not found" in _error(capsys, "info", str(tmp_path / "nope.mp4"))
    assert "give at most one of --tokens, --bytes, --psnr" in _error(
        capsys, "encode", str(video), "-o", str(tmp_path / "g.vtok"), "--model", model, "--tokens", "2", "--psnr", "30")
    assert "expected WxH like 256x256, got 'abc'" in _error(
        capsys, "encode", str(video), "-o", str(tmp_path / "h.vtok"), "--model", model, "--size", "abc")
    assert "tokens must be" in _error(capsys, "encode", str(video), "-o", str(tmp_path / "i.vtok"), "--model",
                                      model, "--tokens", "999")
    assert "ffv1 needs a .mkv" in _error(capsys, "decode", str(encoded), "-o", str(tmp_path / "j.mp4"), "--model",
                                         model, "--codec", "ffv1")
    assert "unknown output type '.webm'; use .mp4, .mkv, .mov, .npy" in _error(
        capsys, "decode", str(encoded), "-o", str(tmp_path / "k.webm"), "--model", model, "--codec", "h264")
    assert not (tmp_path / "k.webm").exists()
    (tmp_path / "text.mp4").write_text("hello")
    assert "text.mp4: not a readable video or image" in _error(capsys, "encode", str(tmp_path / "text.mp4"), "-o",
                                                               str(tmp_path / "k.vtok"), "--model", model)
    assert not (tmp_path / "k.vtok").exists()


def test_outputs_never_replace_inputs_or_foreign_files(capsys, encoded, video, tiny1d, tmp_path):
    """-y replaces a previous output, never the input itself, a folder holding it, or a folder of other files."""
    import shutil

    model = str(tiny1d[2])
    src = tmp_path / "src.vtok"
    shutil.copy(encoded, src)
    data = src.read_bytes()
    assert "unknown output type '.vtok'" in _error(capsys, "decode", str(src), "-o", str(src), "-y", "--model", model)
    assert "not standard output" in _error(capsys, "decode", str(src), "-o", "-", "--model", model)   # a folder "-"
    as_npy = tmp_path / "src.npy"   # a .vtok under a name decode writes
    shutil.copy(encoded, as_npy)
    assert "is the input" in _error(capsys, "decode", str(as_npy), "-o", str(as_npy), "-y", "--model", model)
    assert as_npy.read_bytes() == data
    assert "holds the input" in _error(capsys, "decode", str(src), "-o", str(tmp_path), "-y", "--model", model)
    own = tmp_path / "own.vtok"   # a video under the name encode writes (another suffix is refused first)
    shutil.copy(video, own)
    assert "is the input" in _error(capsys, "encode", str(own), "-o", str(own), "-y", "--model", model)
    assert src.read_bytes() == data and own.read_bytes() == video.read_bytes()

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert "holds other files (notes.txt)" in _error(capsys, "decode", str(src), "-o", str(folder), "-y",
                                                     "--model", model)
    assert (folder / "notes.txt").read_text() == "keep me"
    (tmp_path / "dir.vtok").mkdir()
    assert "is a folder" in _error(capsys, "encode", str(video), "-o", str(tmp_path / "dir.vtok"), "-y", "--model",
                                   model)
    plain = tmp_path / "plain"
    plain.write_text("not a folder")
    assert "is a file" in _error(capsys, "decode", str(src), "-o", str(plain), "-y", "--model", model)
    assert plain.read_text() == "not a folder"

    frames = tmp_path / "frames"
    _run("decode", str(src), "-o", str(frames), "--model", model, "-q")
    (frames / "frame_000999.png").write_bytes(b"stale")
    _run("decode", str(src), "-o", str(frames), "-y", "--model", model, "-q")  # a previous decode is replaced whole
    assert sorted(p.name for p in frames.iterdir()) == [f"frame_{i:06d}.png" for i in range(20)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    # run from inside the output folder: replacing it moved the current folder (and the paths) away with it
    here = os.getcwd()
    os.chdir(frames)
    try:
        assert "holds the current folder" in _error(capsys, "decode", str(src), "-o", "../frames", "-y", "--model",
                                                    model)
        assert "holds the current folder" in _error(capsys, "decode", str(src), "-o", ".", "-y", "--model", model)
    finally:
        os.chdir(here)
    assert len(list(frames.iterdir())) == 20


def test_model_mismatch_on_decode(capsys, encoded, tinygrid, tmp_path):
    err = _error(capsys, "decode", str(encoded), "-o", str(tmp_path / "m.npy"), "--model", str(tinygrid[2]))
    assert "model mismatch" in err and "vit1d-tiny" in err and "vit-tiny" in err


def test_default_bundled_model_round_trip(capsys, monkeypatch, tiny1d, video, tmp_path):
    """With a bundled model named like DEFAULT_MODEL, encode needs no --model and decode finds it from the file."""
    import shutil

    import vitok.registry
    from vitok.codecs import DEFAULT_MODEL
    from vitok.codecs import models as codec_models

    root = tmp_path / "pretrained"
    shutil.copytree(tiny1d[2], root / DEFAULT_MODEL)
    monkeypatch.setattr(codec_models, "pretrained_root", lambda: root)
    monkeypatch.setattr(vitok.registry, "PRETRAINED_DIR", root)
    from vitok.codecs import list_codecs

    assert f"vitok:{DEFAULT_MODEL}" in list_codecs()
    out = tmp_path / "d.vtok"
    res = _run("encode", str(video), "-o", str(out), "--frames", "8", "-q", "--fps", "30000/1001")
    assert res["model"] == DEFAULT_MODEL and res["fps"] == "30000/1001"
    res = _run("decode", str(out), "-o", str(tmp_path / "d.npy"), "-q")  # model found from the header's name
    assert res["model"] == DEFAULT_MODEL and res["frames"] == 8
    header, chunks = read_vtok(out)   # coded with another copy of the model: other tables under the same name
    header.meta["tables"] = "0" * 16
    from vitok.codecs.container import write_vtok

    (tmp_path / "other.vtok").write_bytes(write_vtok(header, [(p, i.frames) for i, p in chunks]))
    err = _error(capsys, "decode", str(tmp_path / "other.vtok"), "-o", str(tmp_path / "o.npy"), "-q")
    assert "entropy table mismatch" in err and f"the bundled {DEFAULT_MODEL} was picked by the name in the file" in err
    assert not (tmp_path / "o.npy").exists()



def test_calibrate_grid_contexts(capsys, video, tinygrid, tmp_path):
    """Grid models default to spatio-temporal context tables (radii 5 and 6); `--spatial-radius 0` gives temporal
    tables, other radii code and decode alike, and a spatial radius without a temporal one is refused; radii not
    given carry over from the tables replaced."""
    import shutil

    from vitok.codecs.entropy import EntropyTables

    d = tmp_path / "model"
    shutil.copytree(tinygrid[2], d)
    report = _run("calibrate", str(d), "--clip", str(video), "-y")
    assert (report["context_radius"], report["spatial_radius"], report["contexts"]) == (5, 6, 12 * 14)
    temporal = _run("calibrate", str(d), "--clip", str(video), "--spatial-radius", "0", "-y")
    assert (temporal["spatial_radius"], temporal["contexts"]) == (0, 12)
    small = _run("calibrate", str(d), "--clip", str(video), "--context-radius", "1", "--spatial-radius", "1", "-y")
    assert small["contexts"] == 16 and small["table_id"] not in (report["table_id"], temporal["table_id"])
    out = tmp_path / "clip.vtok"
    _run("encode", str(video), "-o", str(out), "--model", str(d))
    _run("decode", str(out), "-o", str(tmp_path / "clip.npy"), "--model", str(d))
    assert np.load(tmp_path / "clip.npy").shape == (20, 48, 64, 3)
    err = _error(capsys, "calibrate", str(d), "--clip", str(video), "--context-radius", "0", "--spatial-radius", "2",
                 "-y")
    assert "spatial contexts need a temporal context radius" in err
    assert EntropyTables.load(d / "entropy.safetensors").table_id == small["table_id"]   # left as it was
    again = _run("calibrate", str(d), "--clip", str(video), "-y")   # radii not given: those of the tables replaced
    assert (again["context_radius"], again["spatial_radius"], again["table_id"]) == (1, 1, small["table_id"])
    flat = _run("calibrate", str(d), "--clip", str(video), "--spatial-radius", "0", "-y")
    assert (flat["context_radius"], flat["spatial_radius"]) == (1, 0)
    wide = _run("calibrate", str(d), "--clip", str(video), "--context-radius", "2", "-y")   # its default spatial one
    assert (wide["context_radius"], wide["spatial_radius"]) == (2, 6)

def test_calibrate_makes_a_trained_model_a_codec(capsys, video, tiny1d, tmp_path):
    """A model folder without tables (as `vitok train` exports it) cannot encode; `vitok calibrate` fits its
    tables from the given clips (per token position for a 1D model), refuses to replace them without -y, and
    the folder then encodes and decodes; tables it replaces stay beside them, so older streams still decode."""
    import shutil

    d = tmp_path / "model"
    shutil.copytree(tiny1d[2], d)
    (d / "entropy.safetensors").unlink()
    out = tmp_path / "clip.vtok"
    assert "run `vitok calibrate" in _error(capsys, "encode", str(video), "-o", str(out), "--model", str(d))
    report = _run("calibrate", str(d), "--clip", str(video))
    assert report["unit_tokens"] == 16 and report["tokens"] == 3 * 16  # 20 frames: chunks of 8, 8 and 4
    assert set(report["bits_per_symbol"]) == {"0.25", "0.5", "1.0", "2.0", "4.0"}
    # 1D default: channel contexts, each channel looking at three earlier ones of its token (-1: none there)
    assert (report["contexts"], report["channels"], report["channel_radius"]) == (216, 8, 2)
    parents = report["channel_parents"]
    assert parents[:2] == [[-1, -1, -1], [0, -1, -1]] and all(-1 <= p < c for c, ps in enumerate(parents) for p in ps)
    assert "use -y to overwrite" in _error(capsys, "calibrate", str(d), "--clip", str(video))
    older = tmp_path / "older.vtok"
    _run("encode", str(video), "-o", str(older), "--model", str(d), "--tokens", "4")
    ctx = _run("calibrate", str(d), "--clip", str(video), "--context-radius", "2", "-y")
    assert ctx["kept"] == [f"entropy-{report['table_id']}.safetensors"] and (d / ctx["kept"][0]).is_file()
    _run("decode", str(older), "-o", str(tmp_path / "older.npy"), "--model", str(d))
    assert np.load(tmp_path / "older.npy").shape == (20, 48, 64, 3)
    with pytest.warns(UserWarning, match="--threads is ignored: calibration runs on one thread"):   # older scripts
        again = _run("calibrate", str(d), "--clip", str(video), "--context-radius", "2", "-y", "--threads", "2")
    with pytest.warns(UserWarning, match="--iters is ignored: these tables are counted per context"):
        _run("calibrate", str(d), "--clip", str(video), "--context-radius", "2", "-y", "--iters", "5")
    assert again["table_id"] == ctx["table_id"]
    assert ctx["contexts"] == 6 and ctx["table_id"] != report["table_id"]  # the previous token picks the table
    assert ctx["channel_radius"] == 0 and ctx["channel_parents"] is None   # one or the other
    assert "channel contexts are instead of a temporal context" in _error(
        capsys, "calibrate", str(d), "--clip", str(video), "--context-radius", "2", "--channel-radius", "2", "-y")
    back = _run("calibrate", str(d), "--clip", str(video), "--channel-radius", "2", "-y")   # not the radius replaced
    assert (back["context_radius"], back["channel_radius"], back["table_id"]) == (0, 2, report["table_id"])
    flat = _run("calibrate", str(d), "--clip", str(video), "--context-radius", "0", "--channel-radius", "0",
                "--iters", "20", "-y")
    assert flat["contexts"] == 1 and flat["channel_radius"] == 0   # factorized tables
    for radius in ((), ("--context-radius", "2")):   # a 1D model's tokens have no neighbours in a frame
        err = _error(capsys, "calibrate", str(d), "--clip", str(video), *radius, "--spatial-radius", "1", "-y")
        assert "spatial contexts are for grid models" in err
    _run("encode", str(video), "-o", str(out), "--model", str(d), "--tokens", "4")
    _run("decode", str(out), "-o", str(tmp_path / "clip.npy"), "--model", str(d))
    assert np.load(tmp_path / "clip.npy").shape == (20, 48, 64, 3)
    assert "not a model directory" in _error(capsys, "calibrate", str(tmp_path))
    before = (d / "entropy.safetensors").read_bytes()
    assert "clip not found" in _error(capsys, "calibrate", str(d), "-y", "--clip", str(tmp_path / "nope.mp4"))
    assert (d / "entropy.safetensors").read_bytes() == before  # a failed run leaves the tables as they were
    for spec in ("carphone", "eval", "bikes:182-198"):   # the segments rd/bench measure on: never calibrated on
        assert "are the evaluation segments" in _error(capsys, "calibrate", str(d), "-y", "--clip", spec)
    from vitok.data.samples import sample_path

    for spec in (sample_path("carphone"), sample_path("bikes").parent):   # the same frames by path, or in a folder
        assert "a sample clip's file, which holds the evaluation segments" in _error(
            capsys, "calibrate", str(d), "-y", "--clip", str(spec), "--frames", "4")
    assert "--frames limits --clip videos" in _error(capsys, "calibrate", str(d), "-y", "--frames", "2")
    assert (d / "entropy.safetensors").read_bytes() == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_outputs_never_replace_special_files(capsys, encoded, video, tiny1d, tmp_path):
    """-y replaces a previous output file, never a pipe or device (as root, -o /dev/null -y would replace it)."""
    model = str(tiny1d[2])
    pipes = [tmp_path / "pipe.vtok", tmp_path / "pipe.npy"]
    for pipe in pipes:
        os.mkfifo(pipe)
    assert "not a regular file" in _error(capsys, "encode", str(video), "-o", str(pipes[0]), "-y", "-q", "--model",
                                          model)
    assert "not a regular file" in _error(capsys, "decode", str(encoded), "-o", str(pipes[1]), "-y", "-q", "--model",
                                          model)
    assert all(stat.S_ISFIFO(p.stat().st_mode) for p in pipes)


def test_encode_refuses_a_size_over_the_limits_before_reading(capsys, monkeypatch, video, tiny1d, tmp_path):
    """A --size the container cannot hold fails at once: no frame is read or resized (that would exhaust memory)."""
    import vitok.data.io

    monkeypatch.setattr(vitok.data.io, "iter_video", lambda *a, **k: pytest.fail("frames were read"))
    args = ["encode", str(video), "-o", str(tmp_path / "big.vtok"), "--model", str(tiny1d[2]), "-q", "--size"]
    assert "20000x20000 outside 1..16384" in _error(capsys, *args, "20000x20000")
    assert "pixel limit" in _error(capsys, *args, "16000x16000")  # 8-frame chunks of 16000x16000
    assert list(tmp_path.iterdir()) == []
    from PIL import Image

    frames = tmp_path.parent / f"{tmp_path.name}-frames"  # a folder whose frames are too wide: refused by header
    frames.mkdir()
    Image.new("RGB", (20000, 2)).save(frames / "f0.png")
    assert "20000x2 outside 1..16384" in _error(capsys, "encode", str(frames), "-o", str(tmp_path / "f.vtok"),
                                               "--model", str(tiny1d[2]), "-q")
    assert list(tmp_path.iterdir()) == []
    # a small file holding one huge picture (a 6000x6000 PNG of 50 KB: 8-frame chunks pass the pixel limit) is refused
    # by its header, before its first frame is decoded (a 16000x16000 PNG took 4 s and 843 MB just to be refused)
    Image.new("L", (6000, 6000)).save(tmp_path.parent / f"{tmp_path.name}-big.png")
    monkeypatch.setattr(vitok.data.io, "probe_video", lambda *a, **k: pytest.fail("the picture was decoded"))
    assert "pixel limit" in _error(capsys, "encode", str(tmp_path.parent / f"{tmp_path.name}-big.png"), "-o",
                                   str(tmp_path / "p.vtok"), "--model", str(tiny1d[2]), "-q")
    assert list(tmp_path.iterdir()) == []


def test_path_and_disk_errors_are_one_line(capsys, monkeypatch, encoded, video, tiny1d, tmp_path):
    """An output under a file, or a disk that fills up mid-write: one line naming the path, no partial file."""
    from vitok.codecs.container import VtokWriter

    model = str(tiny1d[2])
    assert _error(capsys, "encode", str(video), "-o", str(video / "x.vtok"), "-q", "--model", model) == \
        f"error: cannot write {video / 'x.vtok'}: {video} is not a folder\n"   # was "File exists: <video>"
    assert _error(capsys, "decode", str(encoded), "-o", str(video / "y.npy"), "-q", "--model", model) == \
        f"error: cannot write {video / 'y.npy'}: {video} is not a folder\n"

    def full(self, payload, frames):
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    monkeypatch.setattr(VtokWriter, "write_chunk", full)
    out = tmp_path / "big.vtok"
    assert _error(capsys, "encode", str(video), "-o", str(out), "-q", "--model", model) == \
        f"error: {os.strerror(errno.EFBIG)}: {out}\n"
    assert list(tmp_path.iterdir()) == []


def test_decode_of_a_folder_says_it_is_a_folder(capsys, tmp_path):
    (tmp_path / "adir").mkdir()
    assert "adir is a folder, not a .vtok file" in _error(capsys, "decode", str(tmp_path / "adir"), "-o",
                                                          str(tmp_path / "y.mkv"))


def test_an_unwritable_folder_names_the_output(capsys, monkeypatch, encoded, video, tiny1d, tmp_path):
    """The error named the hidden temporary ("Operation not permitted: ro/.x.vtok.uu4lxhw4.vtok"), not the output;
    a read-only folder is simulated (root writes through a chmod)."""
    import tempfile

    ro = tmp_path / "ro"
    ro.mkdir()
    real = {name: getattr(tempfile, name) for name in ("mkstemp", "mkdtemp")}

    def refusing(name):
        def make(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == ro:
                raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), os.path.join(dir, ".x.vtok.uu4lxhw4"))
            return real[name](*args, dir=dir, **kwargs)
        return make

    for name in real:
        monkeypatch.setattr(tempfile, name, refusing(name))
    model = str(tiny1d[2])
    denied = os.strerror(errno.EPERM)
    assert _error(capsys, "encode", str(video), "-o", str(ro / "x.vtok"), "-q", "--model", model) == \
        f"error: cannot write {ro / 'x.vtok'}: {denied}\n"
    for out in (ro / "f", ro / "f.npy"):   # a folder of PNGs, an array
        assert _error(capsys, "decode", str(encoded), "-o", str(out), "-q", "--model", model) == \
            f"error: cannot write {out}: {denied}\n"
    err = _error(capsys, "decode", str(encoded), "-o", str(ro / "f.mkv"), "-q", "--model", model)
    assert f"cannot write {ro / 'f.mkv'}: {denied}" in err and "uu4lxhw4" not in err   # within the video writer's
    assert list(ro.iterdir()) == []


def test_a_wrong_output_suffix_is_said_before_asking_for_y(capsys, encoded, video, tiny1d, tmp_path):
    """An existing output the command cannot write said "use -y to overwrite", and only with -y that its suffix is
    wrong; the suffix is now checked first, and the file is left alone."""
    model = str(tiny1d[2])
    for name in ("out.mp4", "ex.avi", "ex.mp4"):
        (tmp_path / name).write_bytes(b"keep")
    assert "the output of encode is a .vtok file" in _error(capsys, "encode", str(video), "-o",
                                                            str(tmp_path / "out.mp4"), "--model", model)
    assert "unknown output type '.avi'" in _error(capsys, "decode", str(encoded), "-o", str(tmp_path / "ex.avi"),
                                                  "--model", model)
    assert "ffv1 needs a .mkv" in _error(capsys, "decode", str(encoded), "-o", str(tmp_path / "ex.mp4"),
                                         "--model", model, "--codec", "ffv1")
    assert all((tmp_path / name).read_bytes() == b"keep" for name in ("out.mp4", "ex.avi", "ex.mp4"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_inputs_that_are_not_regular_files_are_not_called_missing(capsys, tmp_path):
    """A folder or a pipe named .vtok was reported as "no such .vtok file" / "input not found"."""
    (tmp_path / "d.vtok").mkdir()
    os.mkfifo(tmp_path / "p.vtok")
    assert "d.vtok is a folder, not a .vtok file" in _error(capsys, "info", str(tmp_path / "d.vtok"))
    pipe = str(tmp_path / "p.vtok")   # (a video through a pipe is probed, as `vitok info <(cat clip.mkv)` wants)
    for args in (["decode", pipe, "-o", str(tmp_path / "p2.mkv")], ["info", pipe]):
        assert "is not a regular file" in _error(capsys, *args)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_info_probes_a_video_through_a_pipe(capsys, video, tmp_path):
    """`vitok info <(cat clip.mkv)`: a video read through a pipe is described; a pipe has no size, so no bytes or
    kbps are made up (it said "0 bytes, 0.0 kbps")."""
    import threading

    pipe = tmp_path / "p.mkv"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_bytes(video.read_bytes()))
    writer.start()
    try:
        out = _run("info", str(pipe))
    finally:
        writer.join(timeout=30)
    assert out["frames"] > 0 and out["file_bytes"] is None and "kbps" not in out


def test_a_frame_rate_the_output_cannot_time_is_said_before_the_model_loads(capsys, tiny1d, tmp_path, monkeypatch):
    """A 2400 fps .vtok decoded to .mkv (Matroska's millisecond clock) was refused only after the model loaded;
    now before, and before -y is asked for an existing output."""
    from fractions import Fraction

    from vitok.codecs.neural import VitokCodec

    codec = VitokCodec(tiny1d[0], tiny1d[1])
    fast = tmp_path / "fast.vtok"
    fast.write_bytes(codec.encode(np.zeros((4, 48, 64, 3), np.uint8), Fraction(2400), tokens=2))
    (tmp_path / "out.mkv").write_bytes(b"keep")
    monkeypatch.setattr(VitokCodec, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr("vitok.codecs.neural.model_for_stream", lambda *a, **k: pytest.fail("the model was loaded"))
    err = _error(capsys, "decode", str(fast), "-o", str(tmp_path / "out.mkv"))
    assert "out.mkv: Matroska times frames in milliseconds, so 2400 fps cannot be written to it; use .mp4" in err
    assert (tmp_path / "out.mkv").read_bytes() == b"keep"


_SIGTERM_MID_WRITE = """
import os, signal, sys, time
from vitok.codecs.neural import VitokCodec

encode_stream = VitokCodec.encode_stream

def write_then_sigterm(self, chunks, fps, out, **kwargs):   # bytes in the temporary file, not yet renamed
    out.write(b"partial")
    out.flush()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)

VitokCodec.encode_stream = write_then_sigterm
from vitok.cli.main import main
main(sys.argv[1:])
"""


def test_sigterm_mid_encode_leaves_no_file(video, tiny1d, tmp_path):
    """`kill` (SIGTERM) killed the process outright, leaving the hidden temporary output beside the target; it now
    ends like Ctrl-C: temporary removed, `error: aborted`, exit 130."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-c", _SIGTERM_MID_WRITE, "encode", str(video), "-o", str(out / "a.vtok"), "--model",
           str(tiny1d[2]), "-q"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 130 and proc.stderr.strip() == "error: aborted", proc.stderr[-3000:]
    assert list(out.iterdir()) == []


def test_non_square_pixels_survive_encode_and_decode(clip, tiny1d, tinygrid, tmp_path):
    """An anamorphic source (carphone itself: 176x144 at 128:117) decoded back to video showed square pixels: the
    header keeps the pixel aspect, decode writes it again, and a resize keeps the picture's shown shape."""
    from fractions import Fraction

    from vitok.data.io import probe_video, write_video

    frames, fps = clip
    src = tmp_path / "anamorphic.mp4"
    write_video(src, frames, fps, sample_aspect_ratio=Fraction(128, 117))
    assert probe_video(src).sample_aspect_ratio == Fraction(128, 117)
    model = str(tiny1d[2])
    _run("encode", str(src), "-o", str(tmp_path / "a.vtok"), "--model", model, "--tokens", "8", "-q")
    shown = _run("info", str(tmp_path / "a.vtok"))
    assert shown["meta"]["sar"] == [128, 117] and shown["sample_aspect_ratio"] == "128/117"
    _run("decode", str(tmp_path / "a.vtok"), "-o", str(tmp_path / "a.mp4"), "--model", model, "-q")
    assert probe_video(tmp_path / "a.mp4").sample_aspect_ratio == Fraction(128, 117)
    r = CliRunner().invoke(cli, ["info", str(tmp_path / "a.mp4")])
    assert r.exit_code == 0 and "64x48 (pixel aspect 128:117)" in r.output

    # resized to 32x32, the picture keeps its shown shape: 128/117 x 64/48 per pixel
    _run("encode", str(src), "-o", str(tmp_path / "b.vtok"), "--model", model, "--tokens", "8", "--size", "32x32", "-q")
    assert _run("info", str(tmp_path / "b.vtok"))["meta"]["sar"] == [512, 351]
    write_video(tmp_path / "wide.mp4", frames, fps, sample_aspect_ratio=Fraction(3, 2))   # shown 96x48
    _run("encode", str(tmp_path / "wide.mp4"), "-o", str(tmp_path / "c.vtok"), "--model", model, "--tokens", "8",
         "-q", "--size", "96x48")   # resized to its shown shape: square pixels, no record
    assert "sar" not in _run("info", str(tmp_path / "c.vtok"))["meta"]
    with pytest.warns(UserWarning, match=r"pixel aspect 128:117 was not kept \(ffv1 in .mkv\)"):
        _run("decode", str(tmp_path / "a.vtok"), "-o", str(tmp_path / "a.mkv"), "--model", model, "-q")
    for out, what in (("a.npy", "a .npy array"), ("pngs_out", "PNG frames")):   # no field for it: said, not dropped
        with pytest.warns(UserWarning, match=rf"{what} cannot keep the pixel aspect 128:117"):
            _run("decode", str(tmp_path / "a.vtok"), "-o", str(tmp_path / out), "--model", model, "-q")
        assert (tmp_path / out).exists()
    for out in ("m.npy", "m_pngs"):   # a decode that fails says why, not what it would drop
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            r = CliRunner().invoke(cli, ["decode", str(tmp_path / "a.vtok"), "-o", str(tmp_path / out), "--model",
                                         str(tinygrid[2]), "-q"])
        assert "model mismatch" in str(r.exception) and not (tmp_path / out).exists(), out
        assert not [w for w in seen if "pixel aspect" in str(w.message)], out

    # a frame folder takes its first frame's aspect, as a single image does (FFmpeg reads a PNG's pHYs as x:y)
    from PIL import Image

    (tmp_path / "pngs").mkdir()
    for i, f in enumerate(frames[:3]):
        Image.fromarray(f).save(tmp_path / "pngs" / f"f{i}.png", dpi=(72, 48))
    _run("encode", str(tmp_path / "pngs"), "-o", str(tmp_path / "d.vtok"), "--model", model, "--tokens", "8", "-q")
    assert _run("info", str(tmp_path / "d.vtok"))["meta"]["sar"] == [3, 2]


def test_a_tampered_pixel_aspect_is_refused(codec1d, clip):
    """The header's sar is checked like every field: a bad record is a one-line BitstreamError naming it."""
    import dataclasses
    from fractions import Fraction

    from vitok.codecs.container import read_vtok, sar_record
    from vitok.codecs.errors import BitstreamError

    frames, fps = clip
    data = codec1d.encode(frames[:8], fps, tokens=8)
    header, _ = read_vtok(data)
    assert "sar" not in header.meta and header.sample_aspect_ratio == 1
    for bad in ([0, 1], [1, 70000], [4, 3, 1], "4:3", [1.5, 1], [True, 1]):
        edited = dataclasses.replace(header, meta={**header.meta, "sar": bad}).pack() + data[len(header.pack()):]
        with pytest.raises(BitstreamError, match="bad sar record in the header"):
            codec1d.decode(edited)
    assert sar_record(Fraction(128, 117)) == [128, 117] and sar_record(Fraction(1)) is None
    assert sar_record(Fraction(10**6, 1)) == [65535, 1] and sar_record(Fraction(1, 10**9)) == [1, 65535]
    num, den = sar_record(Fraction(100003, 99991))   # 16 bits each, the nearest such fraction
    assert max(num, den) <= 65535 and abs(Fraction(num, den) - Fraction(100003, 99991)) < 1e-8
