"""How much of a tokenizer's error is its encoder's: each held-out segment's latents, as encoded, are then optimised
by gradient descent through the frozen decoder (Adam on pixel MSE, no quantization); the PSNR gained is the gap an
encoder of the same decoder could still close (an upper bound: the optimised latents need not be ones any encoder,
or nested dropout's prefix order, would give).

    python tools/amortization_gap.py vitok-1d --steps 400 --every 2
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch


def refine(tok: torch.nn.Module, frames: np.ndarray, steps: int, lr: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 reconstructions of ``frames`` from the encoder's latents and from those latents after ``steps`` Adam
    steps on the decoder's pixel MSE."""
    from vitok.data.convert import frames_to_tensor, tensor_to_frames

    video = frames_to_tensor(frames)
    with torch.no_grad():
        lat = tok.encode(video)
        first = tensor_to_frames(tok.decode(lat).float())
    z = lat.z.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        loss = (tok.decode(dataclasses.replace(lat, z=z)).float() - video).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return first, tensor_to_frames(tok.decode(dataclasses.replace(lat, z=z)).float())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="bundled model name or model folder")
    parser.add_argument("--steps", type=int, default=400, help="Adam steps per segment [400]")
    parser.add_argument("--lr", type=float, default=0.02, help="Adam learning rate on the latents [0.02]")
    parser.add_argument("--every", type=int, default=1, help="every N-th held-out segment [1: all 8]")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.every < 1 or not args.lr > 0:
        raise SystemExit("error: --steps and --every must be at least 1 and --lr positive")
    import vitok
    from vitok.data.errors import VitokError
    from vitok.data.samples import eval_segments
    from vitok.train.evaluate import frame_psnr

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        tok = vitok.load(args.model).float().eval()
    except VitokError as e:   # an unknown name, a folder that holds no model: one line
        raise SystemExit(f"error: {e}") from None
    tok.requires_grad_(False)
    rows = []
    for seg_id, frames in eval_segments(num_frames=17, size=128)[::args.every]:
        first, refined = refine(tok, frames, args.steps, args.lr)
        rows.append({"id": seg_id, "encoded_psnr": frame_psnr(frames, first),
                     "refined_psnr": frame_psnr(frames, refined)})
        if not args.json:
            print(f"{seg_id}: {rows[-1]['encoded_psnr']:.2f} -> {rows[-1]['refined_psnr']:.2f} dB", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("encoded_psnr", "refined_psnr")}
    if args.json:
        print(json.dumps({"model": args.model, "steps": args.steps, "lr": args.lr, **mean, "segments": rows}))
    else:
        print(f"{args.model}: encoded {mean['encoded_psnr']:.2f} dB, latents refined by {args.steps} steps "
              f"{mean['refined_psnr']:.2f} dB (gap {mean['refined_psnr'] - mean['encoded_psnr']:.2f} dB, "
              f"{len(rows)} held-out 17x128x128 segments, unquantized)")


if __name__ == "__main__":
    main()
