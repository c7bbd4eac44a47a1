"""The ``Codec`` interface every codec implements, and the registry that names them.

Byte accounting, one convention for every codec (RD, bench and compare use it): the rate of an encoded clip is its
``rate_bytes(data)``, what a decoder needs without a general-purpose container: for classical codecs the elementary
stream (packet sizes plus the decoder extradata, SPS/PPS etc.; the mp4 box structure, about 900 bytes however short
the clip, is left out), for vitok codecs the whole ``.vtok`` file, its header included. ``stream_bytes(data)`` is
the payload alone (for vitok the entropy-coded chunks without the file header); ``len(data)`` the file as written.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from vitok.codecs.errors import BitstreamError, CodecError


class Codec(ABC):
    """A lossy video codec: uint8 RGB frames ``(T,H,W,3)`` + fps -> bytes -> frames + fps."""

    name: str = ""
    #: file suffix of what ``encode`` returns (".mp4", ".vtok")
    suffix: str = ""
    #: the keyword knobs ``encode`` takes (what an operating point may set); None: not declared, not checked
    knobs: tuple[str, ...] | None = None

    @abstractmethod
    def encode(self, frames: np.ndarray, fps: Fraction, **knobs: Any) -> bytes:
        """Encode ``frames`` (uint8 ``(T,H,W,3)``) at ``fps`` with the given knobs into one file's bytes."""

    @abstractmethod
    def decode(self, data: bytes) -> tuple[np.ndarray, Fraction]:
        """Decode a file's bytes back to uint8 frames ``(T,H,W,3)`` at the original size, and the fps."""

    @abstractmethod
    def operating_points(self) -> list[dict[str, Any]]:
        """Knob settings an RD sweep walks, from high rate to low rate."""

    @abstractmethod
    def stream_bytes(self, data: bytes) -> int:
        """Payload bytes inside ``data``: the elementary stream for classical codecs, chunk payloads for vitok."""

    @property
    def identity(self) -> str:
        """What changes this codec's output besides its name and knobs (RD caches key on it); "" when nothing."""
        return ""

    def rate_bytes(self, data: bytes) -> int:
        """Bytes RD counts (module docstring): the whole file here; classical codecs count their elementary stream."""
        return len(data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def check_frames(frames: np.ndarray, fps: Fraction | float | int) -> tuple[np.ndarray, Fraction]:
    """Validate encoder input: uint8 ``(T,H,W,3)`` (CodecError) that is not empty (BitstreamError, like every
    input that cannot make a bitstream) and a positive fps, returned as a Fraction."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        raise CodecError(f"frames must be a uint8 array (T,H,W,3), got {getattr(frames, 'dtype', type(frames))} {shape}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise BitstreamError(f"empty input video: frames have shape {frames.shape}, nothing to encode")
    fps = Fraction(fps).limit_denominator(1 << 20) if not isinstance(fps, Fraction) else fps
    if fps <= 0:
        raise CodecError(f"fps must be positive, got {fps}")
    return frames, fps


_REGISTRY: dict[str, Callable[[], Codec]] = {}
_UNAVAILABLE: dict[str, str] = {}


def register(name: str, factory: Callable[[], Codec] | None, unavailable_reason: str | None = None) -> None:
    """Register a codec factory under ``name``; ``factory=None`` records it as unavailable with a reason."""
    if factory is None:
        _UNAVAILABLE[name] = unavailable_reason or "not available"
        _REGISTRY.pop(name, None)
    else:
        _REGISTRY[name] = factory
        _UNAVAILABLE.pop(name, None)


def get_codec(name: str) -> Codec:
    """A codec by name: ``h264``, ``h265``, ``av1``, ``vp9`` or ``vitok:<bundled model name or model dir>``."""
    _load_builtin()
    if name.startswith("vitok:"):
        from vitok.codecs.neural import VitokCodec

        model = name[len("vitok:"):]
        if not model:
            raise CodecError("codec 'vitok:' needs a model: vitok:<model name or dir>")
        return VitokCodec(model)
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if name in _UNAVAILABLE:
        raise CodecError(f"codec {name!r} is not available here: {_UNAVAILABLE[name]}")
    raise CodecError(f"unknown codec {name!r}; available: {', '.join(list_codecs())}")


def list_codecs(include_unavailable: bool = False) -> list[str]:
    """Names of the codecs that work here (classical encoders found in PyAV, vitok codecs of bundled models)."""
    _load_builtin()
    from vitok.codecs.models import bundled_names

    names = sorted(_REGISTRY) + [f"vitok:{n}" for n in bundled_names()]
    return names + sorted(_UNAVAILABLE) if include_unavailable else names


def codec_availability() -> dict[str, str]:
    """Every known classical codec -> "available" or the reason it is not."""
    _load_builtin()
    return {**{n: "available" for n in _REGISTRY}, **_UNAVAILABLE}


def _load_builtin() -> None:
    import vitok.codecs.classical  # noqa: F401  (registers h264/h265/av1/vp9 on import)
