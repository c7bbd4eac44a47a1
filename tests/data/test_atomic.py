"""Atomic outputs: nothing at the destination until success, nothing left behind on failure, the usual mode."""
from __future__ import annotations

import errno
import os
import stat

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
