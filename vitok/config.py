"""Model configs: one JSON-serializable dataclass per tokenizer kind (architecture + latent statistics)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitok.data.errors import VitokError

MAX_TILE_OVERLAP = 0.4  # the largest fraction whose blend weights sum to 1 for every size (tests/core/test_tiling.py)


def _is(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's type hint (int, float, str, bool, list[...], X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, h) for h in typing.get_args(hint))
    if origin is list:
        return isinstance(value, list) and all(_is(v, typing.get_args(hint)[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


@dataclass
class TokenizerConfig:
    """Fields every tokenizer shares.

    clip_frames: frames per independently coded temporal chunk; tile_size: spatial tile (pixels) above which frames
    are split into overlapping tiles of at most this size (None: never; see vitok.geometry); tile_overlap: overlap
    as a fraction of tile_size;
    variational: KL posterior bottleneck (mean + log-variance); latent_mean/latent_std: per-channel statistics
    used by `Latents.normalized()` (None until measured after training).
    """

    name: str = "unnamed"
    kind: str = ""
    latent_channels: int = 16
    clip_frames: int = 16
    tile_size: int | None = 256
    tile_overlap: float = 0.25
    variational: bool = True
    latent_mean: list[float] | None = None
    latent_std: list[float] | None = None

    def validate(self) -> None:
        """Raise VitokError when the fields do not describe a buildable model."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            if not _is(value, hint):
                expected = hint.__name__ if isinstance(hint, type) else hint   # "int", or "list[float] | None"
                raise VitokError(f"config {self.name}: {f.name} must be {expected}, got {value!r}")
        if CONFIG_CLASSES.get(self.kind) is not type(self):   # kind picks the class that reads the fields
            raise VitokError(f"config {self.name}: kind {self.kind!r} does not name this {type(self).__name__}'s "
                             f"architecture ({type(self).kind!r}); kinds are not changed by an override")
        if self.latent_channels < 1 or self.clip_frames < 1:
            raise VitokError(f"config {self.name}: latent_channels and clip_frames must be >= 1")
        if not 0.0 <= self.tile_overlap <= MAX_TILE_OVERLAP:  # above it, tiles shrunk to fit overlap 3 deep somewhere
            raise VitokError(f"config {self.name}: tile_overlap must be in [0, {MAX_TILE_OVERLAP}], got "
                             f"{self.tile_overlap}")
        for key in ("latent_mean", "latent_std"):
            stats = getattr(self, key)
            if stats is not None and len(stats) != self.latent_channels:
                raise VitokError(f"config {self.name}: {key} has {len(stats)} values, expected {self.latent_channels}")
            if stats is not None and not all(math.isfinite(v) for v in stats):
                raise VitokError(f"config {self.name}: {key} must be finite numbers")
        if self.latent_std is not None and min(self.latent_std) <= 0:
            raise VitokError(f"config {self.name}: latent_std must be positive")

    def _check_tile(self, spatial: int) -> None:
        if self.tile_size is not None and (self.tile_size % spatial or self.tile_size < 2 * spatial):
            raise VitokError(f"config {self.name}: tile_size {self.tile_size} must be a multiple of {spatial} "
                             f"and at least {2 * spatial}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self, without: tuple[str, ...] = ()) -> str:
        """sha256 hex of the config as canonical JSON, fields ``without`` left out: what tells two configs apart
        when name and weights agree (an edited tile size or clip length codes differently)."""
        config = {k: v for k, v in self.to_dict().items() if k not in without}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


@dataclass
class ViTConfig(TokenizerConfig):
    """Grid ViT (ViTok): tubelets patch_t x patch x patch, separately sized encoder and decoder."""

    kind: str = "vit"
    patch_t: int = 4
    patch: int = 8
    enc_width: int = 768
    enc_depth: int = 6
    enc_heads: int = 12
    dec_width: int = 768
    dec_depth: int = 12
    dec_heads: int = 12
    mlp_ratio: float = 4.0
    rope_theta: float = 10000.0

    def validate(self) -> None:
        super().validate()
        sizes = ("patch_t", "patch", "enc_width", "enc_heads", "dec_width", "dec_heads")
        small = [f"{key}={getattr(self, key)}" for key in sizes if getattr(self, key) < 1]
        small += [f"{key}={getattr(self, key)}" for key in ("enc_depth", "dec_depth") if getattr(self, key) < 0]
        if small or self.mlp_ratio <= 0 or self.rope_theta <= 0:
            raise VitokError(f"config {self.name}: sizes must be >= 1 (depths >= 0) and mlp_ratio, rope_theta > 0, "
                             f"got {', '.join(small) or f'mlp_ratio={self.mlp_ratio}, rope_theta={self.rope_theta}'}")
        if self.clip_frames % self.patch_t:
            raise VitokError(f"config {self.name}: clip_frames {self.clip_frames} must be a multiple of "
                             f"patch_t {self.patch_t}")
        for part in ("enc", "dec"):
            width, heads = getattr(self, f"{part}_width"), getattr(self, f"{part}_heads")
            if width % heads or (width // heads) < 6 or (width // heads) % 2:
                raise VitokError(f"config {self.name}: {part}_width {width} / {part}_heads {heads} must give an "
                                 f"even head size >= 6")
        self._check_tile(self.patch)


@dataclass
class ViT1DConfig(ViTConfig):
    """1D ViT (TiTok/FlexTok line): `num_latents` learned tokens per unit; nested dropout keeps a random prefix
    of at least `min_tokens` in training, drawn uniformly or from powers of two (`token_sampling`), except for a
    `full_tokens_prob` share of the items that keep all tokens (so the full-length code is trained most)."""

    kind: str = "vit1d"
    num_latents: int = 128
    min_tokens: int = 1
    token_sampling: str = "uniform"
    full_tokens_prob: float = 0.25

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.min_tokens <= self.num_latents:
            raise VitokError(f"config {self.name}: need 1 <= min_tokens <= num_latents")
        if not 0.0 <= self.full_tokens_prob <= 1.0:
            raise VitokError(f"config {self.name}: full_tokens_prob must be in [0, 1]")
        if self.token_sampling not in ("uniform", "pow2"):
            raise VitokError(f"config {self.name}: token_sampling must be 'uniform' or 'pow2'")


@dataclass
class CNNConfig(TokenizerConfig):
    """Causal 3D CNN: 4x4 space-to-depth, then a time-down stage and a time+space-down stage (4x8x8 total).
    Channels per stage (full-res stage first) for encoder and decoder; `*_blocks` residual blocks per stage."""

    kind: str = "cnn"
    clip_frames: int = 17
    enc_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    dec_channels: list[int] = field(default_factory=lambda: [32, 96, 160])
    enc_blocks: int = 1
    dec_blocks: int = 1

    def validate(self) -> None:
        super().validate()
        if (self.clip_frames - 1) % 4:
            raise VitokError(f"config {self.name}: clip_frames must be 1 + 4k for the causal CNN, "
                             f"got {self.clip_frames}")
        if len(self.enc_channels) != 3 or len(self.dec_channels) != 3:
            raise VitokError(f"config {self.name}: enc_channels and dec_channels need 3 entries")
        if min(self.enc_channels + self.dec_channels) < 1 or min(self.enc_blocks, self.dec_blocks) < 0:
            raise VitokError(f"config {self.name}: channels must be >= 1 and enc_blocks, dec_blocks >= 0")
        self._check_tile(8)


CONFIG_CLASSES: dict[str, type[TokenizerConfig]] = {"vit": ViTConfig, "vit1d": ViT1DConfig, "cnn": CNNConfig}


def config_from_dict(data: dict[str, Any], source: str | None = None) -> TokenizerConfig:
    """Build the config class named by data['kind']; unknown kinds or fields are user errors, named with
    ``source`` (the file they came from) when given."""
    kind = data.get("kind")
    cls = CONFIG_CLASSES.get(kind)
    if cls is None:
        raise VitokError(f"{source or 'config'}: unknown model kind {kind!r} (expected one of {sorted(CONFIG_CLASSES)})")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise VitokError(f"{source or 'config'}: unknown field(s) {', '.join(unknown)} for kind {kind!r}")
    config = cls(**data)
    try:
        config.validate()
    except VitokError as e:   # "config NAME: ..." names the model; the file says which copy of it is wrong
        raise VitokError(f"{source}: {e}" if source else str(e)) from None
    return config


def read_config(path: str | Path) -> TokenizerConfig:
    """Read a config.json written by `save_pretrained`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise VitokError(f"{path}: missing config.json") from None
    except (OSError, ValueError) as e:
        raise VitokError(f"{path}: unreadable config ({e})") from None
    except RecursionError:
        raise VitokError(f"{path}: unreadable config (nested too deeply)") from None
    if not isinstance(data, dict):
        raise VitokError(f"{path}: config must be a JSON object")
    return config_from_dict(data, str(path))
