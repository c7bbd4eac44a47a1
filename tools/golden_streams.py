"""Write the golden ``.vtok`` streams the tests decode (tests/codecs/golden/): one small stream per bundled model
and per way its chunks are coded, with the hash of the integers each decodes to. Decoding them must give exactly
these integers on any machine and with any later vitok or CompressAI (entropy decoding uses no float math), so a
change that would stop old files from decoding fails the tests.

    python tools/golden_streams.py   # rewrite them: only for a deliberate format change or new bundled weights
                                     # (whose streams a decoder refuses: the header names the weights)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from vitok.codecs.neural import VitokCodec
from vitok.data.samples import load_sample

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "codecs" / "golden"
STREAMS = {   # name: (model, knobs); 9 frames of carphone's eval split, 48x64 (tiles) or 144x176 (1D: 2x2 tiles)
    "grid": ("vitok-grid", {}),
    "cnn": ("vitok-cnn", {"step": 1.0}),
    "1d": ("vitok-1d", {"tokens": 8}),
    "1d-tiles": ("vitok-1d", {"psnr": 20.0}),
}


def golden_frames(name: str) -> np.ndarray:
    """The frames stream ``name`` codes (the test cuts the same from the sample clip)."""
    frames = load_sample("carphone", "eval")[:9]
    return np.ascontiguousarray(frames if name == "1d-tiles" else frames[:, 40:88, 56:120])


def symbols_hash(codec: VitokCodec, data: bytes) -> str:
    """sha256 over every chunk's decoded integers, token counts and step."""
    h = hashlib.sha256()
    for _, q, tokens, step in codec.iter_symbols(data):
        h.update(np.ascontiguousarray(q, "<i4").tobytes())
        h.update(repr((tokens, step)).encode())
    return h.hexdigest()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (model, knobs) in STREAMS.items():
        codec, frames = VitokCodec(model), golden_frames(name)
        data = codec.encode(frames, 25, **knobs)
        (GOLDEN / f"{name}.vtok").write_bytes(data)
        expected[name] = {"model": model, "knobs": knobs, "bytes": len(data), "symbols": symbols_hash(codec, data),
                          "psnr": round(psnr(codec.decode(data)[0], frames), 3)}
        print(name, expected[name])
    (GOLDEN / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
