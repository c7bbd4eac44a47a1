"""FORMAT.md's derivations, written out from the text alone, against the code: a third-party decoder that follows
the spec gets the code's chunk geometry and table ids."""
from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest
from safetensors import safe_open

import vitok
from vitok.codecs import VitokCodec
from vitok.codecs.container import VtokHeader, read_vtok, write_vtok
from vitok.codecs.payload import CONTINUES, pack_chunk
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


@pytest.mark.parametrize("overlap", [0, 32])
def test_a_tiling_record_gives_the_chunk_geometry(overlap):
    """FORMAT.md: a decoder cuts frames as the stream's `tiling` record says when its tile and fit are the model's:
    vitok-grid streams of 48x272 frames coded with tiles overlapping by 0 and 32 px (the model's own: 8 px) have the
    geometry the record gives, which is not the config's."""
    from vitok.data.samples import load_sample

    frames = np.ascontiguousarray(load_sample("bikes", "eval")[:9, 112:160, 184:456])
    codec = VitokCodec("vitok-grid")
    data = codec.encode(frames, 25, overlap=overlap)
    spec, payloads = _spec_file(data)
    cfg = json.loads((PRETRAINED_DIR / "vitok-grid" / "config.json").read_text())
    record = spec["meta"]["tiling"]
    assert (record["tile"], record["fit"]) == (cfg["tile_size"], True) and record["overlap"] != cfg["tile_overlap"]
    units, grids = _spec_units({**cfg, "tile_overlap": record["overlap"]}, 9, 48, 272, 0)
    assert units != _spec_units(cfg, 9, 48, 272, 0)[0]
    coder = codec.for_stream(read_vtok(data)[0])
    g = coder.tok.plan(9, 48, 272, tile_overlap=coder.tiling["overlap"])
    assert units == (*g.unit_size, g.rows.count, g.cols.count)
    assert sum(math.prod(grid) for grid in grids) == codec.tokens_per_chunk(data)[0]


