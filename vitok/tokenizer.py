"""`Tokenizer`: the one API of every vitok autoencoder (grid ViT, 1D ViT, causal CNN).

Subclasses implement one *unit* (a padded chunk/tile): `unit_frames`, `unit_grid`, `tokens_per_unit`,
`encode_unit`, `decode_unit`. This base class handles padding, temporal chunks, spatial tiles with blending
(see vitok.geometry), frozen inference, `Latents` construction, saving and hashing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import operator
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from vitok.config import MAX_TILE_OVERLAP, TokenizerConfig
from vitok.data.atomic import atomic_path
from vitok.data.errors import VitokError
from vitok.geometry import Geometry, blend_weights, pad_chunk, pad_region, plan
from vitok.latents import Latents


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 hex over a state dict: sorted names, dtypes, shapes and raw bytes (what `.vtok` files check)."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


VALUE_WARN = 1.5  # |value| above which encode warns: [0, 255] input, not a decode's slight overshoot of [-1, 1]


def _count(num_tokens: Any) -> Any:
    """An integer token count of any integer type (numpy, 0-d tensor) as an int; anything else as given, for the
    model's check to name."""
    if num_tokens is None or isinstance(num_tokens, bool):
        return num_tokens
    try:
        return operator.index(num_tokens)
    except TypeError:
        return num_tokens


