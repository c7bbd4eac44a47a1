"""A diffusers-shaped view of a tokenizer: `.encode(x).latent_dist.sample()`, `.decode(z).sample`, `.config`.

Latents come out already normalized with the model's per-channel statistics, so `config.scaling_factor` is 1.0
and `shift_factor` 0.0: pipelines that multiply by the scaling factor do the right thing, and nobody can forget
the normalization. Grid models give (B, C, t, h, w) latents ((B, C, h, w) for 4D image input); 1D models give
(B, C, N). Decoding needs the video geometry: grid models infer it from the latent grid (padded size), 1D models
use `sample_size` (default: one unit, clip_frames x tile_size x tile_size). As in diffusers, grid models work on
whole frames unless `enable_tiling()` is called: then frames up to the model's tile size run as before, and larger
ones, whose tiles' latents form no single grid, are refused with a pointer to the tokenizer's own `encode`/`decode`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from vitok.data.errors import VitokError
from vitok.latents import gaussian_noise
from vitok.tokenizer import Tokenizer


class LatentDistribution:
    """Diagonal Gaussian over latents, shaped like diffusers' DiagonalGaussianDistribution."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor | None = None):
        self.deterministic = logvar is None
        self.mean = mean
        self.logvar = torch.zeros_like(mean) if logvar is None else logvar
        self.std = torch.zeros_like(mean) if logvar is None else torch.exp(0.5 * self.logvar)
        self.var = self.std.pow(2)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean + self.std * gaussian_noise(self.mean, generator)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) per item, summed over all other dims (diffusers sums dims 1-3 only: for a video latent its
        values are these split per column); zeros when deterministic."""
        if self.deterministic:
            return self.mean.new_zeros(self.mean.shape[0])
        dims = tuple(range(1, self.mean.ndim))
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=dims)


@dataclass
class EncoderOutput:
    latent_dist: LatentDistribution


@dataclass
class DecoderOutput:
    sample: torch.Tensor


@dataclass
class AdapterConfig:
    latent_channels: int
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    temporal_compression_ratio: int | None = 1   # None for 1D models: their tokens form no grid
    spatial_compression_ratio: int | None = 1


class DiffusersAdapter(nn.Module):
    """Wraps a Tokenizer for code written against diffusers autoencoders (AutoencoderKL-style calls)."""

    def __init__(self, tok: Tokenizer, sample_size: tuple[int, int, int] | None = None):
        super().__init__()
        self.tok = tok
        c = tok.config
        self.sample_size = sample_size
        if sample_size is None and tok.max_tokens is not None and c.tile_size is not None:
            self.sample_size = (c.clip_frames, c.tile_size, c.tile_size)
        grid = tok.max_tokens is None
        self.config = AdapterConfig(latent_channels=c.latent_channels,
                                    temporal_compression_ratio=tok.temporal_stride if grid else None,
                                    spatial_compression_ratio=tok.spatial_stride if grid else None)

        self.use_tiling = False

    def enable_tiling(self) -> None:
        """Accept diffusers' call; frames larger than the model's tile size are then refused by `encode` (their
        tiles' latents form no single grid: use the tokenizer's `encode`/`decode`, which tile and blend)."""
        self.use_tiling = True

    def disable_tiling(self) -> None:
        """Whole frames in one pass (the default): grid latents then form one (B, C, t, h, w) tensor."""
        self.use_tiling = False

    @property
    def _tiled(self) -> bool:
        """Grid models run untiled unless tiling is on; 1D models always use their trained unit size."""
        return self.use_tiling or self.tok.max_tokens is not None

    @property
    def _image_1d(self) -> bool:
        """A 1D model's adapter made with sample_size=(1, H, W) codes images: its decode gives (B, 3, H, W), as the
        grid path does for image latents (1D tokens carry no shape to tell an image from a one-frame video)."""
        return self.tok.max_tokens is not None and self.sample_size is not None and self.sample_size[0] == 1

    @property
    def dtype(self) -> torch.dtype:
        return self.tok.dtype

    @property
    def device(self) -> torch.device:
        return self.tok.device

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """x (B,3,H,W) or (B,3,T,H,W) in [-1,1] -> EncoderOutput(latent_dist) over normalized latents."""
        image = x.ndim == 4
        size = (1, *x.shape[-2:]) if image else tuple(x.shape[-3:])
        if self.tok.max_tokens is not None and self.sample_size is not None and size != tuple(self.sample_size):
            raise VitokError(f"DiffusersAdapter: a 1D model's latents decode at sample_size={tuple(self.sample_size)} "
                             f"(frames, height, width), this input is {size}: make the adapter with "
                             f"sample_size={size}")
        lat = self.tok.encode(x.unsqueeze(2) if image else x, tiled=self._tiled).normalized()
        if lat.grid is not None:
            if lat.layout[1] * lat.layout[2] != 1:
                raise VitokError(f"DiffusersAdapter: with tiling on, {x.shape[-2]}x{x.shape[-1]} frames split into "
                                 f"{lat.layout[1]}x{lat.layout[2]} tiles whose latents form no single grid; use "
                                 "tok.encode/tok.decode for tiled latents, or disable_tiling()")
            mean = lat.as_grid()
            logvar = None if lat.logvar is None else dataclasses.replace(lat, z=lat.logvar).as_grid()
            if image:
                mean, logvar = mean[:, :, 0], None if logvar is None else logvar[:, :, 0]
        else:
            mean, logvar = lat.z.transpose(1, 2), None if lat.logvar is None else lat.logvar.transpose(1, 2)
        dist = LatentDistribution(mean, logvar)
        return EncoderOutput(dist) if return_dict else (dist,)

    def _geometry(self, z: torch.Tensor) -> tuple[int, int, int]:
        """(frames, height, width) to decode z at: sample_size for 1D, else the padded size of the latent grid."""
        tok = self.tok
        if tok.max_tokens is not None:
            if self.sample_size is None:
                raise VitokError("DiffusersAdapter: pass sample_size=(frames, height, width) to decode 1D latents")
            return self.sample_size
        s = tok.spatial_stride
        t, h, w = (1, *z.shape[2:]) if z.ndim == 4 else tuple(z.shape[2:])
        height, width = h * s, w * s
        if tok.plan(1, height, width, self._tiled).layout != (1, 1, 1):
            raise VitokError(f"DiffusersAdapter: {height}x{width} frames are tiled; decode through tok.decode")
        if z.ndim == 4:
            return 1, height, width
        per_chunk = {tok.unit_grid(tok.unit_frames(f), s, s)[0]: tok.unit_frames(f)
                     for f in range(1, tok.clip_frames + 1)}
        full = tok.unit_grid(tok.unit_frames(tok.clip_frames), s, s)[0]
        if t in per_chunk:
            return per_chunk[t], height, width
        if t % full:
            raise VitokError(f"DiffusersAdapter: {t} latent frames is not a whole number of {full}-frame chunks")
        return t // full * tok.clip_frames, height, width

    def decode(self, z: torch.Tensor, return_dict: bool = True, num_tokens: int | None = None):
        """Normalized latents in the layout `encode` gives -> DecoderOutput(sample) video, or image (B, 3, H, W) for
        4D grid latents and for a 1D adapter of sample_size (1, H, W). ``num_tokens=k``: 1D latents that hold the
        first k tokens of every unit (a prefix, as `vitok latents extract --tokens k` keeps)."""
        want = (3,) if self.tok.max_tokens is not None else (4, 5)
        if not isinstance(z, torch.Tensor) or z.ndim not in want or z.shape[1] != self.config.latent_channels:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            layout = "(B, C, N)" if want == (3,) else "(B, C, t, h, w) or (B, C, h, w)"
            raise VitokError(f"DiffusersAdapter: latents must be {layout} with C={self.config.latent_channels}, "
                             f"got {shape}")
        frames, height, width = self._geometry(z)
        if num_tokens is not None and self.tok.max_tokens is None:
            raise VitokError("DiffusersAdapter: num_tokens is for 1D models (a grid model's latents hold every token)")
        if self.tok.max_tokens is not None:
            tokens = z.transpose(1, 2)
        else:
            grid = z.unsqueeze(2) if z.ndim == 4 else z
            tokens = grid.flatten(2).transpose(1, 2)
        try:
            lat = self.tok.make_latents(tokens, frames, height, width, num_tokens, tiled=self._tiled)
        except VitokError:
            if self.tok.max_tokens is None:
                raise
            units = self.tok.plan(frames, height, width, True).units
            prefix = (f", or pass num_tokens={tokens.shape[1] // units} if they are the first tokens of each of its "
                      f"{units} unit(s)" if num_tokens is None and tokens.shape[1] % units == 0
                      and tokens.shape[1] < units * self.tok.max_tokens else "")
            raise VitokError(f"DiffusersAdapter: {tokens.shape[1]} latent tokens do not fit sample_size="
                             f"{tuple(self.sample_size)} (frames, height, width)"
                             f"{'' if num_tokens is None else f' at num_tokens={num_tokens}'}; make the adapter with "
                             f"the size the latents were encoded at{prefix}") from None
        lat = dataclasses.replace(lat, is_normalized=True)
        video = self.tok.decode(lat)
        video = video[:, :, 0] if z.ndim == 4 or self._image_1d else video
        return DecoderOutput(video) if return_dict else (video,)
