"""`vitok rd`, `vitok rd plot`, `vitok compare` and the `bench codec` command on tiny inputs."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from vitok.cli.bench_codec import bench_codec
from vitok.cli.main import cli, main
from vitok.evaluation import rd as rd_mod
from vitok.evaluation.compare import match_psnr

H264_OPS = ["--op", "h264:crf=24", "--op", "h264:crf=30", "--op", "h264:crf=36"]


def _invoke(args):
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.filterwarnings("ignore:LPIPS unavailable")
def test_rd_sweeps_reports_resumes_and_replots(tmp_path, small_clip, tiny_model, monkeypatch, is_png):
    out = tmp_path / "results"
    neural = f"vitok:{tiny_model}"
    args = ["rd", str(small_clip), "--codec", "h264", "--codec", neural, *H264_OPS,
            "-o", str(out), "-q"]
    text = _invoke(args)
    assert "BD vs h264 (psnr, akima" in text and neural in text and "bytes as a multiple of h264" in text
    records = json.loads((out / "records.json").read_text())
    ops = [r["op"] for r in records if r["codec"] == neural]
    # the tiny model's own operating points (steps, then token counts), then PSNR-target rate control
    assert {"tokens": 16, "step": 0.5} in ops and any("psnr" in op for op in ops)
    for name in ("plots/rd_face_psnr.png", "plots/rd_mean_psnr.svg", "plots/token_budget_psnr.png",
                 "plots/tokens_per_chunk_hist.png", "plots/side_by_side_face.png", "token_budget.json"):
        assert (out / name).stat().st_size > 0, name
    assert is_png(out / "plots/rd_mean_psnr.png")

    calls = []
    monkeypatch.setattr(rd_mod, "run_job", lambda job: calls.append(job) or pytest.fail("re-encoded"))
    assert "BD vs h264" in _invoke(args)  # everything comes from the cache
    assert calls == []

    (out / "plots" / "rd_mean_psnr.png").unlink()
    text = _invoke(["rd", "plot", str(out), "--x", "kbps", "--method", "pchip", "--json"])
    assert json.loads(text)["bd"]["psnr"][0]["method"] == "pchip"
    assert is_png(out / "plots" / "rd_mean_psnr.png")


def test_rd_errors_are_one_line(tmp_path, cli_error, carphone_path):
    cases = [
        (["rd", str(carphone_path), "--codec", "nope", "-o", str(tmp_path / "a")], "unknown codec 'nope'"),
        (["rd", "--codec", "h264", "-o", str(tmp_path / "b")], "no clips given"),
        (["rd", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "c")], "clip not found"),
        (["rd", "plot", str(tmp_path)], "no RD records"),
        (["rd", "plot", str(carphone_path)], "carphone_pristine.mp4: not RD records (not text"),   # was a traceback
    ]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases.append((["rd", str(carphone_path), "-o", str(busy)], "is not empty"))
    for args, message in cases:
        assert message in cli_error(args)


def test_compare_matches_h264_psnr_and_writes_png(tmp_path, small_clip, tiny_model, is_png, monkeypatch):
    png = tmp_path / "cmp.png"
    text = _invoke(["compare", str(small_clip), "--model", tiny_model, "-o", str(png), "--json"])
    result = json.loads(text)
    assert [r["codec"] for r in result["rows"]] == [f"vitok:{tiny_model}", "h264"]
    assert "crf" in result["rows"][1]["op"] and is_png(png)
    res = CliRunner().invoke(cli, ["compare", str(small_clip), "--model", tiny_model, "-o", str(png)])
    assert res.exit_code != 0 and "exists" in str(res.exception)
    vitok_row, h264 = result["rows"]
    # the tiny model's PSNR is below anything x264 makes up to CRF 51: its row is the closest, not a match
    assert h264["op"]["crf"] == 51 and h264["psnr"] > vitok_row["psnr"] and h264["matched"] is False
    from vitok.codecs.neural import VitokCodec

    devices, init = [], VitokCodec.__init__   # --device reaches the model (a GPU's name, run here on the CPU)
    monkeypatch.setattr("vitok.cli.compare.resolve_device", lambda device: f"{device}:7")
    monkeypatch.setattr(VitokCodec, "__init__", lambda self, *a, device="cpu", **k: (devices.append(device),
                                                                                    init(self, *a, **k))[1])
    text = _invoke(["compare", str(small_clip), "--model", tiny_model, "-o", str(png), "-y", "--threads", "1",
                    "--device", "cuda"])
    assert devices == ["cuda:7"]
    assert "9 frames 64x64 @ 29.97 fps" in text   # carphone's 30000/1001, not rounded to 30
    assert f"note: h264 crf=51 gives {h264['psnr']:.2f} dB, the closest its CRF range comes to vitok's " \
           f"{vitok_row['psnr']:.2f} dB: not a match at equal PSNR" in text


def test_compare_refuses_an_empty_model(carphone9):
    """An empty --model was taken as the current folder (".: not a model directory", or that folder's model)."""
    from vitok.evaluation.compare import compare_codecs
    from vitok.evaluation.errors import EvaluationError

    for model in ("", "vitok:", " "):
        with pytest.raises(EvaluationError, match="--model needs a model: a bundled name or a model folder"):
            compare_codecs(carphone9[0][:2], carphone9[1], model=model)


def test_compare_marks_a_psnr_inside_the_crf_range_matched(small_clip):
    from vitok.data import read_video
    from vitok.evaluation.compare import compare_codecs

    frames, info = read_video(small_clip)
    rows, _, _ = compare_codecs(frames, info.fps, model="vitok-grid", codecs=("h264",))
    assert rows[1]["matched"] is True and 10 < rows[1]["op"]["crf"] < 51
    # the byte ratio is to h264's bytes at exactly vitok's PSNR (between its two nearest CRFs), not the nearer CRF's
    text = _invoke(["compare", str(small_clip), "--model", "vitok-grid", "-o", str(small_clip.parent / "c.png"),
                    "--threads", "1"])
    ratio = rows[0]["bytes"] / rows[1]["bytes_at_psnr"]
    assert f"vitok bytes / h264 bytes at vitok's PSNR: {ratio:.2f}x" in text


def test_compare_times_vitok_warm_like_the_classical_codecs(small_clip, monkeypatch):
    """The classical codecs are timed after match_psnr's encodes; vitok's timed encode and decode come after a
    first frame through both, so neither side carries first-call costs. The warm-up moves compare's clock on by
    1000 s: a timing that took it in would show it."""
    import time
    import types

    from vitok.codecs.neural import VitokCodec
    from vitok.data import read_video
    from vitok.evaluation import compare
    from vitok.evaluation.compare import compare_codecs

    warm_s = 1000.0
    skew = [0.0]   # added to the real clock while and after the warm-up runs
    monkeypatch.setattr(compare, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + skew[0]))
    calls = []
    for method in ("encode", "decode"):
        real = getattr(VitokCodec, method)

        def spy(self, data, *args, _real=real, _method=method, **kw):
            calls.append((_method, len(data)))
            if len(calls) <= 2:   # the warm-up's encode and decode: a slow first call
                skew[0] += warm_s / 2
            return _real(self, data, *args, **kw)

        monkeypatch.setattr(VitokCodec, method, spy)
    frames, info = read_video(small_clip)
    rows, _, _ = compare_codecs(frames, info.fps, model="vitok-grid", codecs=("h264",))
    assert [c[0] for c in calls] == ["encode", "decode", "encode", "decode"]
    assert calls[0][1] == 1 and calls[2][1] == len(frames)   # the warm-up is a frame, the timed encode the clip
    assert skew[0] == warm_s   # the warm-up did move the clock
    assert rows[0]["codec"] == "vitok:vitok-grid"
    assert 0 < rows[0]["encode_s"] < warm_s / 4 and 0 < rows[0]["decode_s"] < warm_s / 4   # neither timed it