class Tokenizer(nn.Module):
    """Base class: encode(video) -> Latents, decode(Latents) -> video, forward(video) for training."""

    temporal_stride: int
    spatial_stride: int

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        config.validate()
        self.config = config
        self._hash_cache: tuple[tuple, str] | None = None

    # ---- per-kind hooks -------------------------------------------------------------------------------------
    def unit_frames(self, frames: int) -> int:
        """Padded length of a chunk holding `frames` frames."""
        raise NotImplementedError

    def unit_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int] | None:
        """Latent (t, h, w) grid of one padded unit, None for 1D models."""
        raise NotImplementedError

    def tokens_per_unit(self, frames: int, height: int, width: int) -> int:
        return math.prod(self.unit_grid(frames, height, width))

    def encode_unit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Padded unit (B,3,T,H,W) -> posterior mean (B, n, C) and log-variance (or None)."""
        raise NotImplementedError

    def decode_unit(self, z: torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int, int]) -> torch.Tensor:
        """Tokens (B, n, C) (+ presence mask) of one unit of padded `size` (T, H, W) -> (B,3,T,H,W)."""
        raise NotImplementedError

    def token_mask(self, batch: int, num_tokens: int | None, device: torch.device,
                   sample: bool = False) -> torch.Tensor | None:
        """(batch, tokens_per_unit) presence mask for one unit; None when every token is present.
        `sample` (training forward only) lets 1D models draw a random prefix length per item."""
        if num_tokens is not None:
            raise VitokError(f"{self.config.name}: num_tokens is only for 1D models (this is a {self.config.kind})")
        return None

    # ---- properties -----------------------------------------------------------------------------------------
    @property
    def clip_frames(self) -> int:
        return self.config.clip_frames

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def max_tokens(self) -> int | None:
        """Tokens per unit of a 1D model (the largest `num_tokens`); None for grid models."""
        return None

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def freeze(self) -> Tokenizer:
        """eval() + requires_grad_(False): encode/decode then run under torch.inference_mode."""
        self.eval()
        self.requires_grad_(False)
        self._hash_cache = None   # weights may have changed unseen while trainable (fused optimizer steps)
        return self

    def set_latent_stats(self, mean: list[float] | torch.Tensor, std: list[float] | torch.Tensor) -> None:
        """Store per-channel latent statistics in the config (used by Latents.normalized, saved with the model);
        statistics the config refuses leave it as it was."""
        checked = dataclasses.replace(self.config, latent_mean=[float(v) for v in torch.as_tensor(mean).flatten()],
                                      latent_std=[float(v) for v in torch.as_tensor(std).flatten()])
        checked.validate()
        self.config.latent_mean, self.config.latent_std = checked.latent_mean, checked.latent_std

    # ---- geometry -------------------------------------------------------------------------------------------
    @property
    def tiling(self) -> dict[str, Any]:
        """How frames are cut into tiles (see `vitok.geometry.plan_axis`): the largest tile, the overlap as a
        fraction of it, and whether tiles shrink to fit the frame (grid models; 1D models keep the tile size their
        tokens were trained on when a frame needs several tiles, and code a frame within one tile as one unit of its
        own padded size)."""
        return {"tile": self.config.tile_size, "overlap": self.config.tile_overlap, "fit": self.max_tokens is None}

    def check_tile_overlap(self, tile_overlap: Any) -> float:
        """``tile_overlap`` (a fraction of the tile size, as the config's) as a float, or VitokError naming why
        not; None gives the config's."""
        if tile_overlap is None:
            return self.config.tile_overlap
        if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, (int, float)) \
                or not 0.0 <= tile_overlap <= MAX_TILE_OVERLAP:   # NaN fails the range too
            raise VitokError(f"{self.config.name}: tile_overlap must be a number in [0, {MAX_TILE_OVERLAP}] (a "
                             f"fraction of the {self.config.tile_size}-pixel tile), got {tile_overlap!r}")
        return float(tile_overlap)

    def plan(self, frames: int, height: int, width: int, tiled: bool = True,
             tile_overlap: float | None = None) -> Geometry:
        """Chunks and tiles for a video of this geometry; `tiled=False` keeps whole frames (grid models only);
        `tile_overlap` replaces the config's overlap between tiles (a fraction of the tile size)."""
        c, t = self.config, self.tiling
        if not tiled and self.max_tokens is not None:
            raise VitokError(f"{c.name}: 1D models code frames in tiles of at most {c.tile_size} pixels "
                             "(tiled=False is for grid models)")
        return plan(frames, height, width, clip_frames=c.clip_frames, unit_frames=self.unit_frames,
                    stride=self.spatial_stride, tile_size=t["tile"] if tiled else None,
                    tile_overlap=self.check_tile_overlap(tile_overlap), fit_tiles=t["fit"])

    def latent_shape(self, frames: int, height: int, width: int, tiled: bool = True,
                     tile_overlap: float | None = None) -> tuple[int, int]:
        """(N, C): tokens (all chunks and tiles) and channels for a video of this geometry."""
        g = self.plan(frames, height, width, tiled, tile_overlap)
        return g.units * self.tokens_per_unit(*g.unit_size), self.latent_channels

    def make_latents(self, z: torch.Tensor, frames: int, height: int, width: int, num_tokens: int | None = None,
                     *, mask: torch.Tensor | None = None, logvar: torch.Tensor | None = None,
                     tiled: bool = True, tile_overlap: float | None = None) -> Latents:
        """Wrap raw tokens (B, N, C) for this geometry as Latents (the codec / shard decode path).

        1D models: z may hold all K tokens per unit or only the first `num_tokens` (then zero-filled to K);
        tokens beyond `num_tokens` are zeroed and masked. An explicit (B, N) `mask` is combined with that.
        `tiled=False`: the tokens cover whole frames (as `encode(..., tiled=False)` gives); `tile_overlap`: tiles
        overlapping by this fraction instead of the config's (as `encode(..., tile_overlap=)` gives).
        """
        num_tokens = _count(num_tokens)
        overlap = self.check_tile_overlap(tile_overlap)
        g = self.plan(frames, height, width, tiled, overlap)
        n_unit = self.tokens_per_unit(*g.unit_size)
        if not isinstance(z, torch.Tensor) or z.ndim != 3:
            raise VitokError(f"{self.config.name}: latents must be a tensor (B, N, C), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        if logvar is not None and (not isinstance(logvar, torch.Tensor) or logvar.shape != z.shape):
            raise VitokError(f"{self.config.name}: logvar must be a tensor shaped like z {tuple(z.shape)}, got "
                             f"{tuple(logvar.shape) if isinstance(logvar, torch.Tensor) else type(logvar).__name__}")
        B, N, C = z.shape
        unit_mask = self.token_mask(B, num_tokens, z.device)
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (B, N)):
            raise VitokError(f"{self.config.name}: mask must be a bool tensor (B, N) = {(B, N)} like z's, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        if num_tokens is not None and N == g.units * num_tokens and num_tokens < n_unit:
            z = nn.functional.pad(z.reshape(B, g.units, num_tokens, C), (0, 0, 0, n_unit - num_tokens))
            z = z.reshape(B, g.units * n_unit, C)
            if logvar is not None:   # the prefix's logvar, padded like z (the padding is masked)
                logvar = nn.functional.pad(logvar.reshape(B, g.units, num_tokens, C), (0, 0, 0, n_unit - num_tokens))
                logvar = logvar.reshape(B, g.units * n_unit, C)
            if mask is not None:   # the prefix's mask, padded like z
                mask = nn.functional.pad(mask.reshape(B, g.units, num_tokens), (0, n_unit - num_tokens))
                mask = mask.reshape(B, g.units * n_unit)
            N = z.shape[1]
        if (N, C) != (g.units * n_unit, self.latent_channels):
            raise VitokError(f"{self.config.name}: latents of shape {tuple(z.shape[1:])} do not fit a "
                             f"{frames}x{height}x{width} video (expected {(g.units * n_unit, self.latent_channels)})")
        if unit_mask is not None:
            unit_mask = unit_mask.repeat(1, g.units)
            mask = unit_mask if mask is None else mask & unit_mask
        if mask is not None:
            z = z * mask[..., None].to(z.dtype)
        c = self.config
        return Latents(z=z, frames=frames, height=height, width=width, layout=g.layout,
                       grid=self.unit_grid(*g.unit_size), mask=mask, logvar=logvar, model=c.name,
                       latent_mean=c.latent_mean, latent_std=c.latent_std, tiled=tiled,
                       tile_overlap=None if overlap == c.tile_overlap else overlap)

    # ---- encode / decode ------------------------------------------------------------------------------------
    def _context(self, inputs: torch.Tensor):
        """Frozen models run under inference_mode, unless the input carries a gradient (a loss through the frozen
        decoder, say): then autograd stays on and only the input's path is recorded. Trainable ones keep autograd."""
        follow = torch.is_grad_enabled() and inputs.requires_grad
        return torch.inference_mode() if self.frozen and not follow else contextlib.nullcontext()

    @staticmethod
    def _check_video(video: torch.Tensor) -> None:
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise VitokError(f"video must be a float tensor (B,3,T,H,W) in [-1,1], got {shape}")
        if not video.is_floating_point():
            raise VitokError(f"video must be a float tensor in [-1,1], got {video.dtype} (see vitok.data.convert)")
        if video.numel() == 0:
            raise VitokError(f"video is empty: shape {tuple(video.shape)}")

    def encode(self, video: torch.Tensor, num_tokens: int | None = None, *, tiled: bool = True,
               tile_overlap: float | None = None) -> Latents:
        """Video (B,3,T,H,W) in [-1,1], any size -> Latents (1D models: keep the first `num_tokens` per unit).
        The video may stay on the CPU: chunks move to the model's device one at a time. `tiled=False` (grid models)
        codes whole frames in one pass instead of the config's tiles; `tile_overlap` overlaps tiles by this fraction
        of the tile size instead of the config's (less overlap: fewer tokens); the Latents remember both for
        `decode`."""
        self._check_video(video)
        video_ = video.detach()   # amin/amax read any layout in place; aminmax and abs() copy a permuted one
        low, high = float(video_.amin()), float(video_.amax())
        peak = max(-low, high)   # a NaN or inf value shows in the peak
        if not math.isfinite(peak):  # here, not in the training forward: the trainer guards its steps
            raise VitokError("video holds NaN or infinite values")
        if peak > VALUE_WARN:
            warnings.warn(f"video values reach {peak:g}: vitok models take [-1, 1] (vitok.data.frames_to_tensor "
                          f"converts uint8 frames)", stacklevel=2)
        # 3 px wide and taller: most likely channels last, unless its channels are innermost in memory, as
        # frames_to_tensor leaves them (then it is a 3-px-wide video, as the codecs and extract pass it)
        if video.shape[-1] == 3 < video.shape[-2] and video.stride(1) != 1:
            warnings.warn(f"video of shape {tuple(video.shape)} is read as (B,3,T,H,W) 3 pixels wide; if it is "
                          f"(B,T,H,W,3), convert it with vitok.data.frames_to_tensor", stacklevel=2)
        num_tokens = _count(num_tokens)
        g = self.plan(*video.shape[2:], tiled=tiled, tile_overlap=tile_overlap)
        self.token_mask(video.shape[0], num_tokens, self.device)  # validates num_tokens before any work
        means, logvars = [], []
        with self._context(video):
            for c in range(g.chunks):
                start, stop = g.chunk_range(c)
                chunk = video[:, :, start:stop]
                for _, _, y0, x0 in g.tiles():   # each tile padded on its own (see pad_region)
                    tile = pad_region(chunk, g.unit_frames, g.rows.padded, g.cols.padded, y0, x0, g.rows.tile,
                                      g.cols.tile)
                    mean, logvar = self.encode_unit(tile.to(self.device, self.dtype))
                    means.append(mean)
                    logvars.append(logvar)
            z = torch.cat(means, dim=1)
            logvar = None if logvars[0] is None else torch.cat(logvars, dim=1)
        if torch.is_inference(z):  # plain tensors, usable in the caller's autograd graph
            z = z.clone()
            logvar = None if logvar is None else logvar.clone()
        return self.make_latents(z, g.frames, g.height, g.width, num_tokens, logvar=logvar, tiled=tiled,
                                 tile_overlap=tile_overlap)

    def decode(self, latents: Latents) -> torch.Tensor:
        """Latents -> video (B,3,T,H,W) cropped to the original geometry (tiles blended, chunks concatenated)."""
        self._check_latents(latents)
        g = self.plan(latents.frames, latents.height, latents.width, latents.tiled, latents.tile_overlap)
        out: torch.Tensor | None = None   # one chunk: returned as it is; several fill one output tensor
        acc = None
        for c, (i, j, y0, x0), tile in self.decode_tiles(latents):
            start, stop = g.chunk_range(c)
            if g.rows.count * g.cols.count == 1:
                acc = tile
            else:
                if i == j == 0:   # the chunk's real frames only: a short last chunk's padding is never kept
                    acc = tile.new_zeros(*tile.shape[:2], stop - start, g.rows.padded, g.cols.padded)
                acc[..., y0:y0 + g.rows.tile, x0:x0 + g.cols.tile] += \
                    tile[:, :, :stop - start] * blend_weights(g, i, j, tile.device)
            if (i, j) == (g.rows.count - 1, g.cols.count - 1):
                part = acc[:, :, :stop - start, :g.height, :g.width]
                if g.chunks == 1:
                    out = part
                else:
                    if c == 0:
                        out = part.new_empty(*part.shape[:2], g.frames, g.height, g.width)
                    out[:, :, start:stop] = part
                acc = None
        return out.clone() if torch.is_inference(out) else out

    def decode_tiles(self, latents: Latents) -> Iterator[tuple[int, tuple[int, int, int, int], torch.Tensor]]:
        """Decode unit by unit: ``(chunk, (row, col, y0, x0), tile)`` with ``tile`` (B,3,unit_frames,tile_h,tile_w),
        padding included, before blending (``decode`` blends them; rate control weighs each tile's error)."""
        self._check_latents(latents)
        if not bool(torch.isfinite(latents.z).all()):   # else a NaN video, found only when it is written or scored
            raise VitokError("latents hold NaN or infinite values")
        lat = latents.denormalized()
        g = self.plan(lat.frames, lat.height, lat.width, lat.tiled, lat.tile_overlap)
        n_unit = self.tokens_per_unit(*g.unit_size)
        grid = self.unit_grid(*g.unit_size)
        if lat.layout is not None and (tuple(lat.layout) != g.layout or (lat.grid and tuple(lat.grid) != grid)):
            raise VitokError(f"{self.config.name}: latents laid out as {tuple(lat.layout)} units of grid {lat.grid}, "
                             f"decode plans {g.layout} of {grid} for a {lat.frames}x{lat.height}x{lat.width} video "
                             f"(forward's latents code the clip as one unit: use encode's)")
        if tuple(lat.z.shape[1:]) != (g.units * n_unit, self.latent_channels):
            raise VitokError(f"{self.config.name}: latents of shape {tuple(lat.z.shape[1:])} do not fit a "
                             f"{lat.frames}x{lat.height}x{lat.width} video")
        z = lat.z.to(self.device, self.dtype)
        mask = None if lat.mask is None else lat.mask.to(self.device)
        tiles = g.tiles()
        for u in range(g.units):
            sl = slice(u * n_unit, (u + 1) * n_unit)
            with self._context(z):
                tile = self.decode_unit(z[:, sl], None if mask is None else mask[:, sl], g.unit_size)
            yield u // len(tiles), tiles[u % len(tiles)], tile

    def _check_latents(self, latents: Latents) -> None:
        """Latents this model can decode: a Latents (not its tensor), made by a model of this name, one geometry."""
        if not isinstance(latents, Latents):
            raise VitokError(f"decode takes the vitok.Latents that encode returned (or make_latents builds), got "
                             f"{type(latents).__name__}")
        if latents.model and latents.model != self.config.name:
            raise VitokError(f"latents were made by model {latents.model!r}, this is {self.config.name!r}: decode "
                             f"them with the model that encoded them")
        if latents.sizes is not None:
            raise VitokError("cannot decode a batch of mixed geometries in one call; decode items separately")
        z = latents.z
        if latents.mask is not None and tuple(latents.mask.shape) != tuple(z.shape[:2]):
            raise VitokError(f"latents' mask has shape {tuple(latents.mask.shape)}, their z {tuple(z.shape)}: a "
                             f"mask must be (B, N) of z's batch and tokens (replaced z without its mask?)")
        if latents.logvar is not None and latents.logvar.shape != z.shape:
            raise VitokError(f"latents' logvar has shape {tuple(latents.logvar.shape)}, their z {tuple(z.shape)}: "
                             f"they must match (replaced z without its logvar? call mode() first)")

    def encode_whole(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int, int]]:
        """The training pass's encode: ``x`` (B,3,T,H,W) padded to one unit, no tiles, no checks. Returns the
        posterior mean (all tokens), its log-variance (None without a KL bottleneck) and the padded unit size."""
        T, H, W = x.shape[2:]
        s = self.spatial_stride
        size = (self.unit_frames(T), math.ceil(H / s) * s, math.ceil(W / s) * s)
        mean, logvar = self.encode_unit(pad_chunk(x, *size))
        return mean, logvar, size

    def forward(self, video: torch.Tensor, num_tokens: int | None = None) -> dict:
        """Training pass on one clip (one unit, no tiling): dict(recon, latents, kl).

        The decoder sees a posterior sample in train mode (the mean in eval mode); 1D models in train mode
        draw a random prefix length per item (nested dropout) unless `num_tokens` is given.
        kl is the mean over present tokens and channels of KL(q(z|x) || N(0, I)) (0 without a KL bottleneck).
        """
        self._check_video(video)
        num_tokens = _count(num_tokens)
        x = video.to(self.device, self.dtype)
        B, _, T, H, W = x.shape
        mean, logvar, size = self.encode_whole(x)
        mask = self.token_mask(B, num_tokens, x.device, sample=self.training)
        z = mean
        if logvar is not None and self.training:
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        if mask is not None:
            z = z * mask[..., None].to(z.dtype)
        recon = self.decode_unit(z, mask, size)[:, :, :T, :H, :W]
        lat = Latents(z=mean if mask is None else mean * mask[..., None].to(mean.dtype), frames=T, height=H,
                      width=W, layout=(1, 1, 1), grid=self.unit_grid(*size), mask=mask, logvar=logvar,
                      model=self.config.name, latent_mean=self.config.latent_mean, latent_std=self.config.latent_std,
                      tiled=self.max_tokens is not None)   # one unit: a grid model's whole frames, as decode plans
        kl = x.new_zeros(())
        if logvar is not None:
            per = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
            kl = per.mean() if mask is None else (per * mask[..., None]).sum() / (mask.sum() * per.shape[-1])
        return {"recon": recon, "latents": lat, "kl": kl}

    # ---- weights --------------------------------------------------------------------------------------------
    @property
    def weights_hash(self) -> str:
        """sha256 hex over the state dict (see `state_hash`). A frozen model (no parameter requires grad) caches it
        until a tensor changes (an in-place op bumps its version counter; `.to()`, a load or `freeze()` resets it;
        edits through ``.data`` bypass the counter: call `freeze()` after them); a trainable one is hashed each time,
        since fused optimizers update weights in place without bumping versions."""
        state = self.state_dict()
        if any(p.requires_grad for p in self.parameters()):
            self._hash_cache = None   # nor trusted once frozen again: fused steps leave the versions as they were
            return state_hash(state)
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in state.values())
        if self._hash_cache is None or self._hash_cache[0] != key:
            self._hash_cache = (key, state_hash(state))
        return self._hash_cache[1]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._hash_cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn, *args, **kwargs):  # .to() / .half() change the bytes behind the hash
        self._hash_cache = None
        return super()._apply(fn, *args, **kwargs)

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write model.safetensors and config.json into `directory`, atomically (other files are kept).

        `dtype` shrinks the file: a float dtype (e.g. torch.float16) stores floating weights at that precision,
        torch.int8 stores weight matrices as int8 with a scale per row (``vitok.storage``). The model itself is left
        as it is; the file records the hash of the weights `load()` rebuilds from it."""
        from vitok.data.atomic import save_safetensors

        from vitok.storage import restored, stored

        self.config.validate()   # a config `load` would refuse is not written
        directory = Path(directory)
        tensors, meta, _ = stored(self.state_dict(), dtype)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        directory.mkdir(parents=True, exist_ok=True)
        # both files are written before either is renamed into place, back to back, so an interruption cannot
        # leave new weights beside an old config (latent statistics, tiling)
        with atomic_path(directory / "config.json") as config_tmp:
            config_tmp.write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            with atomic_path(directory / "model.safetensors") as tmp:
                # the hash of what load() rebuilds from the file: a float32 model, whatever this one's dtype
                as_loaded = {k: v.float() if v.is_floating_point() else v
                             for k, v in restored(tensors, meta, str(directory)).items()}
                save_safetensors(tensors, tmp, metadata={"format": "pt", "kind": self.config.kind,
                                                         "weights_hash": state_hash(as_loaded), **meta})
        return directory
