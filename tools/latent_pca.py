"""How far a grid model's latents shrink linearly: PCA of GxG groups of neighbouring latent tokens (all channels),
fitted on the sample clips' training segments, K coefficients kept per group, decoded by the model itself and
scored on the model table's held-out segments (the metric of ``python -m vitok.train.evaluate``). It asks whether a
1D stage over the grid model's latents (FlexTok's layout) could reach the 1D aim's count cheaply: a group of 2x2
tokens kept to a quarter of its values holds the 1D model's 5120 values per segment.

    python tools/latent_pca.py vitok-grid --group 2:16 --group 1:4 --group 4:64 --group 2:32
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch


def groups(z: torch.Tensor, g: int) -> np.ndarray:
    """Latents ``(C, t, h, w)`` -> ``(N, C * g * g)`` float64 rows, one per gxg group of tokens of a latent frame."""
    C, t, h, w = z.shape
    x = z.double().numpy().reshape(C, t, h // g, g, w // g, g)
    return x.transpose(1, 2, 4, 0, 3, 5).reshape(-1, C * g * g)


def ungroups(rows: np.ndarray, shape: tuple[int, ...], g: int) -> torch.Tensor:
    """Inverse of ``groups`` for latents of ``shape``."""
    C, t, h, w = shape
    x = rows.reshape(t, h // g, w // g, C, g, g).transpose(3, 0, 1, 4, 2, 5).reshape(shape)
    return torch.from_numpy(np.ascontiguousarray(x)).float()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a grid model: bundled name or folder")
    parser.add_argument("--group", action="append", metavar="G:K",
                        help="GxG token groups with K coefficients each (repeatable) [default: 2:16]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", action="store_true", help="one JSON object per group setting")
    args = parser.parse_args(argv)
    settings = []
    for text in args.group or ["2:16"]:
        try:
            g, keep = (int(v) for v in text.split(":"))
        except ValueError:
            raise SystemExit(f"error: --group takes G:K (two integers), got {text!r}") from None
        if g < 1 or keep < 1:
            raise SystemExit(f"error: --group {text}: G and K must be positive")
        settings.append((g, keep))
    if args.threads:
        torch.set_num_threads(args.threads)

    import vitok
    from vitok.data.convert import frames_to_tensor, tensor_to_frames
    from vitok.data.errors import VitokError
    from vitok.data.samples import eval_segments, train_segments
    from vitok.train.evaluate import frame_psnr, frame_ssim

    try:
        tok = vitok.load(args.model)
    except VitokError as e:
        raise SystemExit(f"error: {e}") from None
    if tok.config.kind != "vit":
        raise SystemExit(f"error: {args.model} is a {tok.config.kind} model; latent groups need a grid ViT")

    def latents(frames: np.ndarray) -> vitok.Latents:
        return tok.encode(frames_to_tensor(frames)).mode()

    train = [latents(f) for _, f in train_segments(num_frames=17, size=128)]
    held_out = [(f, latents(f)) for _, f in eval_segments(num_frames=17, size=128)]
    for g, keep in settings:
        t, h, w = train[0].grid
        if h % g or w % g or keep > tok.latent_channels * g * g:
            raise SystemExit(f"error: --group {g}:{keep}: G must divide the {h}x{w} token grid and K be at most "
                             f"its {tok.latent_channels * g * g} values")
        rows = np.concatenate([groups(lat.as_grid()[0], g) for lat in train])
        mean = rows.mean(0)
        _, vectors = np.linalg.eigh((rows - mean).T @ (rows - mean))
        basis = vectors[:, ::-1][:, :keep].T
        scores = []
        for frames, lat in held_out:
            z = lat.as_grid()[0]
            kept = ungroups((groups(z, g) - mean) @ basis.T @ basis + mean, tuple(z.shape), g)
            rec = tensor_to_frames(tok.decode(dataclasses.replace(lat, z=kept.flatten(1).T[None])))
            scores.append((frame_psnr(frames, rec), frame_ssim(frames, rec)))
        psnr, ssim = (float(np.mean(col)) for col in zip(*scores))
        values = t * (h // g) * (w // g) * keep
        row = {"model": args.model, "group": g, "keep": keep, "values_per_segment": values, "psnr": psnr,
               "ssim": ssim, "segments": len(held_out), "train_segments": len(train)}
        print(json.dumps(row) if args.json else
              f"{args.model}: {g}x{g} token groups, {keep} of {tok.latent_channels * g * g} values ({values} per "
              f"segment): PSNR {psnr:.2f} dB, SSIM {ssim:.3f} ({len(held_out)} held-out segments; PCA fitted on "
              f"{len(train)} training segments)")


if __name__ == "__main__":
    main()
