"""`Latents`: the one latent type every tokenizer returns, with its geometry, mask and normalization."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vitok.data.errors import VitokError


def gaussian_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device and moved to ``like``'s, so a CPU
    generator reproduces the same draw whatever device the latents are on (as diffusers' ``randn_tensor``)."""
    device = like.device if generator is None else generator.device
    eps = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
    return eps.to(like.device)


@dataclass
class Latents:
    """Tokens `z` (B, N, C) of a video, N = units * tokens_per_unit (see vitok.geometry for the layout).

    z is the posterior mean (or a sample after `sample()`); `logvar` the posterior log-variance (KL bottlenecks).
    `mask` (B, N) is True where a token is present; 1D models keep all K tokens per unit in z, zeros where masked.
    `grid` is the (t, h, w) token grid of one unit for grid models (None for 1D). frames/height/width are the
    original video geometry. `latent_mean`/`latent_std` are the model's per-channel statistics used by
    `normalized()`; `is_normalized` says which space z is in. `sizes` lists per-item geometry after a `collate`
    of mixed geometries (then layout/grid are None and the batch cannot be decoded as one). `tiled` is False for
    whole frames coded in one pass; `tile_overlap` the overlap of tiles when not the model's (a fraction of the
    tile size, None: the model's).
    """

    z: torch.Tensor
    frames: int
    height: int
    width: int
    layout: tuple[int, int, int] | None
    grid: tuple[int, int, int] | None = None
    mask: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    model: str = ""
    latent_mean: list[float] | None = None
    latent_std: list[float] | None = None
    is_normalized: bool = False
    sizes: list[tuple[int, int, int]] | None = None
    tiled: bool = True
    tile_overlap: float | None = None

    @property
    def batch_size(self) -> int:
        return self.z.shape[0]

    @property
    def channels(self) -> int:
        return self.z.shape[-1]

    @property
    def units(self) -> int | None:
        return None if self.layout is None else self.layout[0] * self.layout[1] * self.layout[2]

    @property
    def tokens_per_unit(self) -> int | None:
        return None if self.layout is None else self.z.shape[1] // self.units

    @property
    def num_tokens(self) -> int | None:
        """Present tokens per unit (the largest over the batch); None for a mixed-geometry collate."""
        if self.layout is None:
            return None
        if self.mask is None:
            return self.tokens_per_unit
        return int(self.mask.view(self.batch_size, self.units, -1).sum(-1).max())

    def _replace(self, **changes) -> Latents:
        return dataclasses.replace(self, **changes)

    def _masked(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.mask is None else z * self.mask[..., None].to(z.dtype)

    def mode(self) -> Latents:
        """The posterior mode (= mean) as a point estimate."""
        return self._replace(logvar=None)

    def sample(self, generator: torch.Generator | None = None) -> Latents:
        """A draw z + sigma * eps from the posterior (the mode when there is no log-variance)."""
        if self.logvar is None:
            return self
        eps = gaussian_noise(self.z, generator)
        return self._replace(z=self._masked(self.z + torch.exp(0.5 * self.logvar) * eps), logvar=None)

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per item (B,), summed over present tokens and channels; zeros without logvar."""
        if self.logvar is None:
            return self.z.new_zeros(self.batch_size)
        kl = 0.5 * (self.z.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return self._masked(kl).sum(dim=(1, 2))

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.latent_mean is None or self.latent_std is None:
            return None
        kw = dict(device=self.z.device, dtype=self.z.dtype)
        return torch.tensor(self.latent_mean, **kw), torch.tensor(self.latent_std, **kw)

    def normalized(self) -> Latents:
        """Generator-ready latents: (z - mean) / std per channel with the model's statistics (identity if none)."""
        stats = self._stats()
        if self.is_normalized:
            return self
        if stats is None:
            return self._replace(is_normalized=True)
        mean, std = stats
        logvar = None if self.logvar is None else self.logvar - 2 * std.log()
        return self._replace(z=self._masked((self.z - mean) / std), logvar=logvar, is_normalized=True)

    def denormalized(self) -> Latents:
        """Undo `normalized()`: back to the model's raw latent space (what `decode` consumes)."""
        stats = self._stats()
        if not self.is_normalized:
            return self
        if stats is None:
            return self._replace(is_normalized=False)
        mean, std = stats
        logvar = None if self.logvar is None else self.logvar + 2 * std.log()
        return self._replace(z=self._masked(self.z * std + mean), logvar=logvar, is_normalized=False)

    def as_grid(self) -> torch.Tensor:
        """(B, C, chunks * t, h, w) for grid models on untiled frames (chunks concatenated along time)."""
        if self.grid is None or self.layout is None:
            raise VitokError("as_grid() needs latents from a grid model (1D tokens have no grid)")
        chunks, th, tw = self.layout
        if th * tw != 1:
            raise VitokError(f"as_grid() needs untiled latents; this video has {th}x{tw} spatial tiles")
        t, h, w = self.grid
        z = self.z.view(self.batch_size, chunks, t, h, w, self.channels)
        return z.permute(0, 5, 1, 2, 3, 4).reshape(self.batch_size, self.channels, chunks * t, h, w)

    def to(self, device: torch.device | str | torch.dtype | None = None, dtype: torch.dtype | None = None, *,
           non_blocking: bool = False) -> Latents:
        """Move to `device` and/or cast `z` and `logvar` to a floating `dtype` (``to(torch.bfloat16)`` works too);
        the mask stays boolean. `non_blocking` as for ``Tensor.to`` (copies from pinned memory overlap compute)."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None and not dtype.is_floating_point:
            raise VitokError(f"Latents.to: latents are floating point, got dtype {dtype}")

        def cast(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype, non_blocking=non_blocking)

        mask = None if self.mask is None else self.mask.to(device=device, non_blocking=non_blocking)
        return self._replace(z=cast(self.z), mask=mask, logvar=cast(self.logvar))


def collate(items: list[Latents]) -> Latents:
    """Batch latents of one model: concatenate along B; different token counts are zero-padded and masked."""
    if not items:
        raise ValueError("collate needs at least one Latents")
    first = items[0]
    for it in items[1:]:
        if (it.model, it.channels, it.is_normalized) != (first.model, first.channels, first.is_normalized):
            raise VitokError("collate: latents come from different models, channel counts or normalization states")
    if len({it.logvar is None for it in items}) > 1:
        raise VitokError("collate: mix of latents with and without log-variance (call mode() on all)")
    n = max(it.z.shape[1] for it in items)
    same = len({(it.frames, it.height, it.width, it.layout, it.grid, it.tiled, it.tile_overlap)
                for it in items}) == 1 \
        and all(it.sizes is None for it in items)   # batches of mixed sizes: rebuilt below, item by item

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[1]))

    z = torch.cat([pad(it.z) for it in items])
    logvar = None if first.logvar is None else torch.cat([pad(it.logvar) for it in items])
    mask = None
    if not same or any(it.mask is not None for it in items):
        rows = []
        for it in items:
            m = it.mask if it.mask is not None else torch.ones(it.z.shape[:2], dtype=torch.bool, device=it.z.device)
            rows.append(torch.nn.functional.pad(m, (0, n - m.shape[1])))
        mask = torch.cat(rows)
    if same:
        return first._replace(z=z, logvar=logvar, mask=mask)
    sizes = [s for it in items for s in (it.sizes or [(it.frames, it.height, it.width)] * it.batch_size)]
    return first._replace(z=z, logvar=logvar, mask=mask, layout=None, grid=None, sizes=sizes,
                          frames=max(s[0] for s in sizes), height=max(s[1] for s in sizes),
                          width=max(s[2] for s in sizes))