@pytest.mark.parametrize("name", BUNDLED)
def test_table_id_follows_the_spec(name):
    """The id: sha256 of the JSON head (default separators) then each tensor's name and bytes, in the spec's order."""
    path = PRETRAINED_DIR / name / "entropy.safetensors"
    with safe_open(str(path), "np") as f:
        meta = json.loads(f.metadata()["vitok_entropy"])
        head = {"steps": meta["steps"], "precision": 16}
        for key in ("context_radius", "spatial_radius", "channel_radius"):
            if meta.get(key):
                head[key] = meta[key]
        if meta.get("channel_radius"):
            head["channel_parents"] = meta["channel_parents"]
        if "inter_parents" in meta:
            head["inter_parents"] = meta["inter_parents"]
        h = hashlib.sha256(json.dumps(head, separators=(", ", ": ")).encode())
        order = ["mean", "std"] + [f"{kind}{i}.{k}" for kind in ("step", "inter") if kind == "step" or
                                   "inter_parents" in meta for i in range(len(meta["steps"]))
                                   for k in ("cdf", "cdf_length", "offset", "median")]
        assert sorted(order) == sorted(f.keys())
        for key in order:
            h.update(key.encode())
            value = f.get_tensor(key)
            h.update(np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes())
    assert h.hexdigest()[:16] == meta["table_id"] == VitokCodec(name).tables.table_id


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """FORMAT.md: unsigned LEB128, low bits first, at most 5 bytes."""
    value = shift = 0
    for i in range(5):
        byte = data[at + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at + i + 1
    raise ValueError("varint over 5 bytes")


def _spec_file(data: bytes) -> tuple[dict, list[bytes]]:
    """FORMAT.md 'Header', metadata table and 'Chunks', read from the text alone: the header's values and the
    chunk payloads."""
    magic, version, frames = struct.unpack_from("<4sHI", data)
    assert (magic, version) == (b"VTOK", 2)
    length, at = _varint(data, 10)
    end = at + length
    assert struct.unpack_from("<I", data, end)[0] == zlib.crc32(data[:end])
    out = {"frames": frames}
    for key in ("width", "height", "fps_num", "fps_den", "chunk_frames", "keys"):
        out[key], at = _varint(data, at)
    meta: dict = {}
    for bit in range(11):
        if not out["keys"] >> bit & 1:
            continue
        if bit == 0:
            meta["codec"] = "vitok"
        elif bit == 1:
            n, at = _varint(data, at)
            meta["model"], at = data[at:at + n].decode(), at + n
        elif bit in (2, 5):
            meta["weights" if bit == 2 else "tables"], at = data[at:at + 8].hex(), at + 8
        elif bit == 3:
            meta["kind"], at = ["vit", "vit1d", "cnn"][data[at]], at + 1
        elif bit == 4:
            meta["channels"], at = _varint(data, at)
        elif bit == 6:
            meta["step"], at = struct.unpack_from("<f", data, at)[0], at + 4
        elif bit == 7:
            meta["step"] = None
        elif bit == 8:
            num, at = _varint(data, at)
            den, at = _varint(data, at)
            meta["sar"] = [num, den]
        elif bit == 9:
            fit, overlap = data[at], struct.unpack_from("<d", data, at + 1)[0]
            tile, at = _varint(data, at + 9)
            meta["tiling"] = {"fit": bool(fit), "overlap": overlap, "tile": tile or None}
        else:
            n, at = _varint(data, at)
            meta.update(json.loads(data[at:at + n]))
            at += n
    assert at == end
    out["meta"] = meta
    at, chunks = end + 4, []
    for _ in range(-(-frames // out["chunk_frames"])):
        n, start = _varint(data, at)
        crc = struct.unpack_from("<I", data, start)[0]
        payload = data[start + 4:start + 4 + n]
        assert crc == zlib.crc32(payload, zlib.crc32(data[at:start]))
        chunks.append(payload)
        at = start + 4 + n
    assert at == len(data)
    return out, chunks


def _values(header: VtokHeader) -> dict:
    return {"frames": header.frames, "width": header.width, "height": header.height,
            "fps_num": header.fps.numerator, "fps_den": header.fps.denominator, "chunk_frames": header.chunk_frames,
            "meta": header.meta}


def test_a_bundled_models_stream_reads_by_the_spec():
    """carphone at its own 176x144, 30000/1001 fps and 128:117 pixels, in 2x2 tiles of the 1D model: every
    metadata field but the JSON object and a null step."""
    from vitok.data.io import read_video
    from vitok.data.samples import sample_path

    frames, info = read_video(sample_path("carphone"), num_frames=3)
    data = VitokCodec("vitok-1d").encode(frames, info.fps, tokens=8, sample_aspect_ratio=info.sample_aspect_ratio)
    spec, payloads = _spec_file(data)
    header, chunks = read_vtok(data)
    assert spec.pop("keys") == 0b1101111111 and spec == _values(header)
    assert set(header.meta) == {"codec", "model", "weights", "kind", "channels", "tables", "step", "sar", "tiling"}
    assert payloads == [p for _, p in chunks]


def test_null_step_and_json_keys_read_by_the_spec():
    meta = {"codec": "vitok", "model": "m", "step": None, "note": [1, {"a": "b"}], "channels": -3}
    data = write_vtok(VtokHeader(300, 200, Fraction(24000, 1001), 16, meta=meta), [(b"x" * 200, 16), (b"y", 4)])
    spec, payloads = _spec_file(data)
    assert spec.pop("keys") == 1 << 10 | 1 << 7 | 0b11 and spec == _values(read_vtok(data)[0])
    assert spec["meta"] == meta and payloads == [b"x" * 200, b"y"]


def test_bundled_header_sizes_on_the_rd_segments():
    """The header bytes the README and FORMAT.md quote for the RD's 128x128 segments (25 fps and 30000/1001): the
    file's first chunk starts there."""
    from vitok.evaluation.clips import resolve_clips

    clips = {c.name.split(":")[0]: c for c in resolve_clips(["eval"])}
    sizes = {}
    for name in BUNDLED:
        codec = VitokCodec(name)
        for clip in ("bigbuckbunny", "carphone"):
            frames, fps = clips[clip].load(5)
            sizes[name, str(fps)] = read_vtok(codec.encode(frames, fps))[1][0][0].offset
    assert sizes == {("vitok-grid", "25"): 56, ("vitok-grid", "30000/1001"): 59, ("vitok-cnn", "25"): 55,
                     ("vitok-cnn", "30000/1001"): 58, ("vitok-1d", "25"): 54, ("vitok-1d", "30000/1001"): 57}


def _spec_symbols(payload: bytes, tables: dict, grids: list, channels: int,
                  before: np.ndarray | None = None) -> np.ndarray:
    """FORMAT.md 'Chunks': a grid model's chunk payload with spatial context tables, decoded wave by wave from the
    text alone (CompressAI's decoder, one ``decode_stream`` call per wave); the integers in token-major order.
    ``before``: the previous chunk's integers ``(units, t, h, w, C)``, for a chunk that continues its contexts."""
    from compressai.ans import RansDecoder

    index, continues = payload[0] & 0x7F, payload[0] >> 7
    assert not continues or before is not None
    assert struct.unpack_from("<H", payload, 5)[0] == 0   # a grid model: every token
    meta = tables["meta"]
    R, S, C = meta["context_radius"], meta["spatial_radius"], channels
    cdf, length, offset, median = (tables[f"step{index}.{k}"] for k in ("cdf", "cdf_length", "offset", "median"))
    cdfs = [row[:n].tolist() for row, n in zip(cdf, length)]
    t, h, w = grids[0]
    assert all(g == grids[0] for g in grids)   # one run
    units = len(grids)
    count = units * t * h * w * C
    dec = RansDecoder()
    dec.set_stream(payload[7:] + bytes(8 * count + 4096))
    q = np.zeros((units, t, h, w, C), np.int64)
    for d in range(t + h + w - 2):
        places = [(u, i, y, x) for u in range(units) for i in range(t) for y in range(h) for x in range(w)
                  if i + y + x == d]
        rows = []
        for u, i, y, x in places:
            for c in range(C):
                back = int(q[u, i - 1, y, x, c]) if i else int(before[u, -1, y, x, c]) if continues else None
                ctx = 2 * R + 1 if back is None else min(max(back, -R), R) + R
                near = ([int(q[u, i, y, x - 1, c])] if x else []) + ([int(q[u, i, y - 1, x, c])] if y else [])
                p = (near[0] + near[1] + 1) // 2 if len(near) == 2 else (near[0] if near else None)
                sctx = 2 * S + 1 if p is None else min(max(p, -S), S) + S
                rows.append((ctx * (2 * S + 2) + sctx) * C + c)
        sym = dec.decode_stream(rows, cdfs, length.tolist(), offset.tolist())
        for k, (u, i, y, x) in enumerate(places):
            for c in range(C):
                q[u, i, y, x, c] = sym[k * C + c] + median[rows[k * C + c]]
    return q.reshape(-1, C)


def test_chunks_that_continue_their_contexts_decode_by_the_spec():
    """A vitok-grid stream of 25 frames (chunks of 20 and 5): the second chunk's header sets `continues`, and the
    spec's decoder, handing it the first chunk's integers, gets the codec's integers for both."""
    from vitok.data.samples import load_sample

    codec = VitokCodec("vitok-grid")
    frames = np.ascontiguousarray(load_sample("carphone", "train")[:25, 40:88, 56:120])
    data = codec.encode(frames, 25)
    _, payloads = _spec_file(data)
    assert [p[0] >> 7 for p in payloads] == [0, 1]
    with safe_open(str(PRETRAINED_DIR / "vitok-grid" / "entropy.safetensors"), "np") as f:
        tables = {k: f.get_tensor(k) for k in f.keys()}
        tables["meta"] = json.loads(f.metadata()["vitok_entropy"])
    cfg = json.loads((PRETRAINED_DIR / "vitok-grid" / "config.json").read_text())
    before = None
    for n, payload, (_, q, _, _) in zip((20, 5), payloads, codec.iter_symbols(data)):
        _, grids = _spec_units(cfg, n, 48, 64, 0)
        spec = _spec_symbols(payload, tables, grids, cfg["latent_channels"], before)
        assert np.array_equal(spec, q)
        before = spec.reshape(len(grids), *grids[0], -1)


@pytest.mark.parametrize("name", ["vitok-grid", "vitok-cnn"])
def test_spatial_context_chunks_decode_by_the_spec(name):
    """A bundled grid model's stream (spatial context tables, the grid models' default) decodes by FORMAT.md's text
    to the integers the codec decodes: two units of 9 frames (carphone's 176x144 tiles at 128 px)."""
    from vitok.data.samples import load_sample

    codec = VitokCodec(name)
    if not codec.tables.spatial_radius:
        pytest.skip(f"{name} ships tables without spatial contexts")
    frames = np.ascontiguousarray(load_sample("carphone", "eval")[:9, :, :])
    data = codec.encode(frames, 25)
    spec, payloads = _spec_file(data)
    path = PRETRAINED_DIR / name / "entropy.safetensors"
    with safe_open(str(path), "np") as f:
        tables = {k: f.get_tensor(k) for k in f.keys()}
        tables["meta"] = json.loads(f.metadata()["vitok_entropy"])
    assert spec["meta"]["tables"] == tables["meta"]["table_id"][:16]
    cfg = json.loads((PRETRAINED_DIR / name / "config.json").read_text())
    for payload, (_, q, _, _) in zip(payloads, codec.iter_symbols(data)):
        _, grids = _spec_units(cfg, 9, 144, 176, 0)
        assert np.array_equal(_spec_symbols(payload, tables, grids, cfg["latent_channels"]), q)


def test_channel_context_chunks_decode_by_the_spec(tmp_path):
    """A 1D model's chunks coded with channel context tables (1D models' default) decode by FORMAT.md's text alone:
    channel by channel, each token's context from its parent channels' integers (one decode_stream call a channel);
    the second chunk predicts the tokens of its second unit (tile) from the first chunk's (a map of predicted units,
    then inter tables: differences, their own parents and rows after the others'), 16 of its 24 at another step."""
    import shutil

    from compressai.ans import RansDecoder

    from vitok.codecs.entropy import Prediction, calibrate_model_dir
    from vitok.codecs.neural import unit_map
    from vitok.data.samples import load_sample

    d = tmp_path / "vitok-1d"
    shutil.copytree(PRETRAINED_DIR / "vitok-1d", d)
    frames = np.ascontiguousarray(load_sample("carphone", "train")[:40, :128, :176])   # two 128 px tiles
    tables_made = calibrate_model_dir(d, [frames], steps=(0.5, 1.0), channel_radius=2)
    assert tables_made.channel_radius == 2 and tables_made.predicts
    codec = VitokCodec(str(d))
    first = codec.encode_chunk(frames[:20], step=0.5, tokens=16)
    second = codec.encode_chunk(frames[20:], step=1.0, tokens=24)
    data = VitokCodec(str(d)).encode(frames, 25, tokens=24)
    _, payloads = _spec_file(data)
    # chunks an encoder may write (vitok's predicts only where that is shorter, which calibration on two chunks
    # seldom makes it): the second unit of the second chunk predicted from the first chunk, at another step and count
    whole = first.carry.prediction(24, 1.0)
    pred = Prediction(whole.mask & (np.arange(48) >= 24), whole.values)
    predicted = unit_map(np.array([False, True])) + codec.tables.encode(second.q, second.table, pred=pred)
    payloads[0], payloads[1] = first.payload, pack_chunk(second.table | CONTINUES, 1.0, 24, predicted)
    assert np.array_equal(codec.decode_symbols(payloads[1], 20, 128, 176, first.carry)[0], second.q)
    with safe_open(str(d / "entropy.safetensors"), "np") as f:
        tables = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["vitok_entropy"])
    assert meta["format"] == 5 and [p[0] >> 7 for p in payloads] == [0, 1]
    P, C, units = meta["channel_radius"], len(tables["std"]), 2
    before = None
    for payload, q in zip(payloads, (first.q, second.q)):
        index, continues = payload[0] & 0x7F, payload[0] >> 7
        step, tokens = struct.unpack_from("<fH", payload, 1)
        parts = [tables[f"step{index}.{k}"] for k in ("cdf", "cdf_length", "offset", "median")]
        inter = [tables[f"inter{index}.{k}"] for k in ("cdf", "cdf_length", "offset", "median")]
        cdfs = [row[:m].tolist() for row, m in zip(parts[0], parts[1])] + \
            [row[:m].tolist() for row, m in zip(inter[0], inter[1])]
        length, offset, median = (np.concatenate([a, b]) for a, b in zip(parts[1:], inter[1:]))
        n, rans = units * tokens, payload[7:]
        predicted, p = np.zeros(n, bool), np.zeros((n, C), np.int64)
        if continues:   # the map, then: a mapped unit's tokens the chunk before kept, predicted from its integers
            mapped, rans = [bool(rans[0] >> u & 1) for u in range(units)], rans[1:]
            b_step, b_q, b_tokens = before
            scaled = b_q if b_step == step else np.rint(b_q * (np.float64(b_step) / np.float64(step)))
            for i in range(n):
                u, j = divmod(i, tokens)
                if mapped[u] and j < b_tokens:
                    predicted[i], p[i] = True, scaled[u * b_tokens + j]
        dec = RansDecoder()
        dec.set_stream(rans + bytes(8 * n * C + 4096))
        v = np.zeros((n, C), np.int64)
        for c in range(C):
            rows = []
            for i in range(n):
                parents, base = (meta["inter_parents"], len(parts[0])) if predicted[i] else (meta["channel_parents"], 0)
                ctx = 0
                for par in parents[c]:   # the first parent's digit the most significant, base 2P + 2
                    ctx = ctx * (2 * P + 2) + (2 * P + 1 if par < 0 else min(max(int(v[i, par]), -P), P) + P)
                rows.append(base + ctx * C + c)
            sym = dec.decode_stream(rows, cdfs, length.tolist(), offset.tolist())
            v[:, c] = np.asarray(sym) + median[rows]
        spec = v + p   # p is 0 where nothing is predicted
        assert np.array_equal(spec, q)
        before = (step, spec, tokens)
