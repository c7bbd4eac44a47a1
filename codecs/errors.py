"""Errors of the bitstream layer."""
from __future__ import annotations

from vitok.data.errors import VitokError


class BitstreamError(VitokError):
    """A bitstream cannot be used or made: truncated, corrupted, unsupported, over a size limit, made by another
    model, or (encoding) an empty input video."""


class CodecError(VitokError):
    """A codec cannot do what was asked: unknown codec, unavailable encoder, bad knob, empty input."""
