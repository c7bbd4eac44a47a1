"""Real processes: SIGKILL mid-run then --resume, and a 2-process DDP run under torchrun (gloo, CPU).

Subprocesses run with cwd = a temp dir: the repo root on sys.path would shadow the installed package mapping."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

TINY = ["--set", "device=cpu", "--set", "data.size=16", "--set", "eval.size=16", "--set", "eval.num_frames=8",
        "--set", "export.stats_clips=2", "--set", "loss.ssim=0", "--set", "loss.consistency=0", "-q"]
# (no SSIM loss: piq imports torchvision, seconds per process; the final evaluation still uses it)


@pytest.mark.slow
def test_sigkill_then_resume_completes(tmp_path, cli_cmd, sub_env, metrics):
    steps = 40
    cmd = [*cli_cmd, "train", "tiny-vit", "--out", "run", "--set", f"schedule.steps={steps}",
           "--set", "checkpoint.every=5", *TINY]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=sub_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pointer = tmp_path / "run" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 120
    while not pointer.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    killed_at = json.loads(pointer.read_text())["step"]
    assert 5 <= killed_at < steps
    done = subprocess.run([*cmd, "--resume", "--json"], cwd=tmp_path, env=sub_env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout)["steps"] == steps
    assert f"resumed from" in done.stderr.decode()
    assert json.loads(pointer.read_text())["step"] == steps
    logged = [r["step"] for r in metrics(tmp_path / "run") if "loss" in r]
    assert logged == list(range(1, steps + 1))                      # every step exactly once, none lost or doubled
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path, sub_env, metrics):
    """Two processes with a data folder among the sources (rank 0 scans it, the other trains on its listing)."""
    import numpy as np

    from vitok.data import write_video

    (tmp_path / "clips").mkdir()
    write_video(tmp_path / "clips" / "a.mkv", np.random.default_rng(0).integers(0, 256, (12, 24, 24, 3), np.uint8),
                25, codec="ffv1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "vitok.cli.main", "train", "tiny-vit", "--out", "run", "--set", "schedule.steps=4",
           "--set", "checkpoint.every=2", "--set", "log_every=1", "--set", "data.folder=clips", *TINY]
    done = subprocess.run(cmd, cwd=tmp_path, env=sub_env, capture_output=True, timeout=300)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    assert out.count("trained vit-tiny for 4 steps") == 1          # only rank 0 reports
    assert "on cpu x 2" in err and err.count("training vit-tiny") == 1
    run = tmp_path / "run"
    recs = metrics(run)
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4]   # one writer
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step-00000002",
                                                                       "step-00000004"]
    state = json.loads((run / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["state"]["world"] == 2 and len(state["state"]["rng"]) == 2   # every rank's RNG saved
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "eval", "metrics.jsonl", "model",
                                                     "train_info.json"]
    assert not [p for p in run.rglob(".*")]                           # no stray temp files
    # the newest checkpoint unreadable: rank 0 moves it aside and both ranks resume from step 2, to step 6
    (run / "checkpoints" / "step-00000004" / "tensors.safetensors").write_bytes(b"\0" * 10)
    resumed = [a if a != "schedule.steps=4" else "schedule.steps=6" for a in cmd] + ["--resume"]
    done = subprocess.run(resumed, cwd=tmp_path, env=sub_env, capture_output=True, timeout=300)
    err = done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    assert err.count("moved it to unreadable-step-00000004 and trying step-00000002") == 1
    assert [r["step"] for r in metrics(run) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    sessions = json.loads((run / "train_info.json").read_text())["sessions"]
    assert [(s["start_step"], s["end_step"], s["processes"]) for s in sessions] == [(0, 2, 2), (2, 6, 2)]


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step(tmp_path, cli_cmd, sub_env, metrics):
    """`kill <pid>` (SIGTERM) on a run with no checkpoint due: it saves the step it was on, exits 130 with one line
    saying so, and loses no training time (train_seconds carries on from the stop)."""
    base = [*cli_cmd, "train", "tiny-vit", "--out", "run", "--set", "checkpoint.every=0", "--set", "log_every=1", *TINY]
    proc = subprocess.Popen([*base, "--set", "schedule.steps=100000"], cwd=tmp_path, env=sub_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while (not log.exists() or len(log.read_text().splitlines()) < 3) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err[-2000:]
    stopped = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["step"]
    assert "Traceback" not in err and f"error: stopped at step {stopped} (SIGTERM): checkpoint" in err
    assert stopped >= 3
    assert [r["step"] for r in metrics(tmp_path / "run") if "loss" in r] == list(range(1, stopped + 1))
    done = subprocess.run([*base, "--set", f"schedule.steps={stopped + 2}", "--resume", "--json"],
                          cwd=tmp_path, env=sub_env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout)["steps"] == stopped + 2
