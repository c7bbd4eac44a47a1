"""FORMAT.md's derivations, written out from the text alone, against the code: a third-party decoder that follows
the spec gets the code's chunk geometry and table ids."""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from safetensors import safe_open

import vitok
from vitok.codecs import VitokCodec
from vitok.registry import PRETRAINED_DIR

BUNDLED = ["vitok-grid", "vitok-cnn", "vitok-1d"]


def _axis(size: int, s: int, tile: int | None, overlap: float, fit: bool) -> tuple[int, int]:
    """FORMAT.md 'Chunk geometry' step 2: (tile pixels, tile count) along one axis."""
    padded = math.ceil(size / s) * s
    if tile is None or padded <= tile:
        return padded, 1
    ov = round(tile * overlap / s) * s
    count = math.ceil((padded - ov) / (tile - ov))
    if fit:
        tile = math.ceil((padded + (count - 1) * ov) / (count * s)) * s
    return tile, count


def _spec_units(cfg: dict, n: int, height: int, width: int, tokens: int) -> tuple[tuple[int, ...], list]:
    """FORMAT.md 'Chunk geometry': the padded unit (T', tile height, tile width, rows, cols) of a chunk of ``n``
    frames, and the latent grid of each unit in unit order."""
    kind = cfg["kind"]
    pt, s = (4, 8) if kind == "cnn" else (cfg["patch_t"], cfg["patch"])
    if kind == "vit":
        t = math.ceil(n / pt) * pt
    elif kind == "vit1d":
        t = math.ceil(max(n, cfg["clip_frames"]) / pt) * pt
    else:
        t = 1 + 4 * math.ceil((n - 1) / 4)
    fit = kind != "vit1d"
    (th, rows), (tw, cols) = (_axis(v, s, cfg["tile_size"], cfg["tile_overlap"], fit) for v in (height, width))
    if kind == "vit":
        grid = (t // pt, th // s, tw // s)
    elif kind == "cnn":
        grid = (1 + (t - 1) // 4, th // 8, tw // 8)
    else:
        grid = (tokens, 1, 1)
    return (t, th, tw, rows, cols), [grid] * (rows * cols)


@pytest.mark.parametrize("name", BUNDLED)
def test_chunk_geometry_follows_the_spec(name):
    tok = vitok.load(name)
    cfg = json.loads((PRETRAINED_DIR / name / "config.json").read_text())
    for n in (1, 3, 5, 8, 16, 17, 20):
        for height, width in ((45, 67), (144, 176), (272, 640), (720, 1280), (128, 128), (129, 300)):
            if n > cfg["clip_frames"]:
                continue
            g = tok.plan(n, height, width)
            k = tok.max_tokens
            grid = (k, 1, 1) if k is not None else tok.unit_grid(*g.unit_size)
            unit = (*g.unit_size, g.rows.count, g.cols.count)
            assert _spec_units(cfg, n, height, width, k or 0) == (unit, [grid] * g.units), (n, height, width)


@pytest.mark.parametrize("name", BUNDLED)
def test_table_id_follows_the_spec(name):
    """The id: sha256 of the JSON head (default separators) then each tensor's name and bytes, in the spec's order."""
    path = PRETRAINED_DIR / name / "entropy.safetensors"
    with safe_open(str(path), "np") as f:
        meta = json.loads(f.metadata()["vitok_entropy"])
        head = {"steps": meta["steps"], "precision": 16}
        if meta.get("context_radius"):
            head["context_radius"] = meta["context_radius"]
        h = hashlib.sha256(json.dumps(head, separators=(", ", ": ")).encode())
        order = ["mean", "std"] + [f"step{i}.{k}" for i in range(len(meta["steps"]))
                                   for k in ("cdf", "cdf_length", "offset", "median")]
        assert sorted(order) == sorted(f.keys())
        for key in order:
            h.update(key.encode())
            value = f.get_tensor(key)
            h.update(np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes())
    assert h.hexdigest()[:16] == meta["table_id"] == VitokCodec(name).tables.table_id
