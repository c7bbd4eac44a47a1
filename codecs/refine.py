"""Encoder-side latent refinement: a chunk's tokens, as the encoder gives them, take a few Adam steps towards tokens
the frozen decoder renders closer to the chunk's frames. An encoder network leaves part of what its decoder could
render on the table (the amortization gap: README, "Bundled models"); a few steps of gradient descent
close some of it. When the quantization step is known, the last quarter of the steps render the tokens as the decoder
will get them, rounded to the step (straight-through gradients): tokens chosen to decode well once quantized.
Only encoding takes longer: the decoder, the entropy tables and the stream format stay as they are.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vitok.codecs.errors import CodecError

if TYPE_CHECKING:
    import torch

LEARNING_RATE = 0.02   # Adam's step on the tokens, in units of each channel's scale (the quantizer's std)
MAX_STEPS = 10_000      # a bound that keeps a typo from running for days
TILES_PER_BATCH = 4    # tiles refined together: the decoder's activations stay bounded (8 was slower on 2 CPUs)


def check_refine(steps: Any) -> int:
    """``steps`` as a refinement step count, or a one-line error naming the bad value."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 0 <= steps <= MAX_STEPS:
        raise CodecError(f"refine must be a whole number of steps in 0..{MAX_STEPS}, got {steps!r}")
    return int(steps)


def refine_tokens(tok: Any, video: torch.Tensor, z: torch.Tensor, steps: int,
                  tokens: int | Sequence[int] | None = None, tile_overlap: float | None = None,
                  scale: Sequence[float] | None = None, step: float | None = None, offset: np.ndarray | None = None,
                  tiles: Sequence[int] | None = None) -> torch.Tensor:
    """``z`` ``(units * n, C)``, the tokens ``tok.encode`` gives the one-chunk ``video`` ``(1, 3, T, H, W)``, after
    ``steps`` Adam steps on each tile's squared error over the frame's real pixels, weighed by the tile's blend
    weights (the sum bounds the blended frame's error, and tiles are refined independently, a few at a time). 1D
    models: the decoder sees each unit's first ``tokens`` (None: all K; a sequence: one count per unit); the tokens
    after them are returned as given. ``tiles``: which of the chunk's tiles (``plan(...).tiles()`` indices) the units
    of ``z`` are, a tile possibly more than once, as for several counts (default: every tile, in order).
    ``scale``: each channel's unit for Adam's steps, the entropy tables' std, which quantization steps count in
    (default: the model's latent std). ``step``: the quantization step the tokens will be coded at (in units of
    ``scale``, about ``offset``, the tables' ``mean``); the last ``steps // 4`` steps decode them rounded to it,
    as tables without ``rd_lambda`` round them (with it, an approximation), with the gradient passed straight
    through the rounding (None: never rounded). Gradients reach the tokens alone, whatever the caller's grad mode:
    the model is left as it was."""
    import torch

    from vitok.geometry import pad_region, real_blend_weights

    if steps <= 0:
        return z
    if step is not None and scale is None:
        raise ValueError("refine_tokens rounds to a step in the entropy tables' units: give their std as scale")
    g = tok.plan(*video.shape[2:], tile_overlap=tile_overlap)
    if g.chunks != 1:
        raise ValueError(f"refine_tokens takes one chunk of at most {g.unit_frames} frames, got {video.shape[2]}")
    every = g.tiles()
    tiles = every if tiles is None else [every[t] for t in tiles]
    counts = list(tokens) if isinstance(tokens, (Sequence, np.ndarray)) else [tokens] * len(tiles)
    if len(counts) != len(tiles):
        raise ValueError(f"refine_tokens got {len(counts)} token counts for {len(tiles)} units")
    with torch.inference_mode(False), torch.enable_grad():
        given = z.detach().clone().float().reshape(len(tiles), tok.tokens_per_unit(*g.unit_size), -1)
        unit = scale if scale is not None else tok.config.latent_std or [1.0] * given.shape[-1]
        std = torch.as_tensor(np.asarray(unit, np.float32), device=given.device)
        centre = torch.as_tensor(np.zeros(1) if offset is None else offset, dtype=torch.float32,
                                 device=given.device) / std
        rounded_from = steps - (steps // 4 if step else 0)
        frames = video.detach().clone()
        out = given.clone()
        for first in range(0, len(tiles), TILES_PER_BATCH):
            batch = tiles[first:first + TILES_PER_BATCH]
            target = torch.cat([pad_region(frames, g.unit_frames, g.rows.padded, g.cols.padded, y0, x0, g.rows.tile,
                                           g.cols.tile) for _, _, y0, x0 in batch]).to(given.device, torch.float32)
            weight = torch.stack([real_blend_weights(g, i, j, y0, x0, given.device) for i, j, y0, x0 in batch])[:, None]
            # each tile's error over its own weight: a tile's steps do not depend on the tiles beside it
            norm = weight.flatten(1).sum(1).clamp_min(1)
            mask = _prefix_mask(tok, counts[first:first + len(batch)], given.device)
            u = (given[first:first + len(batch)] / std).requires_grad_(True)
            opt = torch.optim.Adam([u], lr=LEARNING_RATE)
            for i in range(steps):
                seen = u if i < rounded_from else u + _rounding(u - centre, step).detach()
                rendered = tok.decode_unit((seen * std).to(tok.dtype), mask, g.unit_size).float()
                loss = (((rendered - target).square() * weight).flatten(1).sum(1) / norm).sum()
                u.grad, = torch.autograd.grad(loss, [u])   # the model's parameters collect nothing
                opt.step()
            out[first:first + len(batch)] = u.detach() * std
        for unit, k in enumerate(counts):   # never seen by the decoder: exactly as the encoder gave them
            if k is not None:
                out[unit, k:] = given[unit, k:]
        return out.reshape(z.shape).to(z.dtype)


def _prefix_mask(tok: Any, counts: Sequence[int | None], device: Any) -> torch.Tensor | None:
    """The (units, K) mask of each unit's first ``counts[u]`` tokens (``tok.token_mask`` checks every count);
    None when every unit keeps all of its tokens."""
    import torch

    rows = [tok.token_mask(1, k, device) for k in counts]
    if all(row is None for row in rows):
        return None
    every = torch.ones(1, tok.max_tokens, dtype=torch.bool, device=device)
    return torch.cat([every if row is None else row for row in rows])


def _rounding(v: torch.Tensor, step: float) -> torch.Tensor:
    """What rounding ``v`` to a multiple of ``step`` adds to it, as the quantizer's nearest rounding does."""
    import torch

    return torch.round(v / step) * step - v
