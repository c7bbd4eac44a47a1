"""Latent shards on disk: a manifest JSON plus safetensors files, read as a torch Dataset of plain tensors.

Written by ``vitok.extract`` (``vitok latents extract``), format version 2 (``FORMAT_VERSION``). Each shard file
holds its ``n`` clips ragged, their tokens one after another (none padded): ``z`` float32 ``(T, C)``, ``mask`` bool
``(T,)`` (True = token present), ``offset`` int64 ``(n + 1,)`` (the clip at row ``r`` is tokens
``offset[r]:offset[r + 1]``; ``offset[0] == 0``, ``offset[n] == T``), ``length`` int64 ``(n,)`` (tokens of each
clip, ``offset[r + 1] - offset[r]``) and ``clip`` int64 ``(n,)`` (clip ids); ``T`` is the sum of the lengths. Its
metadata holds the tokenizer's ``weights_hash`` and ``config_hash`` and the extraction ``params`` (JSON), as in the
manifest. The manifest lists shards (with each file's sha256, which ``verify_shards`` checks; none in sets from
before it), clips (id, shard, row, source video, geometry, frame rate), skipped files and per-channel statistics. This module knows no models: it yields dicts of tensors; ``vitok.extract.latents_from_batch``
makes ``Latents``.

Sets of version 1 still read, as before: their shards pad every clip to the shard's longest, ``z`` ``(n, N, C)`` and
``mask`` ``(n, N)``, with no ``offset`` (``length`` gives each row's tokens before padding). The manifest's
``version`` decides the layout of all its shards (< 2: padded, 2: ragged); a shard that does not have it (holds
``offset`` in a version-1 set, or none in a version-2 set) is a ShardError naming the shard.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from vitok.data.errors import VitokError

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "vitok-latent-shards"
FORMAT_VERSION = 2  # 2: ragged shards (``offset``); 1 (rows padded to the shard's longest clip) still reads
RAGGED_VERSION = 2  # the first version whose shards are ragged
MAX_OPEN_SHARDS = 256  # memory-mapped shards a Dataset keeps open; a process may hold only ~65k maps in all

# What the readers use, with its type: the manifest's keys, its model's, its stats' and each clip's.
_MANIFEST_KEYS = {"version": int, "model": dict, "latent_channels": int, "params": dict, "num_clips": int,
                  "clips": list, "skipped": list, "stats": dict}
_MODEL_KEYS = {"name": str, "weights_hash": str}
_STATS_KEYS = {"count": int, "mean": list, "std": list}
_CLIP_KEYS = {"id": int, "shard": str, "row": int, "tokens": int, "frames": int, "height": int, "width": int,
              "source": str}


class ShardError(VitokError):
    """A shard directory is missing, incomplete or not a vitok latent-shard set."""


def _check_keys(value: Any, keys: dict[str, type], what: str, path: Path) -> None:
    """Raise ShardError naming ``path`` unless ``value`` is a dict holding ``keys`` with their types."""
    if not isinstance(value, dict):
        raise ShardError(f"{path}: malformed manifest ({what} is not an object)")
    for key, kind in keys.items():
        if not isinstance(value.get(key), kind):
            raise ShardError(f"{path}: malformed manifest ({what} has no {kind.__name__} {key!r})")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_shards(root: str | os.PathLike) -> dict[str, Any]:
    """Check every shard file of a set against the sha256 its extraction recorded in the manifest (reading shards
    checks only their structure and NaNs, not their bytes). Returns counts and the damaged shards (missing, or bytes
    that differ), each ``{"file", "reason"}``; shards extracted by a vitok that recorded no checksum are counted as
    ``unchecked``."""
    manifest = read_manifest(root)
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        raise ShardError(f"{Path(root) / MANIFEST_NAME}: malformed manifest (no list of shards)")
    checked, unchecked, damaged = 0, 0, []
    for shard in shards:
        name, want = shard.get("file"), shard.get("sha256")
        if name is None:   # every video of that shard was skipped: no file
            continue
        if not isinstance(name, str) or Path(name).name != name:
            raise ShardError(f"{Path(root) / MANIFEST_NAME}: malformed manifest (shard file {name!r})")
        path = Path(root) / name
        if not path.is_file():
            damaged.append({"file": name, "reason": "missing"})
        elif not isinstance(want, str):
            unchecked += 1
        elif file_sha256(path) != want:
            damaged.append({"file": name, "reason": "bytes differ from the checksum recorded at extraction"})
        else:
            checked += 1
    return {"shards_dir": str(root), "checked": checked, "unchecked": unchecked, "damaged": damaged}


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Load and check ``root/manifest.json``; raise ShardError naming the file when it is missing, foreign or
    lacks what the readers use."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{path}: no manifest (run `vitok latents extract` to completion first)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ShardError(f"{path}: not a vitok latent-shard manifest")
    _check_keys(manifest, _MANIFEST_KEYS, "the manifest", path)
    if manifest["version"] > FORMAT_VERSION:
        raise ShardError(f"{path}: manifest version {manifest['version']} is newer than this vitok reads")
    _check_keys(manifest["model"], _MODEL_KEYS, "model", path)
    _check_keys(manifest["stats"], _STATS_KEYS, "stats", path)
    stats = manifest["stats"]
    if not len(stats["mean"]) == len(stats["std"]) == manifest["latent_channels"]:
        raise ShardError(f"{path}: malformed manifest (stats do not have latent_channels values)")
    for i, clip in enumerate(manifest["clips"]):
        _check_keys(clip, _CLIP_KEYS, f"clip {i}", path)
    return manifest


class _Absent:
    """The value of a key a clip does not have; one object, in DataLoader workers a ClipTable is pickled to too."""

    def __reduce__(self) -> str:
        return "_ABSENT"


_ABSENT = _Absent()


class ClipTable:
    """The manifest's clips as columns (numpy arrays; sources in one byte buffer): ``table[i]`` is clip ``i``'s dict,
    equal to the manifest's.

    A list of a million clip dicts takes about 0.8 GB per process, and DataLoader workers forked from it copy the
    pages they touch (reading a Python object writes its reference count); columns take about a sixth and are only
    read. Integer keys become int64 columns; ``source`` a byte buffer; any other key (shard name, frame rate) a
    column of codes into its few distinct values."""

    _INT_NULL, _INT_ABSENT = -(2 ** 63), -(2 ** 63) + 1   # an integer column's null and missing key

    def __init__(self, clips: list[dict[str, Any]]) -> None:
        self._len = len(clips)
        self._ints: dict[str, np.ndarray] = {}
        self._coded: dict[str, tuple[list[Any], np.ndarray]] = {}
        for key in dict.fromkeys(itertools.chain.from_iterable(clips)):
            if key == "source":
                continue
            values = [c.get(key, _ABSENT) for c in clips]
            column = self._int_column(values)
            if column is None:
                self._coded[key] = self._codes(values)
            else:
                self._ints[key] = column
        encoded = [c["source"].encode("utf-8", "surrogatepass") for c in clips]
        self._source_end = np.cumsum([len(b) for b in encoded], dtype=np.int64)
        self._source = np.frombuffer(b"".join(encoded), np.uint8)

    @classmethod
    def _int_column(cls, values: list[Any]) -> np.ndarray | None:
        """``values`` as int64 (nulls and absences as their markers), or None unless each is one or an integer
        between the markers and 2**63."""
        plain = all(type(v) is int for v in values)
        if not plain and not (all(v is None or v is _ABSENT or type(v) is int for v in values)
                              and any(type(v) is int for v in values)):   # all null: no integer column
            return None
        if not all(cls._INT_ABSENT < v < 2 ** 63 for v in values if type(v) is int):
            return None
        if not plain:
            values = [cls._INT_ABSENT if v is _ABSENT else cls._INT_NULL if v is None else v for v in values]
        return np.array(values, dtype=np.int64)

    @staticmethod
    def _codes(values: list[Any]) -> tuple[list[Any], np.ndarray]:
        """The distinct values and each clip's index into them. The values are copies: the parsed ones lie among
        the clip dicts, and each one kept would hold a block of them in memory."""
        distinct: dict[Any, tuple[int, Any]] = {}

        def key(v: Any) -> Any:   # 1, 1.0 and True are equal keys of a dict: told apart by type
            if v is _ABSENT:
                return "absent"
            return (type(v).__name__, v) if isinstance(v, (str, int, float, bool, type(None))) else json.dumps(v)

        if all(type(v) is str for v in values):   # shard names, frame rates: no two types to tell apart
            index: dict[str, int] = {}
            codes = np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)
            return [v.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass") for v in index], codes
        codes = np.array([distinct.setdefault(key(v), (len(distinct), v))[0] for v in values], dtype=np.int64)
        return [v if v is _ABSENT else json.loads(json.dumps(v)) for _, v in distinct.values()], codes

    def __len__(self) -> int:
        return self._len

    def column(self, key: str) -> np.ndarray:
        """One key over all clips: int64 for an integer key (``-2**63`` where null, ``-2**63 + 1`` where absent),
        else an object array (None where null or absent)."""
        if key in self._ints:
            return self._ints[key]
        if key == "source":
            data, ends = self._source.tobytes(), self._source_end.tolist()
            sources = np.empty(len(self), dtype=object)
            sources[:] = [data[a:b].decode("utf-8", "surrogatepass") for a, b in zip([0, *ends], ends)]
            return sources
        if key not in self._coded:
            return np.full(len(self), None, dtype=object)
        values, codes = self._coded[key]
        table = np.empty(len(values), dtype=object)   # filled one by one: a list value stays one object
        table[:] = [None if v is _ABSENT else v for v in values]
        return table[codes]

    def values(self, key: str) -> list[Any]:
        """One key over all clips as Python values, None where null or absent."""
        column = self.column(key)
        if column.dtype != np.int64:
            return column.tolist()
        return [None if v <= self._INT_ABSENT else v for v in column.tolist()]

    @property
    def shard_names(self) -> list[str]:
        return list(self._coded["shard"][0]) if "shard" in self._coded else []

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"clip {index} out of range ({len(self)} clips)")
        index %= len(self)
        clip: dict[str, Any] = {}
        for key, column in self._ints.items():
            v = int(column[index])
            if v != self._INT_ABSENT:
                clip[key] = None if v == self._INT_NULL else v
        for key, (values, codes) in self._coded.items():
            v = values[codes[index]]
            if v is not _ABSENT:
                clip[key] = copy.deepcopy(v)   # the caller's to change
        start = int(self._source_end[index - 1]) if index else 0
        clip["source"] = self._source[start:int(self._source_end[index])].tobytes().decode("utf-8", "surrogatepass")
        return clip

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))


class LatentShards(Dataset):
    """Map-style Dataset over extracted latents; item ``i`` is the ``i``-th clip of the manifest (sorted by id).

    Items are dicts: ``z`` float32 ``(N_i, C)``, ``mask`` bool ``(N_i,)``, ``clip_id``/``index``/``frames``/
    ``height``/``width``/``num_tokens`` (int64 scalars; ``num_tokens`` is -1 when no token count was asked for),
    ``normalized`` (bool scalar: read with ``normalize=True``) and ``source`` (str); the tensors are the item's own
    (copies). Shards are opened lazily with ``safetensors.safe_open`` (memory-mapped; at most ``MAX_OPEN_SHARDS`` at
    a time, least recently used closed first) and only the item's own tokens are read (its slice of a ragged shard,
    the start of its row in a padded version-1 one), so the set may exceed RAM. A shard is checked against the
    manifest when opened (tokenizer, options, layout) and each row when read (clip id and length). ``normalize=True``
    applies the manifest's per-channel mean/std to ``z`` (``std`` floored at 1e-6; absent tokens stay zero).
    Works with ``DistributedSampler`` and DataLoader workers (open handles are not pickled). ``clips`` is the
    manifest's clip list as a `ClipTable` (``clips[i]`` is clip ``i``'s dict); ``manifest`` holds the rest.
    """

    def __init__(self, root: str | os.PathLike, normalize: bool = False) -> None:
        self.root = Path(root)
        manifest = read_manifest(self.root)
        self.clips = ClipTable(manifest.pop("clips"))
        self.manifest = manifest
        self.normalize = normalize
        stats = self.manifest["stats"]
        self.mean = torch.tensor(stats["mean"], dtype=torch.float32)
        self.std = torch.tensor(stats["std"], dtype=torch.float32).clamp_min(1e-6)
        for name in sorted(self.clips.shard_names):  # one look per file, not per clip
            if not (self.root / name).is_file():
                raise ShardError(f"{self.root / name}: shard listed in the manifest is missing")
        self._ragged = self.manifest["version"] >= RAGGED_VERSION   # the layout of every shard of the set
        self._handles: OrderedDict[str, tuple[Any, list[int], list[int], list[int] | None]] = OrderedDict()

    @property
    def latent_channels(self) -> int:
        return int(self.manifest["latent_channels"])

    @property
    def max_tokens(self) -> int:
        """The longest clip in tokens: what a fixed-size generator must cover."""
        return int(self.clips.column("tokens").max(initial=0))

    def __len__(self) -> int:
        return len(self.clips)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def _open(self, name: str) -> tuple[Any, list[int], list[int], list[int] | None]:
        """Shard ``name`` as (handle, clip ids, lengths, offsets (None in a padded version-1 shard)), checked against
        the manifest when first opened."""
        from safetensors import SafetensorError, safe_open

        if name in self._handles:
            self._handles.move_to_end(name)
            return self._handles[name]
        path = self.root / name
        try:
            handle = safe_open(str(path), framework="pt")
        except (OSError, RuntimeError) as e:  # out of file handles or memory maps: not the shard's fault
            raise ShardError(f"{path}: cannot open shard ({e})") from None
        except SafetensorError as e:
            raise ShardError(f"{path}: damaged shard ({e})") from None
        try:
            meta, weights = handle.metadata() or {}, self.manifest["model"]["weights_hash"]
            # shards made before these keys were written have none: their rows are still checked on each read
            if meta.get("weights_hash", weights) != weights:
                raise ShardError(f"{path}: shard made with other tokenizer weights than the manifest's "
                                 f"({meta['weights_hash'][:12]} != {weights[:12]})")
            config = self.manifest["model"].get("config_hash")
            if config is not None and meta.get("config_hash", config) != config:
                raise ShardError(f"{path}: shard made with another model config than the manifest's "
                                 f"({meta['config_hash']} != {config})")
            if "params" in meta and json.loads(meta["params"]) != self.manifest["params"]:
                raise ShardError(f"{path}: shard made with other extraction options than the manifest's "
                                 f"({meta['params']})")
            z_shape = handle.get_slice("z").get_shape()
            if z_shape[-1] != self.latent_channels:
                raise ShardError(f"{path}: shard latents do not have the manifest's {self.latent_channels} channels")
            ids, lengths = handle.get_tensor("clip").tolist(), handle.get_tensor("length").tolist()
            offsets = self._check_layout(path, handle, z_shape, ids, lengths)
            entry = (handle, ids, lengths, offsets)
        except (SafetensorError, ValueError, IndexError) as e:
            raise ShardError(f"{path}: damaged shard ({e})") from None
        self._handles[name] = entry
        if len(self._handles) > MAX_OPEN_SHARDS:
            self._handles.popitem(last=False)
        return entry

    def _check_layout(self, path: Path, handle: Any, z_shape: list[int], ids: list[int],
                      lengths: list[int]) -> list[int] | None:
        """The shard's offsets (None for a padded version-1 shard) once its layout is the manifest version's and its
        tensors agree; else a ShardError naming ``path``."""
        version, ragged = self.manifest["version"], "offset" in handle.keys()
        if ragged != self._ragged:
            layout = "ragged layout of version 2 or later" if ragged else "padded layout of version 1"
            raise ShardError(f"{path}: shard has the {layout}, not that of the manifest's version {version} "
                             "(a shard of another extraction?)")
        mask_shape = handle.get_slice("mask").get_shape()
        if len(ids) != len(lengths):
            raise ShardError(f"{path}: damaged shard ({len(ids)} clip ids but {len(lengths)} lengths)")
        if not ragged:
            if len(z_shape) != 3 or z_shape[0] != len(ids) or mask_shape != z_shape[:2]:
                raise ShardError(f"{path}: damaged shard (z {z_shape} and mask {mask_shape} are not padded rows)")
            return None
        offsets = handle.get_tensor("offset").tolist()
        if not (len(z_shape) == 2 and mask_shape == z_shape[:1] and len(offsets) == len(lengths) + 1
                and offsets[0] == 0 and offsets[-1] == z_shape[0]
                and all(b - a == n for a, b, n in zip(offsets, offsets[1:], lengths))):
            raise ShardError(f"{path}: damaged shard (z {z_shape}, mask {mask_shape}, offsets and lengths do not "
                             "agree)")
        return offsets

    def _read(self, clip: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``clip``'s tokens (``z``, ``mask``), copied out of its shard; a shard that is damaged or does not hold
        the clip the manifest says is a ShardError naming it."""
        from safetensors import SafetensorError

        handle, ids, lengths, offsets = self._open(clip["shard"])
        row, n = clip["row"], clip["tokens"]
        if not (0 <= row < len(ids) and ids[row] == clip["id"] and lengths[row] == n):
            raise ShardError(f"{self.root / clip['shard']}: row {row} does not hold clip {clip['id']} of {n} tokens "
                             "as the manifest says (a shard of another extraction?)")
        try:  # only the clip's n tokens (in a version-1 shard not its padded row), copied out of the memory map
            if offsets is None:
                z, mask = handle.get_slice("z")[row:row + 1, :n][0], handle.get_slice("mask")[row:row + 1, :n][0]
            else:
                a = offsets[row]
                z, mask = handle.get_slice("z")[a:a + n], handle.get_slice("mask")[a:a + n]
            z, mask = z.clone(), mask.clone()
        except (OSError, SafetensorError, IndexError) as e:
            raise ShardError(f"{self.root / clip['shard']}: damaged shard ({e})") from None
        if not bool(torch.isfinite(z).all()):   # shards carry no checksum: damage would reach training as NaN losses
            raise ShardError(f"{self.root / clip['shard']}: damaged shard (clip {clip['id']} holds NaN or infinite "
                             "latents)")
        return z, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        z, mask = self._read(clip)
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
            "normalized": torch.tensor(self.normalize),
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
