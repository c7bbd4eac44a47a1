"""Peak memory of a block of code: resident memory sampled by a background thread, plus CUDA's allocator peak."""
from __future__ import annotations

import functools
import threading
from typing import Any

import psutil


class PeakMemory:
    """``with PeakMemory() as pm: ...`` then ``pm.peak_mb``: the peak extra memory the block used, in MiB.

    CPU: the highest process RSS seen (sampled every ``interval`` s, plus at entry and exit) minus the RSS at entry,
    so it counts what the block allocated, not the interpreter and libraries already loaded. Memory that earlier code
    freed is handed back to the system first (glibc's ``malloc_trim``): otherwise the block reuses it unseen and
    the figure depends on what ran before. When CUDA is
    initialised, the block's peak allocated device memory (``torch.cuda.max_memory_allocated``) is reported as
    ``cuda_peak_mb`` and added to ``peak_mb``. Short blocks can finish between samples; treat small numbers as rough.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.base = self.peak = 0
        self.cuda_peak_mb = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> "PeakMemory":
        self._cuda = _cuda_ready()
        if self._cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda_base = torch.cuda.memory_allocated()
        trim = _malloc_trim()
        if trim is not None:
            trim(0)
        self.base = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        if self._cuda:
            import torch

            torch.cuda.synchronize()
            self.cuda_peak_mb = (torch.cuda.max_memory_allocated() - self._cuda_base) / 2 ** 20

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.base) / 2 ** 20 + self.cuda_peak_mb


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (returns the C heap's free pages to the system), or None where the C library has none.
    No ``gc.collect`` beside it: on the bench it changed no figure and took ~130 ms per block with torch loaded."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _cuda_ready() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())
