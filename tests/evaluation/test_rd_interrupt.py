"""Ctrl-C in a parallel RD sweep: the terminal signals the whole process group, workers included."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process groups from /proc")


def _process(pid: int) -> tuple[str, int, str] | None:
    """``(state, process group, command line)`` of a process, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
    return state, int(pgrp), cmd


def _group(pgid: int) -> dict[int, str]:
    """The running processes of process group ``pgid``: pid -> command line."""
    procs = {int(e.name): _process(int(e.name)) for e in Path("/proc").iterdir() if e.name.isdigit()}
    return {pid: p[2] for pid, p in procs.items() if p and p[1] == pgid and p[0] != "Z"}


def _alive(pids) -> dict[int, str]:
    """Those of ``pids`` still running (zombies have ended): pid -> command line."""
    return {pid: p[2] for pid in pids if (p := _process(pid)) and p[0] != "Z"}


def test_ctrl_c_stops_a_parallel_rd_sweep_and_its_workers_at_once(carphone_path, tmp_path):
    """Ctrl-C reached the workers too: jobs already handed to them ran to their end before the command did, and a
    second Ctrl-C left it waiting forever (after `error: aborted`) on workers that were never told to stop."""
    from vitok.evaluation.rd import CACHE_FILE, load_cache

    out = tmp_path / "rd"
    # x265 at placebo: 10-20 s a job on one thread, far longer than the command may take to stop
    slow = [arg for crf in range(20, 40) for arg in ("--op", f"h265:crf={crf},preset=placebo")]
    proc = subprocess.Popen([sys.executable, "-m", "vitok.cli.main", "rd", "run", str(carphone_path), "--codec", "h264",
                             "--codec", "h265", "--op", "h264:crf=30,preset=ultrafast", *slow, "--workers", "2",
                             "-o", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ((out / CACHE_FILE).is_file() and (out / CACHE_FILE).stat().st_size > 0):   # the quick point
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no record within 60 s"
            time.sleep(0.05)
        members = _group(proc.pid)
        workers = [pid for pid, cmd in members.items() if "multiprocessing.spawn" in cmd]
        assert workers and proc.poll() is None   # the pool is at work on the slow points
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)   # Ctrl-C at a terminal: the command and its workers alike
        again = False
        try:   # (a few seconds here, most of them the command's and its workers' exits: a loaded machine's allowance)
            _, err = proc.communicate(timeout=8)
        except subprocess.TimeoutExpired:   # pressed again, as one does: that must not hang either
            again = True
            os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
        assert "error: aborted" in err, err
        assert not again, f"still running 8 s after Ctrl-C; ended {took:.1f} s after it, with a second one"
        assert proc.returncode == 130, err
        left = _alive(members)
        for _ in range(50):   # the pool's resource tracker leaves once the command has gone
            if not left:
                break
            time.sleep(0.1)
            left = _alive(members)
        assert not left, f"still running: {left}"
        done = load_cache(out)   # records measured before the interrupt stay, for a rerun to resume from
        assert done and len(done) < 21
        assert not [p for p in out.rglob(".*")], "a stopped worker left a temporary file"
    finally:   # a failure must not leave the command or its workers running (they share its session)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
