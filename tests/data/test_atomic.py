"""Atomic outputs: nothing at the destination until success, nothing left behind on failure, the usual mode."""
from __future__ import annotations

import errno
import os
import stat
import tempfile

import pytest

from vitok.data.atomic import atomic_dir, atomic_path


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
