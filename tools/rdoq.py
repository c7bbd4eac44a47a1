"""Measure what rate-distortion rounding saves a model, and store the lambda chosen in its entropy tables.

The encoder may round each latent value down or up, whichever costs less ``w * error**2 + lambda * bits``
(``EntropyTables.rd_lambda``; ``w``: the channel's distortion weight, ``vitok.codecs.distortion``); streams and
decoders stay as they are. For each lambda this codes ten 17x128x128
training segments of the sample clips (evenly spread: the eval segments stay unseen) at the model's operating points
and reports BD-rate against rounding to nearest:

    python tools/rdoq.py vitok/pretrained/vitok-grid 0.05 0.1 0.15     # measure (--uniform: all weights 1)
    python tools/rdoq.py vitok/pretrained/vitok-grid 0.1 --refit        # each lambda with tables fitted to it
    python tools/rdoq.py vitok/pretrained/vitok-grid --write 0.1        # store it, with the weights (0: nearest)

`--write` leaves the tables (and their id) as they are; `vitok calibrate MODEL -y` then fits context tables to the
integers the rounding gives (what `--refit` measures), keeping the tables it replaces for the streams coded with them.
"""
from __future__ import annotations

import argparse

import numpy as np

from vitok.codecs.distortion import distortion_weights
from vitok.codecs.entropy import FILENAME, EntropyTables, calibrate_entropy, calibration_chunks, load_kept_tables
from vitok.data.errors import VitokError
from vitok.codecs.neural import VitokCodec, model_dir
from vitok.data import train_segments
from vitok.evaluation.bdrate import bd_rate


def curves(codec: VitokCodec, tables: EntropyTables, segments: list) -> list[list[dict]]:
    """Per segment, a record (bytes, PSNR) per operating point, coded with ``tables``."""
    coder = VitokCodec(codec.tok, tables)
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
    parser.add_argument("lambdas", nargs="*", type=float, help="lambdas to measure against rounding to nearest")
    parser.add_argument("--write", type=float, help="store this lambda (and the measured weights) in the tables")
    parser.add_argument("--uniform", action="store_true", help="measure with every channel's weight 1")
    parser.add_argument("--tables", metavar="ID", help="measure with the earlier tables ID kept beside the model "
                                                       "(entropy-ID.safetensors) instead of its own")
    parser.add_argument("--refit", action="store_true", help="measure each lambda with context tables fitted to the "
                                                             "integers it gives (as `vitok calibrate` fits them)")
    args = parser.parse_intermixed_args()
    if args.tables and args.write is not None:
        parser.error("--write stores into the model's own tables; --tables only measures")
    if args.refit and args.uniform:
        parser.error("--refit fits tables as calibration does, with the measured weights; drop --uniform")
    try:
        codec = VitokCodec(args.model).load()
        if args.tables:
            kept = load_kept_tables(model_dir(args.model), args.tables)
            if kept is None:
                raise SystemExit(f"error: no tables {args.tables} kept beside {args.model}")
            codec = VitokCodec(codec.tok, kept)
        for lam in [*args.lambdas, *([] if args.write is None else [args.write])]:
            codec.tables.with_rdoq(lam)   # a lambda the tables cannot take is refused before any work
        weights = np.ones(codec.tables.channels) if args.uniform else distortion_weights(codec.tok, codec.tables.std)
        if args.write is not None:
            tables = codec.tables.with_rdoq(args.write, weights)
            print(f"wrote lambda {args.write:g} to {tables.save(model_dir(args.model) / FILENAME)}")
            return
    except VitokError as e:   # no model or tables there, or a lambda they cannot use: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    print("distortion weights: " + " ".join(f"{w:.2f}" for w in weights), flush=True)
    segs = train_segments()
    segs = segs[::max(1, len(segs) // 10)][:10]
    base = curves(codec, codec.tables.with_rdoq(0.0), segs)
    for lam in args.lambdas:
        tables = codec.tables.with_rdoq(lam, weights)
        if args.refit and lam:
            chunks, follows = calibration_chunks(codec.tok)
            tables = calibrate_entropy(codec.tok, chunks, steps=tables.steps, context_radius=tables.context_radius,
                                       rd_lambda=lam, spatial_radius=tables.spatial_radius,
                                       channel_radius=tables.channel_radius,
                                       follows=follows if tables.predicts else None)
        test = curves(codec, tables, segs)
        per = [bd_rate(a, b) for a, b in zip(base, test)]
        dpsnr = np.mean([p["psnr"] for c in test for p in c]) - np.mean([p["psnr"] for c in base for p in c])
        nbytes = sum(p["bytes"] for c in test for p in c) / sum(p["bytes"] for c in base for p in c)
        print(f"lambda {lam:g}: BD-rate {np.mean(per):+.2f} % (median {np.median(per):+.2f}, segments {min(per):+.1f} "
              f"to {max(per):+.1f}), "
              f"{nbytes:.3f}x the bytes at the same settings, {dpsnr:+.3f} dB", flush=True)


if __name__ == "__main__":
    main()
