"""Grid ViT tokenizer (ViTok): tubelet embedding -> encoder -> linear bottleneck -> decoder -> tubelet pixels."""
from __future__ import annotations

import math

import torch
from torch import nn

from vitok.config import ViTConfig
from vitok.nn.block import Transformer
from vitok.nn.patch import patchify, unpatchify
from vitok.tokenizer import Tokenizer


def init_weights(module: nn.Module) -> None:
    """Small normal init for linear layers (std 0.02, zero bias), as in GPT/ViT."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ViTTokenizer(Tokenizer):
    """One unit = a (T, H, W) clip cut into T/pt x H/p x W/p tubelets; every tubelet gives one latent token."""

    config: ViTConfig

    def __init__(self, config: ViTConfig):
        super().__init__(config)
        c = config
        patch_dim = 3 * c.patch_t * c.patch * c.patch
        out = 2 * c.latent_channels if c.variational else c.latent_channels
        self.temporal_stride, self.spatial_stride = c.patch_t, c.patch
        self.embed = nn.Linear(patch_dim, c.enc_width)
        self.encoder = Transformer(c.enc_width, c.enc_depth, c.enc_heads, c.mlp_ratio, c.rope_theta)
        self.to_latent = nn.Linear(c.enc_width, out)
        self.from_latent = nn.Linear(c.latent_channels, c.dec_width)
        self.decoder = Transformer(c.dec_width, c.dec_depth, c.dec_heads, c.mlp_ratio, c.rope_theta)
        self.to_pixels = nn.Linear(c.dec_width, patch_dim)
        self.apply(init_weights)
        nn.init.normal_(self.from_latent.weight, std=c.latent_channels ** -0.5)  # O(1) tokens from O(1) latents

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` of this architecture with fewer encoder or decoder blocks, fitted to this one (a warm start to
        grow depth): the missing blocks are appended as identities, this model's fresh init with their output
        projections zeroed, so the grown model computes what the source did until training uses the new blocks."""
        out, own = dict(state), self.state_dict()
        for stack in ("encoder", "decoder"):
            prefix = f"{stack}.blocks."
            theirs = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
            for i in range(len(theirs), len(getattr(self, stack).blocks)):
                for k, v in own.items():
                    if k.startswith(f"{prefix}{i}."):
                        zero = k.endswith(("attn.proj.weight", "mlp.down.weight"))
                        out[k] = torch.zeros_like(v) if zero else v.detach().clone()
        return out

    def unit_frames(self, frames: int) -> int:
        return math.ceil(frames / self.temporal_stride) * self.temporal_stride

    def unit_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int] | None:
        return (frames // self.temporal_stride, height // self.spatial_stride, width // self.spatial_stride)

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.config.variational:
            return out, None
        mean, logvar = out.chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode_unit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens, grid = patchify(x, self.temporal_stride, self.spatial_stride)
        return self._split(self.to_latent(self.encoder(self.embed(tokens), grid)))

    def decode_unit(self, z: torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int, int]) -> torch.Tensor:
        grid = self.unit_grid(*size)
        h = self.decoder(self.from_latent(z), grid)
        return unpatchify(self.to_pixels(h), grid, self.temporal_stride, self.spatial_stride)
