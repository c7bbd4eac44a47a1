"""Write the golden ``.vtok`` streams the tests decode (tests/codecs/golden/): one small stream per bundled model
and per way its chunks are coded, with the hash of the integers each decodes to. Decoding them must give exactly
these integers on any machine and with any later vitok or CompressAI (entropy decoding uses no float math), so a
change that would stop old files from decoding fails the tests.

    python tools/golden_streams.py            # rewrite them all: only for a deliberate format change or new
                                              # bundled weights (whose streams a decoder refuses)
    python tools/golden_streams.py grid-rd    # write the ones named, keeping the rest (new tables: add a stream
                                              # coded with them, and keep those coded with the tables before)
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from vitok.codecs.neural import VitokCodec
from vitok.data.samples import load_sample

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "codecs" / "golden"
STREAMS = {   # name: (model, knobs); 9 frames of carphone's eval split, 48x64 or 144x176 (1D: 2x2 tiles),
    # or of bikes' (grid-tiles)
    "grid": ("vitok-grid", {}),   # coded with vitok-grid's tables 0cdf99320dcf2dd7, kept beside the model
    "cnn": ("vitok-cnn", {"step": 1.0}),   # vitok-cnn's 1f48a3aeb64b4667, likewise
    "grid-rd": ("vitok-grid", {}),   # 42847cd3f4877c7e, fitted to rate-distortion rounding
    "cnn-rd": ("vitok-cnn", {"step": 1.0}),   # b6e031d3af5c1f22
    "grid-rd2": ("vitok-grid", {}),   # 1bbe19bb36ac9d05, fitted to the rounding that looks one latent frame ahead
    "cnn-rd2": ("vitok-cnn", {"step": 1.0}),   # e87060d72d07d057
    "grid-sp": ("vitok-grid", {}),   # 0bf39b816b90e761, spatio-temporal contexts, coded in waves
    "cnn-sp": ("vitok-cnn", {"step": 1.0}),   # 1a4bd8d49c6d724d
    "1d": ("vitok-1d", {"tokens": 8}),   # vitok-1d's factorized tables 56dfef3b0ba20ee2, kept beside the model
    "1d-tiles": ("vitok-1d", {"psnr": 20.0}),   # likewise
    "1d-ch": ("vitok-1d", {"tokens": 8}),   # b21289e35b1ddd32, channel contexts, coded channel by channel
    "1d-tiles-ch": ("vitok-1d", {"psnr": 20.0}),   # likewise
    "grid-tiles": ("vitok-grid", {"overlap": 32}),   # 48x272 of bikes: two tiles overlapping as until 8af0cdb
    "1d-pred": ("vitok-1d", {"step": 0.5}),   # 97653f98d9e9e77c, inter tables: the second of 40 frames' chunks
    # predicts its tokens from the first's
    "1d-tiles-pred": ("vitok-1d", {"step": 0.5}),   # likewise, 2x2 tiles: a map of the tiles predicted
    "grid-cc": ("vitok-grid", {}),   # 25 frames: the second chunk continues the first's temporal contexts
    "cnn-cc": ("vitok-cnn", {"step": 1.0}),   # 25 frames: chunks of 17 and 8, likewise
}


def golden_frames(name: str) -> np.ndarray:
    """The frames stream ``name`` codes (the test cuts the same from the sample clip)."""
    if name == "grid-tiles":
        return np.ascontiguousarray(load_sample("bikes", "eval")[:9, 112:160, 184:456])
    frames = load_sample("carphone", "eval")[:40 if name.endswith("-pred") else 25 if name.endswith("-cc") else 9]
    return np.ascontiguousarray(frames if name.startswith("1d-tiles") else frames[:, 40:88, 56:120])


def symbols_hash(codec: VitokCodec, data: bytes) -> str:
    """sha256 over every chunk's decoded integers, token counts and step."""
    h = hashlib.sha256()
    for _, q, tokens, step in codec.iter_symbols(data):
        h.update(np.ascontiguousarray(q, "<i4").tobytes())
        h.update(repr((tokens, step)).encode())
    return h.hexdigest()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - set(STREAMS))
    if unknown:
        raise SystemExit(f"error: no golden stream {unknown[0]!r} (known: {', '.join(STREAMS)})")
    GOLDEN.mkdir(parents=True, exist_ok=True)
    path = GOLDEN / "expected.json"
    expected = json.loads(path.read_text()) if names and path.is_file() else {}
    for name in names or STREAMS:
        model, knobs = STREAMS[name]
        codec, frames = VitokCodec(model), golden_frames(name)
        data = codec.encode(frames, 25, **knobs)
        (GOLDEN / f"{name}.vtok").write_bytes(data)
        expected[name] = {"model": model, "knobs": knobs, "bytes": len(data), "symbols": symbols_hash(codec, data),
                          "psnr": round(psnr(codec.decode(data)[0], frames), 3)}
        print(name, expected[name])
    path.write_text(json.dumps({k: expected[k] for k in STREAMS if k in expected}, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
