"""The `vitok` entry point: version, help, and the one-line error contract."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from vitok.cli.main import cli, main
from vitok.data.errors import VitokError


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code in (0, None)
    assert "vitok" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("encode", "decode", "info", "models", "rd", "bench"):
        assert name in out


@pytest.mark.parametrize("args", [[], ["bench"], ["latents"], ["rd"]])
def test_a_group_without_a_command_shows_its_help_as_laid_out(capsys, args):
    """`vitok` or `vitok bench` alone: click's help, line by line on stderr, exit 2; not one flattened error line."""
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"Usage: vitok {' '.join(args)}".rstrip() + " [OPTIONS] COMMAND")
    assert "\nCommands:\n" in err and not err.startswith("error")


def test_user_error_is_one_line_without_traceback(capsys, monkeypatch):
    @click.command()
    def boom() -> None:
        raise VitokError("something the user can fix")

    monkeypatch.setitem(cli.lazy_commands, "boom", "vitok.cli.main:cli")  # make the name known
    monkeypatch.setattr(type(cli), "get_command", lambda self, ctx, name: boom if name == "boom" else None)
    with pytest.raises(SystemExit) as e:
        main(["boom"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err == "error: something the user can fix\n"


def test_a_stop_every_torchrun_process_raises_is_said_once(capsys, monkeypatch):
    """Under torchrun each worker raises the same stop (or divergence) error: rank 0 prints it, the others only exit
    with its code; an error of one rank alone is printed by that rank."""
    from vitok.train.trainer import TrainingStopped

    for exc, rank, line in [(TrainingStopped("stopped at step 3"), "0", "error: stopped at step 3\n"),
                            (TrainingStopped("stopped at step 3"), "1", ""),
                            (VitokError("rank-only trouble"), "1", "error: rank-only trouble\n"),
                            (TrainingStopped("stopped at step 3"), "1 alone", "error: stopped at step 3\n"),
                            (TrainingStopped("stopped at step 3"), "1 unset", "error: stopped at step 3\n")]:
        @click.command()
        def boom(exc=exc) -> None:
            raise exc

        monkeypatch.setitem(cli.lazy_commands, "boom", "vitok.cli.main:cli")
        monkeypatch.setattr(type(cli), "get_command", lambda self, ctx, name, cmd=boom: cmd if name == "boom" else None)
        monkeypatch.setenv("RANK", rank.split()[0])   # "1 alone": a RANK a single process inherited, not torchrun's
        monkeypatch.setenv("WORLD_SIZE", {"alone": "1", "unset": ""}.get(rank.split()[-1], "2"))
        with pytest.raises(SystemExit) as e:
            main(["boom"])
        assert e.value.code == exc.exit_code and capsys.readouterr().err == line


def test_os_errors_are_one_line_naming_the_path(capsys, monkeypatch):
    """An output under a file, a full disk, a file over the size limit: the user's to fix, so one line, exit 1."""
    import errno

    cases = [(NotADirectoryError(errno.ENOTDIR, "Not a directory", "a.mp4/t"), "error: Not a directory: a.mp4/t\n"),
             (OSError(errno.EFBIG, "File too large", "big.vtok"), "error: File too large: big.vtok\n"),
             (OSError(errno.ENOSPC, "No space left on device"), "error: No space left on device\n")]
    monkeypatch.setitem(cli.lazy_commands, "boom", "vitok.cli.main:cli")
    for exc, line in cases:
        @click.command()
        def boom(exc=exc) -> None:
            raise exc

        monkeypatch.setattr(type(cli), "get_command", lambda self, ctx, name, cmd=boom: cmd if name == "boom" else None)
        with pytest.raises(SystemExit) as e:
            main(["boom"])
        assert e.value.code == 1 and capsys.readouterr().err == line


def test_running_out_of_memory_is_one_line(capsys, monkeypatch):
    """Out of memory (an oversized --size: torch's CPU allocator; Python's MemoryError; CUDA) is one line, exit 1;
    any other RuntimeError is a bug and keeps its traceback."""
    import torch

    cases = [(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 120000000000 bytes. Error code 12 (Cannot allocate memory)"),
              "error: out of memory (tried to allocate 120000000000 bytes)\n"),
             (MemoryError(), "error: out of memory (MemoryError)\n"),
             (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity"),
              "error: out of memory (tried to allocate 20.00 GiB)\n")]
    monkeypatch.setitem(cli.lazy_commands, "boom", "vitok.cli.main:cli")
    for exc, line in [*cases, (RuntimeError("shape mismatch"), None)]:
        @click.command()
        def boom(exc=exc) -> None:
            raise exc

        monkeypatch.setattr(type(cli), "get_command", lambda self, ctx, name, cmd=boom: cmd if name == "boom" else None)
        if line is None:
            with pytest.raises(RuntimeError, match="shape mismatch"):
                main(["boom"])
            continue
        with pytest.raises(SystemExit) as e:
            main(["boom"])
        assert e.value.code == 1 and capsys.readouterr().err == line


@pytest.mark.parametrize("args, message", [
    (["no-such-command"], "No such command 'no-such-command'. (see 'vitok --help')"),
    (["rd", "plot", "missing/"], "Invalid value for 'RESULTS': Path 'missing/' does not exist. (see 'vitok rd plot "
                                 "--help')"),
    (["encode", "x.mp4", "-o", "x.vtok", "--psnr", "28", "--bytes", "1000"], "give at most one of --tokens, "
                                                                             "--bytes, --psnr"),
    (["demo", "--clip", "foo"], "Invalid value for '--clip': 'foo' is not one of"),
    (["encode"], "Missing argument 'INPUT'. (see 'vitok encode --help')"),
    (["encode", "x.mp4", "-o", "x.vtok", "--debug"], "No such option '--debug'. (it goes before the command: vitok "
                                                     "--debug ...)"),
])
def test_bad_options_are_one_line_errors(capsys, tmp_path, monkeypatch, args, message):
    """Click's usage errors printed its three-line block (usage, hint, error) where every other user error is one
    line."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_console_script_runs(tmp_path: Path):
    exe = shutil.which("vitok", path=str(Path(sys.executable).parent))
    assert exe, "the vitok console script is installed next to the interpreter"
    r = subprocess.run([exe, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "vitok" in r.stdout
    r = subprocess.run([exe, "info", str(tmp_path / "missing.vtok")], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr


def test_warnings_are_one_line(capsys):
    """A library warning (e.g. LPIPS weights missing) reaches the shell as `warning: ...`, not a source line."""
    import warnings

    from vitok.cli.main import one_line_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        one_line_warnings()
        warnings.warn("LPIPS unavailable: backbone weights not found", RuntimeWarning)
    err = capsys.readouterr().err
    assert err == "warning: LPIPS unavailable: backbone weights not found\n"


def test_json_output_is_valid_json_when_a_figure_is_not_finite(capsys):
    """NaN and infinities printed as NaN/Infinity, which JSON parsers refuse: now null."""
    import json

    from vitok.cli.common import emit

    emit({"loss": float("nan"), "rows": [{"fps": float("inf")}, (1.5, -float("inf"))], "n": 3}, True, "")
    assert json.loads(capsys.readouterr().out) == {"loss": None, "rows": [{"fps": None}, [1.5, None]], "n": 3}
