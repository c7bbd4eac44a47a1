"""The spill file a byte budget plans with: what goes in comes back, in any order, arrays writable."""
from __future__ import annotations

import numpy as np
import pytest

from vitok.codecs.spill import Spill, Spilled


def test_bytes_and_arrays_come_back_in_any_order():
    z = np.arange(24, dtype=np.float32).reshape(6, 4) / 7
    with Spill() as spill:
        first, arr, last = spill.put(b"payload one"), spill.put_array(z[:, 1:]), spill.put(b"")
        assert spill.get(last) == b"" and spill.get(first) == b"payload one"
        back = spill.get_array(arr)
        assert back.dtype == np.float32 and back.shape == (6, 3) and np.array_equal(back, z[:, 1:])
        back[0, 0] = -1   # a copy the caller may change (torch.from_numpy wants it writable)
        assert np.array_equal(spill.get_array(arr), z[:, 1:])


def test_a_short_read_is_an_error_not_short_data():
    with Spill() as spill:
        spill.put(b"abc")
        with pytest.raises(OSError, match="spill file lost data: read 3 of 10 bytes"):
            spill.get(Spilled(0, 10))


def test_a_full_temporary_folder_is_named(monkeypatch):
    """ENOSPC while spilling said only "No space left on device": the user's fix ($TMPDIR) was not named."""
    import errno
    import tempfile

    with Spill() as spill:
        def full(*args):
            raise OSError(errno.ENOSPC, "No space left on device")

        for step in ("write", "flush"):   # a small write is buffered: a full disk shows at the flush
            monkeypatch.setattr(spill._file, step, full)
            with pytest.raises(OSError, match=r"cannot write the byte budget's temporary file in .+ \(\$TMPDIR\): "
                                              r"No space left on device") as err:
                spill.put(b"payload")
            assert err.value.errno == errno.ENOSPC and tempfile.gettempdir() in str(err.value)
            monkeypatch.undo()
