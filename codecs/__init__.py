"""The bitstream layer: one ``Codec`` interface for classical codecs (PyAV) and ``vitok:<model>`` codecs.

    from vitok.codecs import get_codec, list_codecs
    codec = get_codec("h264")                    # or "vitok:<bundled name or model dir>"
    data = codec.encode(frames, fps, crf=28)     # frames: uint8 (T,H,W,3)
    frames, fps = codec.decode(data)

RD counts ``codec.rate_bytes(data)``: the elementary stream for classical codecs (no mp4 boxes), the whole .vtok
file for vitok codecs (see ``vitok.codecs.base``). Heavy parts (torch, CompressAI) load only when a vitok codec is
used.
"""
from __future__ import annotations

from vitok.codecs.base import Codec, codec_availability, get_codec, list_codecs, register
from vitok.codecs.errors import BitstreamError, CodecError
from vitok.codecs.models import DEFAULT_MODEL
from vitok.data.lazy import lazy_exports

_LAZY = {
    "VitokCodec": "vitok.codecs.neural",
    "EncodeStats": "vitok.codecs.neural",
    "EntropyTables": "vitok.codecs.entropy",
    "calibrate_entropy": "vitok.codecs.entropy",
    "fit_tables": "vitok.codecs.entropy",
    "load_entropy_tables": "vitok.codecs.entropy",
    "write_entropy_tables": "vitok.codecs.entropy",
    "calibrate_model_dir": "vitok.codecs.entropy",
    "VtokHeader": "vitok.codecs.container",
    "VtokReader": "vitok.codecs.container",
    "VtokWriter": "vitok.codecs.container",
    "read_vtok": "vitok.codecs.container",
    "encode_file": "vitok.codecs.files",
    "decode_file": "vitok.codecs.files",
    "describe_vtok": "vitok.codecs.files",
}

__all__ = ["Codec", "get_codec", "list_codecs", "register", "codec_availability", "BitstreamError", "CodecError",
           "DEFAULT_MODEL", *_LAZY]
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
