"""Bytes, PSNR and seam error of a model's tiles at several tile overlaps, on one clip at its own size.

Frames larger than a model's tile are cut into tiles, coded alike and blended over their overlaps on decode
(`vitok.geometry`). Less overlap codes fewer tokens; this measures what it costs where tiles meet: the mean squared
error within 4 px of each seam (the middle of each overlap) over the mean squared error in the rest of the frame
(about 1 when seams do not show in the error).

    python tools/tile_seams.py vitok-grid --clip bikes --frames 20 --overlap 0 --overlap 8 --overlap 32
"""
from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import numpy as np

from vitok.codecs.entropy import DEFAULT_STEP
from vitok.codecs.neural import VitokCodec
from vitok.data.errors import VitokError
from vitok.data.io import read_video
from vitok.data.samples import SAMPLE_CLIPS, sample_path
from vitok.geometry import Geometry, overlap_pixels

BAND = 4   # pixels each side of a seam


def seam_mask(g: Geometry) -> np.ndarray:
    """(height, width) True within ``BAND`` px of the middle of every overlap between the tiles of ``g`` (of every
    tile border when tiles do not overlap)."""
    height, width = g.height, g.width
    band = np.zeros((height, width), bool)
    for axis, size, along_rows in ((g.rows, height, True), (g.cols, width, False)):
        for k in range(1, axis.count):
            middle = k * axis.step + axis.overlap // 2
            lo, hi = max(0, middle - BAND), min(size, middle + BAND)
            if along_rows:
                band[lo:hi] = True
            else:
                band[:, lo:hi] = True
    return band


def measure(codec: VitokCodec, frames: np.ndarray, overlaps: list[int], step: float = DEFAULT_STEP) -> list[dict]:
    """Per overlap (pixels): the tiles, the ``.vtok`` bytes, PSNR and the seam band's error over the rest's."""
    t, h, w = frames.shape[:3]
    rows = []
    for pixels in overlaps:
        coder = codec.with_overlap(pixels)
        data = coder.encode(frames, Fraction(25), step=step)
        decoded, _ = VitokCodec(codec.tok, codec.tables).decode(data)   # a decoder with the model's own tiling
        err = ((decoded.astype(np.float64) - frames) ** 2).mean(axis=(0, 3))
        g = coder.plan(t, h, w)
        band = seam_mask(g)
        ratio = float(err[band].mean() / err[~band].mean()) if band.any() and (~band).any() else float("nan")
        rows.append({"overlap": pixels, "tiles": f"{g.rows.count}x{g.cols.count} of {g.rows.tile}x{g.cols.tile}",
                     "bytes": len(data), "psnr": float(10 * np.log10(255.0 ** 2 / err.mean())), "seam_ratio": ratio})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="bundled model name or model directory")
    ap.add_argument("--clip", default="bikes", help=f"a sample clip ({', '.join(SAMPLE_CLIPS)}) or a video file")
    ap.add_argument("--frames", type=int, default=20, help="frames of the clip to code")
    ap.add_argument("--overlap", type=int, action="append", help="tile overlap in pixels (repeatable)")
    ap.add_argument("--step", type=float, default=DEFAULT_STEP, help="quantization step")
    args = ap.parse_args()
    try:
        codec = VitokCodec(args.model).load()
        path = sample_path(args.clip) if args.clip in SAMPLE_CLIPS else Path(args.clip)
        frames = read_video(path, num_frames=args.frames)[0]
        if codec.tok.config.tile_size is None:
            raise VitokError(f"{args.model} codes whole frames: it has no tiles to overlap")
        overlaps = args.overlap or [overlap_pixels(codec.tok.config.tile_size, codec.tiling["overlap"],
                                                   codec.tok.spatial_stride)]   # the model's own
        rows = measure(codec, frames, overlaps, args.step)
    except VitokError as e:
        raise SystemExit(f"error: {e}") from None
    t, h, w = frames.shape[:3]
    print(f"{args.model} on {args.clip}: {t} frames {w}x{h}, step {args.step:g}")
    print("overlap  tiles              bytes    PSNR  seam/rest")
    for r in rows:
        print(f"{r['overlap']:5d} px  {r['tiles']:<16} {r['bytes']:7d}  {r['psnr']:6.2f}  {r['seam_ratio']:9.2f}")


if __name__ == "__main__":
    main()