def test_match_psnr_bisects_to_the_nearest_crf(carphone9):
    from vitok.codecs import get_codec

    frames, fps = carphone9[0][:3], carphone9[1]
    codec = get_codec("h264")
    # one thread: x264's output may move by a few bytes between runs on a loaded machine, and the bytes are compared
    op, data, decoded, value, matched, at_target = match_psnr(codec, frames, fps, 30.0, threads=1)
    crf = op["crf"]
    assert matched is True
    from vitok.evaluation.metrics import psnr

    neighbours = [psnr(frames, codec.decode(codec.encode(frames, fps, crf=c, threads=1))[0])
                  for c in (crf - 1, crf + 1)]
    assert neighbours[0] > value > neighbours[1]                     # PSNR falls as the CRF rises
    assert abs(value - 30) <= min(abs(n - 30) for n in neighbours)   # and neither neighbour is nearer 30 dB
    assert value == pytest.approx(psnr(frames, decoded)) and len(data) > 0
    # the bytes at exactly 30 dB lie between those of the two CRFs around it, linear in log-bytes
    lo, hi = (crf - 1, crf) if value < 30 else (crf, crf + 1)
    d_lo, d_hi = (codec.encode(frames, fps, crf=c, threads=1) for c in (lo, hi))
    q_lo, q_hi = (psnr(frames, codec.decode(d)[0]) for d in (d_lo, d_hi))
    b_lo, b_hi = codec.rate_bytes(d_lo), codec.rate_bytes(d_hi)
    assert q_lo >= 30 > q_hi and b_lo > at_target > b_hi
    assert at_target == pytest.approx(np.exp(np.interp(30, [q_hi, q_lo], np.log([b_hi, b_lo]))), rel=1e-9)


