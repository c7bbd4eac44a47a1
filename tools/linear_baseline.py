"""What a linear transform reaches with a tokenizer's latent count: PCA of 4xPxP tubelets fitted on the sample
clips' training segments, K coefficients kept per tubelet, scored on the held-out segments of the model table
(the same metric as ``python -m vitok.train.evaluate``). A learned tokenizer's margin over this is what its
nonlinear encoder and decoder buy at that count.

    python tools/linear_baseline.py --tubelet 8:16 --tubelet 16:16    # the CNN's and the 1D model's counts
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np

FRAMES_PER_TUBELET = 4


def tubelets(video: np.ndarray, patch: int) -> np.ndarray:
    """``(T, H, W, 3)`` -> ``(N, 4 * patch * patch * 3)`` float64 rows, T, H and W multiples of the tubelet."""
    T, H, W, C = video.shape
    t, p = FRAMES_PER_TUBELET, patch
    x = video.astype(np.float64).reshape(T // t, t, H // p, p, W // p, p, C)
    return x.transpose(0, 2, 4, 1, 3, 5, 6).reshape(-1, t * p * p * C)


def untubelets(rows: np.ndarray, shape: tuple[int, ...], patch: int) -> np.ndarray:
    """Inverse of ``tubelets`` for a video of ``shape``."""
    T, H, W, C = shape
    t, p = FRAMES_PER_TUBELET, patch
    x = rows.reshape(T // t, H // p, W // p, t, p, p, C)
    return x.transpose(0, 3, 1, 4, 2, 5, 6).reshape(shape)


def fit_pca(videos: list[np.ndarray], patch: int, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and the ``keep`` leading principal directions ``(keep, D)`` of the videos' tubelets."""
    rows = np.concatenate([tubelets(v[:len(v) // FRAMES_PER_TUBELET * FRAMES_PER_TUBELET], patch) for v in videos])
    if keep > rows.shape[1]:
        raise SystemExit(f"error: {keep} coefficients is more than a 4x{patch}x{patch} tubelet's "
                         f"{rows.shape[1]} values")
    mean = rows.mean(0)
    centred = rows - mean
    values, vectors = np.linalg.eigh(centred.T @ centred)
    return mean, vectors[:, ::-1][:, :keep].T


def reconstruct(video: np.ndarray, patch: int, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """uint8 frames of ``video`` kept to ``basis``'s coefficients; frames are padded to whole tubelets by repeating
    the last one (as the tokenizers pad) and the padding is dropped again."""
    T = len(video)
    padded = np.concatenate([video, np.repeat(video[-1:], -T % FRAMES_PER_TUBELET, axis=0)])
    centred = tubelets(padded, patch) - mean
    rows = centred @ basis.T @ basis + mean
    out = untubelets(rows, padded.shape, patch)[:T]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tubelet", action="append", metavar="P:K",
                        help="4xPxP tubelets with K coefficients each (repeatable) [default: 8:16 and 16:16]")
    parser.add_argument("--frames", type=int, default=17, help="frames per held-out segment [17]")
    parser.add_argument("--size", type=int, default=128, help="held-out crop side [128]")
    parser.add_argument("--json", action="store_true", help="one JSON object per tubelet setting")
    args = parser.parse_args(argv)
    if args.size < 1 or args.frames < 1:
        raise SystemExit(f"error: --size and --frames must be >= 1, got {args.size} and {args.frames}")
    settings = []
    for text in args.tubelet or ["8:16", "16:16"]:
        try:
            patch, keep = (int(v) for v in text.split(":"))
        except ValueError:
            raise SystemExit(f"error: --tubelet takes P:K (two integers), got {text!r}") from None
        if patch < 1 or keep < 1 or args.size % patch:
            raise SystemExit(f"error: --tubelet {text}: P and K must be positive and P must divide {args.size}")
        settings.append((patch, keep))

    from vitok.data.samples import eval_segments, train_segments
    from vitok.train.evaluate import frame_psnr, frame_ssim

    from vitok.data.errors import VitokError

    try:
        train = [frames for _, frames in train_segments(num_frames=16, size=args.size)]
        held_out = eval_segments(num_frames=args.frames, size=args.size)   # --frames longer than a split: one line
    except VitokError as e:
        raise SystemExit(f"error: {e}") from None
    for patch, keep in settings:
        mean, basis = fit_pca(train, patch, keep)
        scores = [(frame_psnr(f, rec), frame_ssim(f, rec))
                  for f in (frames for _, frames in held_out)
                  for rec in [reconstruct(f, patch, mean, basis)]]
        psnr, ssim = (float(np.mean(col)) for col in zip(*scores))
        values = math.ceil(args.frames / FRAMES_PER_TUBELET) * (args.size // patch) ** 2 * keep
        row = {"patch": patch, "keep": keep, "values_per_segment": values, "psnr": psnr, "ssim": ssim,
               "segments": len(held_out), "train_segments": len(train)}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"4x{patch}x{patch} tubelets, {keep} coefficients ({values} values per segment): PSNR {psnr:.2f} dB, "
                  f"SSIM {ssim:.3f} ({len(held_out)} held-out {args.frames}x{args.size}x{args.size} segments; PCA "
                  f"fitted on {len(train)} training segments)")


if __name__ == "__main__":
    main()
