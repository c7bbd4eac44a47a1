"""Measure what a quantizer deadzone saves a model, and store the one chosen in its entropy tables.

Rounding each latent value toward the integer its table codes cheapest (with temporal contexts: what the value one
step back predicts; it rounds away only past ``0.5 + deadzone`` of a step) sends more of them to the cheapest
integers; it is the encoder's choice alone, so streams and decoders stay as they are. For
each deadzone this codes every 17x128x128 training segment of the sample clips (10 of them, evenly spread: the eval
segments stay unseen) at the model's operating points, and reports BD-rate against rounding to nearest:

    python tools/deadzone.py vitok/pretrained/vitok-grid 0.05 0.1 0.15       # measure
    python tools/deadzone.py vitok/pretrained/vitok-grid --write 0.1          # store it (0: rounding to nearest)
"""
from __future__ import annotations

import argparse

import numpy as np

from vitok.codecs.entropy import FILENAME, load_entropy_tables
from vitok.codecs.errors import CodecError
from vitok.codecs.neural import VitokCodec
from vitok.data import train_segments
from vitok.evaluation.bdrate import bd_rate


def curves(codec: VitokCodec, segments: list, deadzone: float) -> list[list[dict]]:
    """Per segment, a record (bytes, PSNR) per operating point with ``deadzone``."""
    coder = VitokCodec(codec.tok, codec.tables.with_deadzone(deadzone))
    out = []
    for sid, frames in segments:
        points = []
        for op in codec.operating_points():
            data = coder.encode(frames, 25, **op)
            mse = np.mean((coder.decode(data)[0].astype(np.float64) - frames) ** 2)
            points.append({"clip": sid, "bytes": len(data), "psnr": 10 * np.log10(255.0 ** 2 / mse)})
        out.append(points)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model folder holding entropy.safetensors")
    parser.add_argument("deadzones", nargs="*", type=float, help="deadzones to measure against 0")
    parser.add_argument("--write", type=float, help="store this deadzone in the model's entropy tables")
    args = parser.parse_args()
    if args.write is not None:
        try:
            tables = load_entropy_tables(args.model).with_deadzone(args.write)
        except CodecError as e:   # no tables there, or a deadzone they cannot use: one line, no traceback
            raise SystemExit(f"error: {e}") from None
        print(f"wrote deadzone {args.write:g} to {tables.save(f'{args.model}/{FILENAME}')}")
        return
    codec = VitokCodec(args.model).load()
    segs = train_segments()
    segs = segs[::max(1, len(segs) // 10)][:10]
    base = curves(codec, segs, 0.0)
    for dz in args.deadzones:
        test = curves(codec, segs, dz)
        per = [bd_rate(a, b) for a, b in zip(base, test)]
        dpsnr = np.mean([p["psnr"] for c in test for p in c]) - np.mean([p["psnr"] for c in base for p in c])
        nbytes = sum(p["bytes"] for c in test for p in c) / sum(p["bytes"] for c in base for p in c)
        print(f"deadzone {dz:g}: BD-rate {np.mean(per):+.2f} % (segments {min(per):+.1f} to {max(per):+.1f}), "
              f"{nbytes:.3f}x the bytes at the same settings, {dpsnr:+.3f} dB", flush=True)


if __name__ == "__main__":
    main()
