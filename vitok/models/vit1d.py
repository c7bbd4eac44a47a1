"""1D ViT tokenizer (TiTok/FlexTok line): K learned latent tokens read the patches; only they leave the encoder.

The decoder rebuilds every patch from a learned mask token at its position plus the (projected) latents. In
training, nested dropout keeps a random prefix of k tokens and replaces the tail with a learned mask token, so
any prefix decodes: `encode(video, num_tokens=k)` trades quality for tokens at run time.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vitok.config import ViT1DConfig
from vitok.data.errors import VitokError
from vitok.models.vit import ViTTokenizer
from vitok.nn.patch import patchify, unpatchify
from vitok.nn.rope import sincos_3d


class ViT1DTokenizer(ViTTokenizer):
    """One unit = clip_frames x tile; K = num_latents tokens per unit whatever its size."""

    config: ViT1DConfig

    def __init__(self, config: ViT1DConfig):
        super().__init__(config)
        c = config
        K = c.num_latents
        self.latent_tokens = nn.Parameter(torch.randn(K, c.enc_width) * 0.02)
        self.latent_pos = nn.Parameter(torch.randn(K, c.dec_width) * 0.02)
        self.tail_token = nn.Parameter(torch.randn(c.dec_width) * 0.02)
        self.patch_token = nn.Parameter(torch.randn(c.dec_width) * 0.02)

    @property
    def max_tokens(self) -> int:
        return self.config.num_latents

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` of a 1D model with another token count, fitted to this one's: the first tokens are kept (nested
        dropout ranks them first), tokens past the source's keep this model's fresh init. A warm start to grow K
        (and depth, see the grid model's): the encoder's tokens still see one another, so it needs training."""
        out = super().adapt_state_dict(state)
        for name in ("latent_tokens", "latent_pos"):
            own = getattr(self, name)
            if name in out and out[name].shape[1:] == own.shape[1:] and out[name].shape[0] != own.shape[0]:
                n = min(own.shape[0], out[name].shape[0])
                out[name] = torch.cat([out[name][:n].to(own.dtype), own.detach()[n:]])
        return out

    def unit_frames(self, frames: int) -> int:
        """Every unit spans at least clip_frames (short clips are padded), the length the model was trained on."""
        pt = self.temporal_stride
        return math.ceil(max(frames, self.config.clip_frames) / pt) * pt

    def unit_grid(self, frames: int, height: int, width: int) -> None:
        return None

    def tokens_per_unit(self, frames: int, height: int, width: int) -> int:
        return self.config.num_latents

    def token_mask(self, batch: int, num_tokens: int | None, device: torch.device,
                   sample: bool = False) -> torch.Tensor | None:
        """Prefix mask (batch, K); with `sample` and no num_tokens, a random prefix length per item."""
        K = self.config.num_latents
        if num_tokens is None and sample:
            keep = self._sample_keep(batch, device)
        elif num_tokens is None or num_tokens == K:
            return None
        elif isinstance(num_tokens, int) and not isinstance(num_tokens, bool) and 1 <= num_tokens <= K:
            keep = torch.full((batch,), num_tokens, device=device)
        else:
            raise VitokError(f"{self.config.name}: num_tokens must be an integer in 1..{K}, got {num_tokens!r}")
        return torch.arange(K, device=device)[None, :] < keep[:, None]

    def _sample_keep(self, batch: int, device: torch.device) -> torch.Tensor:
        c = self.config
        if c.token_sampling == "uniform":
            keep = torch.randint(c.min_tokens, c.num_latents + 1, (batch,), device=device)
        else:
            powers = {2 ** i for i in range(c.num_latents.bit_length()) if 2 ** i >= c.min_tokens}
            choices = torch.tensor(sorted(powers | {c.num_latents}), device=device)
            keep = choices[torch.randint(len(choices), (batch,), device=device)]
        full = torch.rand(batch, device=device) < c.full_tokens_prob
        return torch.where(full, torch.full_like(keep, c.num_latents), keep)

    def encode_unit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens, grid = patchify(x, self.temporal_stride, self.spatial_stride)
        K = self.config.num_latents
        h = torch.cat([self.embed(tokens), self.latent_tokens.expand(x.shape[0], -1, -1)], dim=1)
        return self._split(self.to_latent(self.encoder(h, grid, extra=K)[:, -K:]))

    def decode_unit(self, z: torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int, int]) -> torch.Tensor:
        B, K = z.shape[:2]
        grid = (size[0] // self.temporal_stride, size[1] // self.spatial_stride, size[2] // self.spatial_stride)
        L = math.prod(grid)
        lat = self.from_latent(z) + self.latent_pos
        if mask is not None:
            lat = torch.where(mask[..., None], lat, self.tail_token.to(lat.dtype))
        queries = (self.patch_token + sincos_3d(grid, lat.shape[-1], device=lat.device)).to(lat.dtype)
        h = torch.cat([queries.expand(B, -1, -1), lat], dim=1)
        pixels = self.to_pixels(self.decoder(h, grid, extra=K)[:, :L])
        return unpatchify(pixels, grid, self.temporal_stride, self.spatial_stride)
