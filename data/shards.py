"""Latent shards on disk: a manifest JSON plus safetensors files, read as a torch Dataset of plain tensors.

Written by ``vitok.extract`` (``vitok latents extract``). Each shard file holds, for ``n`` clips padded to the
longest clip in the shard: ``z`` float32 ``(n, N, C)``, ``mask`` bool ``(n, N)`` (True = token present),
``length`` int64 ``(n,)`` (tokens of each clip before padding) and ``clip`` int64 ``(n,)`` (clip ids). The
manifest lists shards, clips (id, shard, row, source video, geometry), skipped files and per-channel statistics.
This module knows no models: it yields dicts of tensors; ``vitok.extract.latents_from_batch`` makes ``Latents``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vitok.data.errors import VitokError

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "vitok-latent-shards"
FORMAT_VERSION = 1


class ShardError(VitokError):
    """A shard directory is missing, incomplete or not a vitok latent-shard set."""


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Load and check ``root/manifest.json``; raise ShardError naming the file when it is missing or foreign."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{path}: no manifest (run `vitok latents extract` to completion first)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("format") != FORMAT_NAME:
        raise ShardError(f"{path}: not a vitok latent-shard manifest")
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise ShardError(f"{path}: manifest version {manifest['version']} is newer than this vitok reads")
    return manifest


class LatentShards(Dataset):
    """Map-style Dataset over extracted latents; item ``i`` is the ``i``-th clip of the manifest (sorted by id).

    Items are dicts: ``z`` float32 ``(N_i, C)``, ``mask`` bool ``(N_i,)``, ``clip_id``/``index``/``frames``/
    ``height``/``width``/``num_tokens`` (int64 scalars; ``num_tokens`` is -1 when no token count was asked for)
    and ``source`` (str). Shards are opened lazily with ``safetensors.safe_open`` (memory-mapped) and one row is read
    per item, so the set may exceed RAM. ``normalize=True`` applies the manifest's per-channel mean/std to ``z``
    (``std`` floored at 1e-6; absent tokens stay zero).
    Works with ``DistributedSampler`` and DataLoader workers (open handles are not pickled).
    """

    def __init__(self, root: str | os.PathLike, normalize: bool = False) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.clips: list[dict[str, Any]] = self.manifest["clips"]
        self.normalize = normalize
        stats = self.manifest.get("stats") or {}
        self.mean = torch.tensor(stats["mean"], dtype=torch.float32) if stats.get("mean") else None
        self.std = torch.tensor(stats["std"], dtype=torch.float32).clamp_min(1e-6) if stats.get("std") else None
        if normalize and self.mean is None:
            raise ShardError(f"{self.root}: manifest has no latent statistics to normalize with")
        for clip in self.clips:
            if not (self.root / clip["shard"]).is_file():
                raise ShardError(f"{self.root / clip['shard']}: shard listed in the manifest is missing")
        self._handles: dict[str, Any] = {}

    @property
    def latent_channels(self) -> int:
        return int(self.manifest["latent_channels"])

    @property
    def max_tokens(self) -> int:
        """The longest clip in tokens: what a fixed-size generator must cover."""
        return max((c["tokens"] for c in self.clips), default=0)

    def __len__(self) -> int:
        return len(self.clips)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def _read(self, name: str, row: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` tokens of row ``row`` of shard ``name`` (``z``, ``mask``); a damaged shard is a ShardError
        naming it."""
        from safetensors import SafetensorError, safe_open

        try:
            handle = self._handles.get(name)
            if handle is None:
                handle = self._handles[name] = safe_open(str(self.root / name), framework="pt")
            return handle.get_slice("z")[row][:n], handle.get_slice("mask")[row][:n]
        except (OSError, SafetensorError, IndexError) as e:
            raise ShardError(f"{self.root / name}: damaged shard ({e})") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        z, mask = self._read(clip["shard"], clip["row"], clip["tokens"])
        if self.normalize:
            z = (z - self.mean) / self.std * mask[:, None]
        return {
            "z": z,
            "mask": mask,
            "clip_id": torch.tensor(clip["id"], dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
            "frames": torch.tensor(clip["frames"], dtype=torch.int64),
            "height": torch.tensor(clip["height"], dtype=torch.int64),
            "width": torch.tensor(clip["width"], dtype=torch.int64),
            "num_tokens": torch.tensor(-1 if clip.get("num_tokens") is None else clip["num_tokens"], dtype=torch.int64),
            "source": clip["source"],
        }


def collate_latents(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch: ``z`` zero-padded to ``(B, N_max, C)``, ``mask`` ``(B, N_max)`` False on padding,
    ``length`` ``(B,)`` tokens before padding, scalar fields stacked to ``(B,)``, strings as lists."""
    if not items:
        raise ValueError("collate_latents needs at least one item")
    lengths = torch.tensor([it["z"].shape[0] for it in items], dtype=torch.int64)
    n_max, channels = int(lengths.max()), items[0]["z"].shape[1]
    z = items[0]["z"].new_zeros(len(items), n_max, channels)
    mask = torch.zeros(len(items), n_max, dtype=torch.bool)
    for i, it in enumerate(items):
        n = it["z"].shape[0]
        z[i, :n] = it["z"]
        mask[i, :n] = it["mask"]
    batch: dict[str, Any] = {"z": z, "mask": mask, "length": lengths}
    for key, value in items[0].items():
        if key in batch:
            continue
        if isinstance(value, torch.Tensor):
            batch[key] = torch.stack([it[key] for it in items])
        else:
            batch[key] = [it[key] for it in items]
    return batch