def test_match_psnr_past_the_crf_range_is_the_end_setting_not_a_match(carphone9):
    from vitok.codecs import get_codec

    frames, fps = carphone9[0][:2], carphone9[1]
    codec = get_codec("h264")
    high, low = match_psnr(codec, frames, fps, 200.0), match_psnr(codec, frames, fps, 1.0)
    assert (high.op["crf"], high.matched, high.bytes_at_target) == (0, False, None) and high.psnr < 200
    assert (low.op["crf"], low.matched) == (51, False) and low.psnr > 1


def test_bench_codec_times_each_codec_with_x264_reference(small_clip, tiny_model):
    import torch

    threads = torch.get_num_threads()  # the bench sets torch's count: keep this process's
    args = ["--codec", "h264", "--op", "h264:crf=30", "--codec", f"vitok:{tiny_model}", "--clip", str(small_clip),
            "--frames", "5", "--repeat", "1", "--same-process", "--json", "-q"]
    res = CliRunner().invoke(bench_codec, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["rows"]
    assert [(r["codec"], r["reference"]) for r in rows] == [("h264", True), ("h264", False),
                                                             (f"vitok:{tiny_model}", False)]
    assert rows[0]["op"] == {"crf": 23, "preset": "medium"} and rows[1]["op"] == {"crf": 30}
    for r in rows:
        assert r["encode_fps"] > 0 and r["decode_fps"] > 0 and r["encode_peak_mb"] >= 0 and r["frames"] == 5
        assert np.isfinite(r["psnr"]) and r["threads"] == threads
    # the model's load is measured apart from its first encode; classical codecs load nothing
    assert rows[0]["load_peak_mb"] is None and rows[2]["load_peak_mb"] >= 0
    # bytes is the rate RD counts (h264: the elementary stream); file_bytes the file with its mp4 boxes
    assert rows[0]["file_bytes"] > rows[0]["bytes"] and rows[2]["file_bytes"] == rows[2]["bytes"]
    text = CliRunner().invoke(bench_codec, args[:-2] + ["-q"], catch_exceptions=False).output
    assert "(reference)" in text and "enc fps" in text and "load MiB" in text
    assert f"torch threads {threads}, classical codec threads auto" in text
    pinned = CliRunner().invoke(bench_codec, [*args, "--threads", str(threads)], catch_exceptions=False).output
    rows = json.loads(pinned)["rows"]  # the encoders get the count too, unless an op sets its own
    assert rows[0]["op"] == {"threads": threads, "crf": 23, "preset": "medium"}
    assert rows[1]["op"] == {"threads": threads, "crf": 30} and rows[2]["op"] == {}


def test_bench_codec_threads_reach_the_classical_decoders(small_clip, monkeypatch):
    """--threads caps the classical decoders too (they take FFmpeg's automatic count otherwise): every decode the
    bench makes gets the count."""
    import torch

    from vitok.codecs.classical import ClassicalCodec

    threads, seen, real = torch.get_num_threads(), [], ClassicalCodec.decode

    def decode(self, data: bytes, *, threads: int = 0):
        seen.append(threads)
        return real(self, data, threads=threads)

    monkeypatch.setattr(ClassicalCodec, "decode", decode)
    args = ["--codec", "h265", "--clip", str(small_clip), "--frames", "3", "--repeat", "1", "--same-process", "-q"]
    res = CliRunner().invoke(bench_codec, [*args, "--threads", str(threads)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"classical codec threads {threads}" in res.output and len(seen) == 4 and set(seen) == {threads}


def test_bench_keeps_threads_from_a_decode_that_does_not_take_them(small_clip):
    """A registered codec with a ``threads`` encode knob and the interface's plain ``decode(data)`` is benchmarked
    as before (the decode thread count went to every such codec, a TypeError)."""
    from vitok.codecs import get_codec
    from vitok.data.io import read_video
    from vitok.evaluation.bench import bench_one

    h264 = get_codec("h264")

    class Plain:
        knobs = ("crf", "threads")
        encode = staticmethod(h264.encode)
        rate_bytes = staticmethod(h264.rate_bytes)

        def decode(self, data: bytes):
            return h264.decode(data)

    frames, info = read_video(small_clip, num_frames=3)
    row = bench_one(Plain(), frames, info.fps, {"threads": 1})
    assert row["bytes"] > 0 and row["psnr"] > 20


def test_bench_codec_isolates_each_codec_in_a_fresh_process(monkeypatch):
    """By default every row is measured in a spawned process (this process's bench_one is never called), and a model's
    first encode there shows the memory it allocates (its decode of 4 small frames may reuse what the encode freed,
    so only its presence is checked)."""
    from vitok.evaluation import bench

    monkeypatch.setattr(bench, "bench_one", lambda *a, **k: pytest.fail("bench_one ran in the parent process"))
    args = ["--codec", "vitok:vitok-grid", "--clip", "carphone", "--frames", "4", "--repeat", "1", "--json", "-q"]
    res = CliRunner().invoke(bench_codec, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["rows"]
    assert [r["codec"] for r in rows] == ["h264", "vitok:vitok-grid"]
    assert rows[1]["encode_peak_mb"] > 1 and rows[1]["decode_peak_mb"] >= 0 and rows[1]["psnr"] > 20


def test_bench_codec_refuses_an_unknown_codec_before_timing_any(small_clip, monkeypatch, capsys):
    from vitok.evaluation import bench

    timed = []
    monkeypatch.setattr(bench, "bench_one", lambda *a, **k: timed.append(a[0]))
    monkeypatch.setattr(bench, "_bench_isolated", lambda *a, **k: timed.append(a[0]))   # the default: a child
    with pytest.raises(SystemExit) as e:
        main(["bench", "codec", "--codec", "h265", "--codec", "nosuch", "--clip", str(small_clip), "--frames", "3",
              "-q"])
    assert e.value.code != 0 and timed == []
    assert "error: unknown codec 'nosuch'" in capsys.readouterr().err


def test_sigterm_stops_bench_codec_and_its_worker_at_once(small_clip, tmp_path):
    """The benchmark runs in a spawned worker; SIGTERM left the command waiting for its whole benchmark."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "vitok.cli.main", "bench", "codec", "--clip", str(small_clip),
                             "--frames", "3", "--repeat", "100000", "--threads", "1", "--codec", "h264", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        time.sleep(8)   # past the worker's start: it is in its 100000 rounds
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "error: aborted" in err and time.monotonic() - t0 < 10
    finally:   # a failure must not leave the command or its worker running (they share its session)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def test_a_codec_named_twice_is_swept_once_and_its_records_plot(tmp_path, small_clip):
    out = tmp_path / "rd"
    _invoke(["rd", str(small_clip), "--codec", "h264", "--codec", "h265", "--codec", "h264", "--frames", "3",
             "--op", "h264:crf=30", "--op", "h265:crf=30", "-o", str(out), "-q"])
    records = json.loads((out / "records.json").read_text())
    assert sorted(r["codec"] for r in records) == ["h264", "h265"]
    assert "bytes as a multiple of h264" in _invoke(["rd", "plot", str(out)])   # refused as two sweeps before


def test_a_bench_process_that_dies_is_an_error_not_a_wait():
    """Killed for memory or crashed in an encoder, the worker took its task with it and the command waited forever."""
    import multiprocessing
    import os
    import signal
    import threading
    import time
    from fractions import Fraction

    from vitok.evaluation import bench
    from vitok.evaluation.errors import EvaluationError

    def kill_the_worker():
        deadline = time.monotonic() + 60
        while not multiprocessing.active_children() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)   # inside its rounds
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)

    def hung(signum, frame):
        raise AssertionError("still waiting for the dead worker after 120 s")

    threading.Thread(target=kill_the_worker, daemon=True).start()
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    was = signal.signal(signal.SIGALRM, hung)   # the bug this guards is a wait without end: fail it, not hang
    signal.alarm(120)
    try:
        with pytest.raises(EvaluationError, match=r"h264: the benchmark process died \(exit code -9\)"):
            bench._bench_isolated("h264", frames, Fraction(8), {}, 100000, False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, was)
        for child in multiprocessing.active_children():
            child.kill()


def test_compare_checks_codecs_before_encoding_and_its_json_holds_the_clip(small_clip, tiny_model, tmp_path,
                                                                           cli_error, monkeypatch):
    from vitok.codecs.neural import VitokCodec

    def encoded(*args, **kwargs):
        pytest.fail("vitok encoded before the codecs were checked")

    with monkeypatch.context() as m:
        m.setattr(VitokCodec, "encode", encoded)
        assert "unknown codec 'nosuch'" in cli_error(["compare", str(small_clip), "--model", tiny_model, "--codec",
                                                     "h264", "--codec", "nosuch", "-o", str(tmp_path / "c.png")])
    result = json.loads(_invoke(["compare", str(small_clip), "--model", tiny_model, "--frames", "4", "-o",
                                 str(tmp_path / "c.png"), "--json"]))
    assert (result["frames"], result["width"], result["height"]) == (4, 64, 64) and result["fps"]


def test_compare_refuses_vitok_codecs_and_names_it_would_not_write(tmp_path, cli_error, small_clip, tiny_model):
    """--codec takes classical codecs only (vitok goes in --model), and -o must be the PNG actually written."""
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"mine")
    base = ["compare", str(small_clip), "--model", tiny_model, "--frames", "4"]
    assert "ending in .png" in cli_error([*base, "-o", str(tmp_path / "keep.jpg")])
    assert keep.read_bytes() == b"mine" and not (tmp_path / "keep.jpg").exists()
    err = cli_error([*base, "--codec", f"vitok:{tiny_model}", "-o", str(tmp_path / "c.png")])
    assert "classical codecs" in err and "--model" in err


def test_op_keys_and_codecs_are_checked_before_any_work(tmp_path, cli_error, small_clip, tiny_model, monkeypatch):
    from vitok.evaluation import bench

    monkeypatch.setattr(rd_mod, "run_job", lambda job: pytest.fail("encoded"))
    monkeypatch.setattr(bench, "bench_one", lambda *a, **k: pytest.fail("timed"))
    neural = f"vitok:{tiny_model}"
    rd = ["rd", str(small_clip), "-o", str(tmp_path / "rd"), "-q"]
    bench_args = ["bench", "codec", "--clip", str(small_clip), "--frames", "3", "--repeat", "1", "--same-process", "-q"]
    cases = [
        ([*rd, "--codec", "h264", "--op", "h264:zzz=1"], "h264 has no knob 'zzz' (knobs: crf, preset"),
        ([*rd, "--codec", neural, "--op", f"{neural}:zzz=1"], "has no knob 'zzz' (knobs: step, tokens"),
        ([*rd, "--codec", "h264", "--op", "h265:crf=20"], "codec h265 is not selected"),
        ([*rd, "--codec", "h264", "--op", "h264:crf=30,tune=bad"], "h264: unknown tune 'bad'; one of film"),
        ([*rd, "--codec", "h265", "--op", "h265:crf=60"], "h265: crf must be an integer in 0..51, got 60"),
        ([*rd, "--codec", "vp9", "--op", "vp9:tune=psnr"], "vp9 has no knob 'tune'"),
        ([*rd, "--codec", neural, "--op", f"{neural}:overlap=5"], f"{neural}:overlap=5: overlap must be a whole "
                                                                   "number of pixels, a multiple of"),
        ([*rd, "--codec", neural, "--op", f"{neural}:tokens=99"], "tokens must be an integer in 1..16"),
        ([*rd, "--codec", neural, "--op", f"{neural}:tokens=2,psnr=30"], "give at most one of tokens, bytes, psnr"),
        ([*rd, "--codec", "vitok:vitok-grid", "--op", "vitok:vitok-grid:step=0.5,bytes=9000"],
         "--bytes/--psnr on a grid model choose the step per chunk: do not also give --step"),
        ([*bench_args, "--codec", neural, "--op", f"{neural}:step=-1"], "quantization step must be a positive number"),
        ([*bench_args, "--codec", "h264", "--op", "h264:tune=bad"], "h264: unknown tune 'bad'"),
        ([*bench_args, "--codec", "h264", "--op", "h264:zzz=1"], "h264 has no knob 'zzz'"),
        ([*bench_args, "--codec", neural, "--op", "h264:crf=20"], "codec h264 is not selected"),
        ([*bench_args, "--codec", "h265", "--op", "h265:crf=20", "--op", "h265:crf=40"],
         "--op: one operating point per codec here, h265 has 2"),   # the second was dropped unsaid
    ]
    for args, message in cases:
        assert message in cli_error(args)
    assert not (tmp_path / "rd").exists()


def test_rd_plot_checks_the_fields_it_reads(tmp_path, cli_error):
    good = {"clip": "a", "codec": "h264", "op": {"crf": 20}, "bytes": 900, "bpp": 0.1, "psnr": 31.5}
    cases = [({"bpp": "x"}, "record 1: field 'bpp' must be a number, got \"x\""),
             ({"codec": []}, "record 1: field 'codec' must be a string"),
             ({"bytes": None}, "record 1: field 'bytes' is missing"),
             ({"op": {"tokens": "many"}}, "record 1: field 'op' must be"),
             ({"tokens_per_chunk": ["x"]}, "record 1: field 'tokens_per_chunk' must be a list of token counts")]
    for i, (change, message) in enumerate(cases):
        path = tmp_path / f"records{i}.json"
        path.write_text(json.dumps([good, {**good, **change}]))
        assert message in cli_error(["rd", "plot", str(path)])


def test_rd_help_says_what_eval_means():
    text = CliRunner().invoke(cli, ["rd", "--help"]).output
    assert "vitok rd eval" in text and "the 8 held-out sample segments" in text


@pytest.mark.filterwarnings("ignore:LPIPS unavailable")
def test_rd_and_bench_show_no_bars_when_stderr_is_not_a_terminal(tmp_path, small_clip):
    """Without -q, bars show on a terminal only (as encode's and decode's): a captured stderr holds no
    carriage-return bar lines."""
    for args in (["rd", str(small_clip), "--codec", "h264", "--frames", "3", "--op", "h264:crf=30", "-o",
                  str(tmp_path / "rd")],
                 ["bench", "codec", "--clip", str(small_clip), "--frames", "3", "--repeat", "1", "--codec", "h264",
                  "--same-process"]):
        r = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert "\r" not in r.stderr and "%|" not in r.stderr, args


def test_rd_fresh_keeps_the_old_cache_until_its_sweep_finishes(tmp_path, small_clip, cli_error, monkeypatch):
    """--fresh deleted the cache before anything was checked: a typo lost it, and the next run was refused."""
    from vitok.codecs.classical import ClassicalCodec
    from vitok.codecs.errors import CodecError

    out = tmp_path / "rd"
    run = ["rd", str(small_clip), "--codec", "h264", "--frames", "3", "-o", str(out), "-q"]
    _invoke([*run, "--op", "h264:crf=30"])
    cache = (out / rd_mod.CACHE_FILE).read_bytes()
    for typo, message in ((["--codec", "h265x"], "unknown codec 'h265x'"), (["--op", "h264:zzz=1"], "no knob 'zzz'")):
        assert message in cli_error([*run, *typo, "--fresh"])
        assert (out / rd_mod.CACHE_FILE).read_bytes() == cache, typo
    real = ClassicalCodec.encode

    def fails_at_crf_40(self, frames, fps, **op):
        if op.get("crf") == 40:
            raise CodecError("encoder failed")
        return real(self, frames, fps, **op)

    with monkeypatch.context() as m:   # a fresh run that fails after it measured crf=30 again
        m.setattr(ClassicalCodec, "encode", fails_at_crf_40)
        assert "encoder failed" in cli_error([*run, "--op", "h264:crf=30", "--op", "h264:crf=40", "--fresh"])
    assert (out / rd_mod.CACHE_FILE).read_bytes() == cache and not (out / rd_mod.FRESH_FILE).exists()
    (out / rd_mod.FRESH_FILE).write_text("{}\n")   # as a fresh run killed with SIGKILL leaves it
    with monkeypatch.context() as m:
        m.setattr(rd_mod, "run_job", lambda job: pytest.fail("re-encoded"))
        _invoke([*run, "--op", "h264:crf=30"])   # the old cache still serves the plain run
    assert not (out / rd_mod.FRESH_FILE).exists()   # and the plain run cleared the leftover
    _invoke([*run, "--op", "h264:crf=40"])
    before = rd_mod.load_cache(out)
    _invoke([*run, "--op", "h264:crf=40", "--fresh"])
    after = rd_mod.load_cache(out)
    assert [r["op"] for r in after.values()] == [{"crf": 40}, {"crf": 30}]
    (key30, rec30), = ((k, r) for k, r in before.items() if r["op"] == {"crf": 30})
    assert after[key30] == rec30   # a point the fresh sweep did not cover keeps its record


def test_rd_fresh_keeps_other_codecs_records(tmp_path, small_clip, monkeypatch):
    """A fresh sweep of one codec dropped every other codec's records from the folder's cache."""
    out = tmp_path / "rd"
    run = ["rd", str(small_clip), "--frames", "3", "-o", str(out), "-q"]
    _invoke([*run, "--codec", "h264", "--op", "h264:crf=30", "--codec", "h265", "--op", "h265:crf=30"])
    _invoke([*run, "--codec", "h265", "--op", "h265:crf=30", "--fresh"])
    with monkeypatch.context() as m:   # both codecs' points are served from the cache
        m.setattr(rd_mod, "run_job", lambda job: pytest.fail("re-encoded"))
        _invoke([*run, "--codec", "h264", "--op", "h264:crf=30", "--codec", "h265", "--op", "h265:crf=30"])
    assert sorted(r["codec"] for r in rd_mod.load_cache(out).values()) == ["h264", "h265"]


def test_a_failed_rd_run_leaves_no_folder_it_made(tmp_path, small_clip, cli_error):
    """An error in the first point left the empty output folder behind; a folder that was there stays."""
    bad = ["rd", str(small_clip), "--codec", "h264", "--op", "h264:crf=abc", "--frames", "3", "-q", "-o"]
    assert "crf must be an integer" in cli_error([*bad, str(tmp_path / "new" / "rd")])
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    assert "crf must be an integer" in cli_error([*bad, str(tmp_path / "mine")])
    assert (tmp_path / "mine").is_dir()


def test_a_cache_line_that_is_not_utf8_is_skipped(tmp_path, small_clip, monkeypatch):
    """A stray byte that does not decode stopped every later run with a traceback."""
    out = tmp_path / "rd"
    run = ["rd", str(small_clip), "--codec", "h264", "--op", "h264:crf=30", "--frames", "3", "-o", str(out), "-q"]
    _invoke(run)
    with open(out / rd_mod.CACHE_FILE, "ab") as f:
        f.write(b"\xff\n")
    monkeypatch.setattr(rd_mod, "run_job", lambda job: pytest.fail("re-encoded"))
    assert "wrote" in _invoke(run)


def test_rd_refine_adds_a_refined_curve_of_each_vitok_codec(tmp_path, small_clip, tiny_model, cli_error):
    """--refine N sweeps each vitok codec's points twice, as given and refined, the refined ones as their own curve
    CODEC+refineN (rate control stays with the points as given); h264 is swept once."""
    neural = f"vitok:{tiny_model}"
    out = tmp_path / "rd"
    ops = [f"{neural}:tokens={k},step=1" for k in (2, 8, 16)]
    text = _invoke(["rd", str(small_clip), "--codec", "h264", *H264_OPS, "--codec", neural,
                    *(a for op in ops for a in ("--op", op)), "--refine", "2", "--frames", "3", "-o", str(out), "-q"])
    assert f"{neural}+refine2" in text
    records = json.loads((out / "records.json").read_text())
    curves = {}
    for r in records:
        curves.setdefault(r["codec"], []).append(r["op"])
    assert sorted(curves) == sorted(["h264", neural, f"{neural}+refine2"])
    assert curves[f"{neural}+refine2"] == [{**op, "refine": 2} for op in curves[neural]]
    assert len(curves[neural]) == 3
    r = CliRunner().invoke(cli, ["rd", str(small_clip), "--refine", "0", "-o", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "0 is not in the range" in r.output
    assert "select one with --codec vitok:NAME" in cli_error(["rd", str(small_clip), "--codec", "h264", "--refine",
                                                              "2", "-o", str(tmp_path / "bad")])


def test_rd_refine_sweeps_rate_control_points_as_given(tmp_path, small_clip, tiny_model):
    """A PSNR-target point, refined, is the point as given with its tokens refined (rate control refines, per chunk
    or per tile, the counts it looks at)."""
    neural = f"vitok:{tiny_model}"
    out = tmp_path / "rd"
    _invoke(["rd", str(small_clip), "--codec", neural, "--op", f"{neural}:psnr=12", "--refine", "2", "--frames", "3",
             "--anchor", neural, "-o", str(out), "-q"])
    records = json.loads((out / "records.json").read_text())
    assert [r["op"] for r in records] == [{"psnr": 12}, {"psnr": 12, "refine": 2}]


def test_compare_refine_codes_vitok_refined(tmp_path, small_clip, tiny_model):
    """`vitok compare --refine N` encodes vitok's side with its tokens refined (its row says so); h264 is matched to
    that PSNR as before."""
    result = json.loads(_invoke(["compare", str(small_clip), "--model", tiny_model, "--frames", "8", "--refine", "2",
                                 "-o", str(tmp_path / "cmp.png"), "--json"]))
    assert result["rows"][0]["op"] == {"refine": 2} and "crf" in result["rows"][1]["op"]
