"""How a video of any size maps onto model units: temporal chunks x spatial tiles, padding and tile blending.

Layout semantics (shared by `Latents.layout`, the codecs and the decoder):
- Time: a video of T <= clip_frames frames is one chunk, padded (replicating the last frame) to the model's
  unit length for T (`Tokenizer.unit_frames`). Longer videos are split into ceil(T / clip_frames) chunks of
  clip_frames frames; every chunk, the last one included, is padded to the same unit length, so all units share
  one geometry. Chunks are coded independently (memory stays flat in video length).
- Space: H and W are reflect-padded (bottom/right) to the spatial stride. An axis longer than `tile_size` is split
  into the fewest n overlapping tiles of at most `tile_size` with `overlap` pixels (tile_overlap * tile_size,
  rounded to the stride) and padded to exactly n * (tile - overlap) + overlap. With fitted tiles (grid models, whose
  units take any size) the tile shrinks to the smallest multiple of the stride that covers the axis, so padding
  stays under n strides; models with a fixed unit size (1D) keep tiles of `tile_size`. Tiles are encoded
  independently and blended on decode with linear ramps over the overlaps (the weights sum to one everywhere).
- Units are ordered chunk-major, then tile row, then tile column: layout = (chunks, tiles_h, tiles_w); each unit
  has `tokens_per_unit` tokens, so N = chunks * tiles_h * tiles_w * tokens_per_unit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitok.data.errors import VitokError


@dataclass(frozen=True)
class Axis:
    """One spatial axis: `count` tiles of `tile` pixels, `step` apart, covering `padded` pixels."""

    tile: int
    count: int
    step: int
    padded: int

    @property
    def overlap(self) -> int:
        return self.tile - self.step if self.count > 1 else 0


def overlap_pixels(tile: int, overlap_frac: float, stride: int) -> int:
    """The overlap in pixels between tiles of ``tile`` pixels: ``overlap_frac`` of a tile, rounded to the stride."""
    return round(tile * overlap_frac / stride) * stride


def plan_axis(size: int, stride: int, tile: int | None, overlap_frac: float, fit: bool = False) -> Axis:
    """Tiles along one axis of ``size`` pixels: the fewest of at most ``tile`` pixels that cover it with the overlap;
    ``fit``: each as small as covering allows (a multiple of ``stride``), else exactly ``tile``."""
    padded = math.ceil(size / stride) * stride
    if tile is None or padded <= tile:
        return Axis(padded, 1, padded, padded)
    overlap = overlap_pixels(tile, overlap_frac, stride)
    count = math.ceil((padded - overlap) / (tile - overlap))
    if fit:
        tile = math.ceil((padded + (count - 1) * overlap) / (count * stride)) * stride
    step = tile - overlap
    return Axis(tile, count, step, count * step + overlap)


@dataclass(frozen=True)
class Geometry:
    """Where the units of one video lie: original size, chunking, per-unit padded size, tiles."""

    frames: int
    height: int
    width: int
    clip_frames: int
    chunks: int
    unit_frames: int
    rows: Axis
    cols: Axis

    @property
    def layout(self) -> tuple[int, int, int]:
        return (self.chunks, self.rows.count, self.cols.count)

    @property
    def units(self) -> int:
        return self.chunks * self.rows.count * self.cols.count

    @property
    def unit_size(self) -> tuple[int, int, int]:
        """(frames, height, width) of one padded unit."""
        return (self.unit_frames, self.rows.tile, self.cols.tile)

    def chunk_range(self, c: int) -> tuple[int, int]:
        """Frames [start, stop) of the original video held by chunk c."""
        start = c * self.clip_frames
        return start, min(self.frames, start + self.clip_frames)

    def tiles(self) -> list[tuple[int, int, int, int]]:
        """(row index, col index, y0, x0) for every tile of a chunk, row-major."""
        return [(i, j, i * self.rows.step, j * self.cols.step)
                for i in range(self.rows.count) for j in range(self.cols.count)]


def plan(frames: int, height: int, width: int, *, clip_frames: int, unit_frames, stride: int,
         tile_size: int | None, tile_overlap: float, fit_tiles: bool = False) -> Geometry:
    """Plan the units for a video; `unit_frames(n)` gives the padded length of a chunk holding n frames;
    `fit_tiles`: tiles shrink to cover the frame (see `plan_axis`)."""
    if min(frames, height, width) < 1:
        raise VitokError(f"empty video geometry {frames}x{height}x{width}: frames, height and width must be >= 1")
    chunks = 1 if frames <= clip_frames else math.ceil(frames / clip_frames)
    return Geometry(frames, height, width, clip_frames, chunks, unit_frames(min(frames, clip_frames)),
                    plan_axis(height, stride, tile_size, tile_overlap, fit_tiles),
                    plan_axis(width, stride, tile_size, tile_overlap, fit_tiles))


def pad_chunk(x: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """Pad (B,C,T,H,W) at the end of each axis: time by replicating the last frame, space by reflection
    (replication where the frame is too small to reflect)."""
    T, H, W = x.shape[-3:]
    if T < frames:
        x = F.pad(x, (0, 0, 0, 0, 0, frames - T), mode="replicate")
    ph, pw = height - H, width - W
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph, 0, 0), mode="reflect" if _reflects(H, W, height, width) else "replicate")
    return x


def _reflects(H: int, W: int, height: int, width: int) -> bool:
    """Whether an H x W frame padded to height x width reflects (each pad shorter than its side) or replicates."""
    return height - H < H and width - W < W


def _source_rows(start: int, count: int, size: int, reflect: bool, device: torch.device) -> torch.Tensor:
    """Indices into an axis of ``size`` that rows ``start .. start + count`` of its padded form copy (see
    ``pad_chunk``: reflection without repeating the edge, or replication)."""
    r = torch.arange(start, start + count, device=device)
    return torch.where(r < size, r, 2 * size - 2 - r if reflect else torch.full_like(r, size - 1))


def pad_region(x: torch.Tensor, frames: int, height: int, width: int, y0: int, x0: int, tile_h: int,
               tile_w: int) -> torch.Tensor:
    """``pad_chunk(x, frames, height, width)[..., y0:y0 + tile_h, x0:x0 + tile_w]``, the same values, built from
    the tile's own pixels: memory for one tile, not for the whole padded chunk (a 4-frame 1080p chunk padded to a
    20-frame unit is 0.5 GB of float32)."""
    T, H, W = x.shape[-3:]
    reflect = _reflects(H, W, height, width)   # pad_chunk's rule, for the whole frame
    # inside the frame a view; past its edge the copied rows (a tile's worth)
    x = x[..., y0:y0 + tile_h, :] if y0 + tile_h <= H else x.index_select(-2, _source_rows(y0, tile_h, H, reflect,
                                                                                            x.device))
    x = x[..., x0:x0 + tile_w] if x0 + tile_w <= W else x.index_select(-1, _source_rows(x0, tile_w, W, reflect,
                                                                                         x.device))
    return F.pad(x, (0, 0, 0, 0, 0, frames - T), mode="replicate") if T < frames else x


def ramp(axis: Axis, index: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Blend weights along one axis for tile `index`: linear ramps over the overlaps with its neighbours."""
    w = torch.ones(axis.tile, device=device)
    ov = axis.overlap
    if ov:
        up = (torch.arange(ov, device=device, dtype=torch.float32) + 0.5) / ov
        if index > 0:
            w[:ov] = up
        if index < axis.count - 1:
            w[-ov:] = up.flip(0)
    return w


def blend_weights(geo: Geometry, i: int, j: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(tile_h, tile_w) weights of tile (i, j); summed over all tiles they are 1 at every padded pixel."""
    return ramp(geo.rows, i, device)[:, None] * ramp(geo.cols, j, device)[None, :]


def real_blend_weights(geo: Geometry, i: int, j: int, y0: int, x0: int,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """(unit_frames, tile_h, tile_w) weights of tile (i, j) at ``(y0, x0)`` over the video's real frames and pixels,
    0 on padding: what a tile's squared error is weighed by where tiles are costed or refined alone (summed over
    the tiles, their weighted errors bound the blended frame's)."""
    real = torch.zeros(geo.unit_frames, geo.rows.tile, geo.cols.tile, device=device)
    real[:geo.frames, :max(0, geo.height - y0), :max(0, geo.width - x0)] = 1
    return real * blend_weights(geo, i, j, device)
