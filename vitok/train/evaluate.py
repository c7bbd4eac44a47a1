"""Held-out reconstruction quality of a tokenizer (PSNR, SSIM) and a PNG grid of originals vs reconstructions.

The model table's figures come from ``python -m vitok.train.evaluate MODEL`` (held-out 17x128x128 sample
segments). Metrics follow vitok.evaluation's conventions: uint8 frames, per-frame PSNR (peak 255, capped at 100 dB)
and piq SSIM, averaged over frames, then over segments.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vitok.data.atomic import atomic_path
from vitok.data.convert import frames_to_tensor, tensor_to_frames

PSNR_CAP = 100.0


@torch.no_grad()
def reconstruct(tok: torch.nn.Module, frames: np.ndarray, num_tokens: int | None = None) -> np.ndarray:
    """Encode and decode one uint8 ``(T,H,W,3)`` clip; the result is uint8 frames of the same shape."""
    device = next(tok.parameters()).device
    video = frames_to_tensor(frames, device=device)
    lat = tok.encode(video, num_tokens=num_tokens) if num_tokens is not None else tok.encode(video)
    return tensor_to_frames(tok.decode(lat).float().cpu())


def frame_psnr(ref: np.ndarray, dist: np.ndarray) -> float:
    """Mean over frames of the per-frame RGB PSNR (peak 255, capped at 100 dB)."""
    mse = ((ref.astype(np.float64) - dist.astype(np.float64)) ** 2).reshape(len(ref), -1).mean(1)
    with np.errstate(divide="ignore"):
        per_frame = np.where(mse > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-300)), PSNR_CAP)
    return float(np.minimum(per_frame, PSNR_CAP).mean())


def frame_ssim(ref: np.ndarray, dist: np.ndarray) -> float:
    """Mean over frames of piq's SSIM on RGB in [0,1]."""
    import piq

    to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 255.0
    return float(piq.ssim(to(ref), to(dist), data_range=1.0, reduction="none").mean())


def evaluate_model(tok: torch.nn.Module, segments: Sequence[tuple[str, np.ndarray]], num_tokens: int | None = None,
                   return_recons: bool = False) -> dict[str, Any]:
    """PSNR/SSIM of ``tok`` on ``(id, uint8 (T,H,W,3))`` segments: means plus per-segment values.

    With ``return_recons`` the reconstructed frames come back under ``"recons"`` (for a grid)."""
    was_training = tok.training
    tok.eval()
    rows, recons = [], []
    try:
        for seg_id, frames in segments:
            rec = reconstruct(tok, frames, num_tokens)
            rows.append({"id": seg_id, "psnr": frame_psnr(frames, rec), "ssim": frame_ssim(frames, rec)})
            if return_recons:
                recons.append(rec)
    finally:
        tok.train(was_training)
    out: dict[str, Any] = {"psnr": float(np.mean([r["psnr"] for r in rows])) if rows else float("nan"),
                           "ssim": float(np.mean([r["ssim"] for r in rows])) if rows else float("nan"),
                           "num_segments": len(rows), "segments": rows}
    if return_recons:
        out["recons"] = recons
    return out


def save_grid(path: str | Path, originals: Sequence[np.ndarray], recons: Sequence[np.ndarray],
              frames_per_clip: int = 4) -> Path:
    """PNG with two rows per clip (original above, reconstruction below), ``frames_per_clip`` evenly spaced frames."""
    from PIL import Image

    rows = []
    for orig, rec in zip(originals, recons):
        idx = np.linspace(0, len(orig) - 1, min(frames_per_clip, len(orig))).round().astype(int)
        for clip in (orig, rec):
            rows.append(np.concatenate([np.pad(clip[i], ((2, 2), (2, 2), (0, 0))) for i in idx], axis=1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m vitok.train.evaluate MODEL``: held-out PSNR/SSIM of a bundled model or a model directory."""
    parser = argparse.ArgumentParser(prog="python -m vitok.train.evaluate", description=main.__doc__)
    parser.add_argument("model", help="bundled model name or directory with config.json + model.safetensors")
    parser.add_argument("--frames", type=int, default=17, help="frames per held-out segment (default 17)")
    parser.add_argument("--size", type=int, default=128, help="segment side in px (default 128)")
    parser.add_argument("--num-tokens", type=int, default=None, help="1D models: tokens per unit (default all)")
    parser.add_argument("--limit", type=_positive, default=None, help="evaluate only the first N segments")
    parser.add_argument("--grid", default=None, help="also write a PNG grid of originals vs reconstructions")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--int8", action="store_true",
                        help="evaluate the weights as int8 storage would hold them (vitok.storage)")
    parser.add_argument("--json", action="store_true", help="print the full JSON record")
    args = parser.parse_args(argv)

    import vitok
    from vitok.data.errors import VitokError
    from vitok.data.samples import eval_segments

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        tok = vitok.load(args.model, device=args.device)
        if args.int8:
            from vitok.storage import stored

            tok.load_state_dict(stored(tok.state_dict(), torch.int8)[2])   # the weights as int8 files hold them
        segments = eval_segments(num_frames=args.frames, size=args.size)[:args.limit]
        res = evaluate_model(tok, segments, num_tokens=args.num_tokens, return_recons=bool(args.grid))
        if args.grid:
            save_grid(args.grid, [f for _, f in segments], res.pop("recons"))
    except VitokError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    res = {"model": args.model, "frames": args.frames, "size": args.size, "num_tokens": args.num_tokens,
           "int8": args.int8, **res}
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{args.model}: PSNR {res['psnr']:.2f} dB  SSIM {res['ssim']:.4f}  "
              f"({res['num_segments']} held-out {args.frames}x{args.size}x{args.size} segments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
