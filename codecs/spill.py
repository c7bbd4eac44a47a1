"""Bytes set aside on disk while a byte budget is planned over the whole video, so memory stays flat with length.

A byte budget cannot choose any chunk's operating point before it has seen every chunk; what it must keep of each
(its latents, a 1D model's per-tile payloads) goes to an unnamed temporary file, which the system deletes on close.
"""
from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from types import TracebackType
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def _naming_the_folder() -> Iterator[None]:
    """Say where the spill file is when it cannot be made or written (a full or read-only $TMPDIR): the bare OSError
    named no file, and the user's fix is there, not in the output's folder."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, f"cannot write the byte budget's temporary file in {tempfile.gettempdir()} "
                               f"($TMPDIR): {e.strerror or e}") from e


@dataclass(frozen=True)
class Spilled:
    """Where one item lies in the spill file; ``dtype``/``shape`` are set for arrays."""

    offset: int
    nbytes: int
    dtype: str | None = None
    shape: tuple[int, ...] | None = None


class Spill:
    """An append-only store of bytes and arrays in a temporary file; use it as a context manager."""

    def __init__(self) -> None:
        with _naming_the_folder():
            self._file = tempfile.TemporaryFile()
        self._end = 0

    def put(self, data: bytes) -> Spilled:
        with _naming_the_folder():
            self._file.seek(self._end)
            self._file.write(data)
            self._file.flush()   # a full disk is found here, named, not at a later read
        item = Spilled(self._end, len(data))
        self._end += len(data)
        return item

    def put_array(self, array: np.ndarray) -> Spilled:
        item = self.put(np.ascontiguousarray(array).tobytes())
        return Spilled(item.offset, item.nbytes, array.dtype.str, tuple(array.shape))

    def get(self, item: Spilled) -> bytes:
        self._file.seek(item.offset)
        data = self._file.read(item.nbytes)
        if len(data) != item.nbytes:
            raise OSError(f"spill file lost data: read {len(data)} of {item.nbytes} bytes")
        return data

    def get_array(self, item: Spilled) -> np.ndarray:
        """A writable copy of an array put with ``put_array``."""
        return np.frombuffer(bytearray(self.get(item)), dtype=np.dtype(item.dtype)).reshape(item.shape)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
