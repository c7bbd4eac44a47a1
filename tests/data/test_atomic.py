"""Atomic outputs: nothing at the destination until success, nothing left behind on failure, the usual mode."""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile

import pytest

from vitok.data.atomic import atomic_dir, atomic_path, write_bytes_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_file_and_folder_get_umask_modes(tmp_path, umask_022):
    with atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "a.json").write_text("{}")
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    assert (tmp_path / "model" / "a.json").read_text() == "{}"


def test_a_replaced_output_keeps_its_mode_and_links_are_written_through(tmp_path, umask_022, monkeypatch):
    """-y over a private (0600) file made it world-readable; a symbolic link was replaced by a file, its target kept
    the old content; and a relative output folder holding the current folder moved its own paths aside with it."""
    (tmp_path / "private.vtok").write_bytes(b"old")
    (tmp_path / "private.vtok").chmod(0o600)
    (tmp_path / "frames").mkdir(mode=0o700)
    with atomic_path(tmp_path / "private.vtok") as tmp:
        tmp.write_bytes(b"new")
    with atomic_dir(tmp_path / "frames") as tmp:
        (tmp / "f.png").write_bytes(b"png")
    assert stat.S_IMODE((tmp_path / "private.vtok").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "frames").stat().st_mode) == 0o700
    (tmp_path / "link.vtok").symlink_to("private.vtok")
    with atomic_path(tmp_path / "link.vtok") as tmp:
        tmp.write_bytes(b"through")
    assert (tmp_path / "link.vtok").is_symlink() and (tmp_path / "private.vtok").read_bytes() == b"through"
    (tmp_path / "dangling.vtok").symlink_to(tmp_path / "elsewhere" / "new.vtok")   # followed, it made folders there
    with atomic_path(tmp_path / "dangling.vtok") as tmp:
        tmp.write_bytes(b"here")
    assert not (tmp_path / "elsewhere").exists() and (tmp_path / "dangling.vtok").read_bytes() == b"here"
    (tmp_path / "dangling.vtok").unlink()
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "hop").symlink_to(tmp_path / "deep" / "er")
    with atomic_path(tmp_path / "hop" / ".." / "up.bin") as tmp:   # the kernel's "..": after the link, in deep/
        tmp.write_bytes(b"up")
    assert (tmp_path / "deep" / "up.bin").read_bytes() == b"up"
    shutil.rmtree(tmp_path / "deep")
    (tmp_path / "hop").unlink()
    (tmp_path / "tool").write_bytes(b"old")
    (tmp_path / "tool").chmod(0o4755)   # a setuid file's mode is not given to what replaces it
    write_bytes_atomic(tmp_path / "tool", b"new")
    assert stat.S_IMODE((tmp_path / "tool").stat().st_mode) == 0o755
    (tmp_path / "tool").unlink()
    monkeypatch.chdir(tmp_path / "frames")
    with atomic_dir("../frames") as tmp:   # the temporary and the old folder stay beside it, not inside
        (tmp / "g.png").write_bytes(b"png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "link.vtok", "private.vtok"]
    assert [p.name for p in (tmp_path / "frames").iterdir()] == ["g.png"]


def test_failures_leave_nothing(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "new.json").write_text("{}")
            raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["model", "old.json"]
    # folders made for an output that failed are removed again; one that got another file meanwhile stays
    for make in (atomic_path, atomic_dir):
        with pytest.raises(RuntimeError):
            with make(tmp_path / "new" / "sub" / "out") as tmp:
                raise RuntimeError("interrupted")
        assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new" / "sub" / "out") as tmp:
            (tmp_path / "new" / "other.txt").write_text("keep")
            raise RuntimeError("interrupted")
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["other.txt"]


def test_a_full_disk_names_the_output(tmp_path):
    """Write errors that carry no file name (EFBIG, ENOSPC) get the destination's, so the user knows which output."""
    with pytest.raises(OSError) as e:
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert e.value.filename == str(tmp_path / "out.bin")
    with pytest.raises(OSError) as e:
        with atomic_dir(tmp_path / "frames") as tmp:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    assert e.value.filename == str(tmp_path / "frames") and list(tmp_path.iterdir()) == []


def _refuse_temporaries(monkeypatch):
    """Making a temporary beside the output fails as in a read-only folder (root ignores a chmod, so simulated)."""
    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), os.path.join(dir, ".out.bin.x1y2z3"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)


def test_an_unwritable_folder_names_the_output_not_its_temporary(tmp_path, monkeypatch):
    """The error said "Operation not permitted: .../.out.bin.x1y2z3", a hidden name the user never gave."""
    _refuse_temporaries(monkeypatch)
    for atomic in (atomic_path, atomic_dir):
        with pytest.raises(PermissionError) as e:
            with atomic(tmp_path / "out.bin"):
                pytest.fail("no temporary should be made")
        assert e.value.strerror == f"cannot write {tmp_path / 'out.bin'}: {os.strerror(errno.EPERM)}"
        assert e.value.filename is None
    assert list(tmp_path.iterdir()) == []


def test_a_file_used_as_a_folder_is_named_as_such(tmp_path):
    """An output under a file said "File exists: clip.mp4" (or "Not a directory"), not which output or why."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"video")
    for out in (clip / "x.vtok", clip / "sub" / "x.vtok"):
        for atomic in (atomic_path, atomic_dir):
            with pytest.raises(NotADirectoryError) as e:
                with atomic(out):
                    pytest.fail("no temporary should be made")
            assert e.value.strerror == f"cannot write {out}: {clip} is not a folder"
    assert clip.read_bytes() == b"video" and list(tmp_path.iterdir()) == [clip]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux shows the umask in /proc")
def test_reading_the_umask_does_not_set_it(tmp_path, umask_022, monkeypatch):
    """Reading the umask by setting it to 0 and back let a file another thread made meanwhile escape it."""
    monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("os.umask called"))
    with atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o644


def test_a_safetensors_write_failure_is_an_os_error_naming_the_output(tmp_path):
    """safetensors reports a full disk as a SafetensorError (no OSError): `vitok latents extract`, `train`,
    `calibrate` and `gen train` ended in a traceback. A file size limit makes the same failure in a child process."""
    import subprocess
    import sys

    script = (
        "import resource, signal, sys, torch\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from vitok.data.atomic import atomic_path, save_safetensors\n"
        "try:\n"
        "    with atomic_path(sys.argv[1]) as tmp:\n"
        "        save_safetensors({'w': torch.zeros(10000)}, tmp)\n"
        "except OSError as e:\n"
        "    print(e.errno, e)\n")
    out = tmp_path / "shard.safetensors"
    run = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True,
                         cwd=tmp_path.parent)   # not the checkout: its vitok/ folder would shadow the installed one
    assert run.stdout.strip() == f"{errno.EFBIG} [Errno {errno.EFBIG}] File too large: '{out}'", run.stderr[-500:]
    assert not list(tmp_path.iterdir())
