"""Causal 3D CNN autoencoder: 4x temporal, 8x8 spatial compression, first frame coded alone (1+4k -> 1+k frames).

Cheap on CPU by design: a 4x4 space-to-depth first, so no convolution runs at full resolution. Causal in time:
convolutions pad only with the first frame (past side), norms are per position (channels only), temporal
upsampling drops the extra frame produced by the first latent frame.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitok.config import CNNConfig
from vitok.nn.patch import depth_to_space, space_to_depth
from vitok.tokenizer import Tokenizer

S2D = 4  # space-to-depth factor before the first convolution


class CausalConv3d(nn.Conv3d):
    """3D convolution that sees only the current and past frames (replicates the first frame as padding)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__(cin, cout, kernel, stride=stride, padding=(0, kernel // 2, kernel // 2))
        self.time_pad = kernel - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0), mode="replicate")
        return super().forward(x)


class ChannelNorm(nn.Module):
    """RMS norm over channels at each (t, y, x): no statistics cross frames, so causality and chunking hold."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return x * self.weight[:, None, None, None]


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.conv1 = ChannelNorm(channels), CausalConv3d(channels, channels)
        self.norm2, self.conv2 = ChannelNorm(channels), CausalConv3d(channels, channels)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Upsample(nn.Module):
    """x2 in time (and optionally x2 in space) by a 1x1x1 conv to more channels and depth-to-space;
    the first latent frame yields one frame, the others two (1+k -> 1+2k)."""

    def __init__(self, cin: int, cout: int, space: bool):
        super().__init__()
        self.fs = 2 if space else 1
        self.proj = nn.Conv3d(cin, cout * 2 * self.fs * self.fs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        B, C, T, H, W = x.shape
        x = x.view(B, C // 2, 2, T, H, W).permute(0, 1, 3, 2, 4, 5).reshape(B, C // 2, 2 * T, H, W)[:, :, 1:]
        return depth_to_space(x, self.fs) if self.fs > 1 else x


def stage(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*(ResBlock(channels) for _ in range(blocks)))


class CNNTokenizer(Tokenizer):
    """One unit = (1+4k) x H x W with H, W multiples of 8 -> (1+k) x H/8 x W/8 tokens of C channels."""

    config: CNNConfig
    temporal_stride = 4
    spatial_stride = 8

    def __init__(self, config: CNNConfig):
        super().__init__(config)
        c = config
        e0, e1, e2 = c.enc_channels
        d0, d1, d2 = c.dec_channels
        pix = 3 * S2D * S2D
        out = 2 * c.latent_channels if c.variational else c.latent_channels
        self.encoder = nn.Sequential(
            CausalConv3d(pix, e0), stage(e0, c.enc_blocks),
            CausalConv3d(e0, e1, stride=(2, 1, 1)), stage(e1, c.enc_blocks),
            CausalConv3d(e1, e2, stride=(2, 2, 2)), stage(e2, c.enc_blocks),
            ChannelNorm(e2), nn.SiLU(), CausalConv3d(e2, out),
        )
        self.decoder = nn.Sequential(
            CausalConv3d(c.latent_channels, d2), stage(d2, c.dec_blocks),
            Upsample(d2, d1, space=True), stage(d1, c.dec_blocks),
            Upsample(d1, d0, space=False), stage(d0, c.dec_blocks),
            ChannelNorm(d0), nn.SiLU(), CausalConv3d(d0, pix),
        )

    def unit_frames(self, frames: int) -> int:
        return 1 + 4 * -(-(frames - 1) // 4)

    def unit_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return (1 + (frames - 1) // 4, height // 8, width // 8)

    def encode_unit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.encoder(space_to_depth(x, S2D))
        tokens = h.flatten(2).transpose(1, 2)  # (B, t*h*w, C) raster order
        if not self.config.variational:
            return tokens, None
        mean, logvar = tokens.chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_unit(self, z: torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int, int]) -> torch.Tensor:
        t, h, w = self.unit_grid(*size)
        x = z.transpose(1, 2).reshape(z.shape[0], -1, t, h, w)
        return depth_to_space(self.decoder(x), S2D)
