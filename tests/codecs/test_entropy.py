"""Entropy tables: exact integer round trips, storage, estimate vs real bytes, thread independence."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitok.codecs import BitstreamError, CodecError
from vitok.codecs.entropy import EntropyTables, StepTable, calibrate_entropy, fit_tables, load_entropy_tables


@pytest.fixture(scope="module")
def synthetic():
    g = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.5, 3.0, 6)
    z = torch.randn(3000, 6, generator=g) * scale + torch.linspace(-1, 1, 6)
    return fit_tables(z, steps=(0.25, 1.0, 4.0), iters=60), scale


def test_round_trip_every_step(synthetic):
    tables, scale = synthetic
    z = torch.randn(400, 6, generator=torch.Generator().manual_seed(1)) * scale
    for i, step in enumerate(tables.steps):
        q = tables.quantize(z, step, i)
        data = tables.encode(q, i)
        assert np.array_equal(tables.decode(data, len(q), i), q)
        # dequantization error is at most half a step (in each channel's std units)
        err = (tables.dequantize(q, step) - z).abs() / torch.from_numpy(tables.std)
        assert float(err.max()) <= step / 2 + 1e-4


def test_estimate_matches_real_bytes(synthetic):
    tables, scale = synthetic
    z = torch.randn(2000, 6, generator=torch.Generator().manual_seed(2)) * scale
    for i, step in enumerate(tables.steps):
        q = tables.quantize(z, step, i)
        real = len(tables.encode(q, i))
        est = tables.estimate_bits(q, i) / 8
        assert abs(real - est) <= 0.02 * real + 12, (step, real, est)
    report = tables.meta["calibration"]["bits_per_symbol"]
    for r in report.values():  # float likelihoods, integer tables and real rANS agree on the calibration data
        assert abs(r["float_bits"] - r["table_bits"]) < 0.02 and abs(r["real_bits"] - r["table_bits"]) < 0.1


def test_outliers_and_tiny_streams_round_trip(synthetic):
    tables, scale = synthetic
    z = torch.randn(50, 6, generator=torch.Generator().manual_seed(3)) * scale * 1000  # far outside the tables
    q = tables.quantize(z, 0.25, 0)
    assert np.array_equal(tables.decode(tables.encode(q, 0), 50, 0), q)
    one = tables.quantize(z[:1], 1.0, 1)  # fewer symbols than the coder's minimum
    assert np.array_equal(tables.decode(tables.encode(one, 1), 1, 1), one)


def test_step_finer_than_the_tables_is_refused_when_it_clamps(synthetic):
    """A step far below the finest calibrated one pushes values past its table's range, where they clamp (quality
    falls as the bytes grow): refused by name; a step a little finer, whose values still fit, codes as before."""
    tables, scale = synthetic
    z = torch.randn(400, 6, generator=torch.Generator().manual_seed(4)) * scale
    with pytest.raises(CodecError, match=r"step 0.001 is too fine for these entropy tables \(calibrated for steps "
                                         r"0.25 to 4\): [0-9.]+% of the latent values"):
        tables.quantize(z, 0.001)
    q = tables.quantize(z, 0.2)
    assert np.array_equal(tables.decode(tables.encode(q, 0), len(q), 0), q)


def test_save_load_same_tables(synthetic, tmp_path):
    tables, _ = synthetic
    path = tables.save(tmp_path / "entropy.safetensors")
    again = EntropyTables.load(path)
    assert again.table_id == tables.table_id and again.steps == tables.steps
    assert load_entropy_tables(tmp_path).table_id == tables.table_id
    with pytest.raises(CodecError, match="no entropy tables"):
        load_entropy_tables(tmp_path / "missing")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CodecError, match="cannot read entropy tables"):
        EntropyTables.load(tmp_path / "bad.safetensors")


def _bits_by_cdf(table: StepTable, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Bits of in-table integers straight from the frozen CDFs (what the coder spends on them)."""
    v = q - table.median[rows] - table.offset[rows]
    assert ((v >= 0) & (v < table.cdf_length[rows] - 2)).all()
    freq = table.cdf[rows, v + 1].astype(np.int64) - table.cdf[rows, v]
    return 16 - np.log2(freq)


def test_rd_rounding_trades_squared_error_for_bits_and_is_kept(synthetic, tmp_path):
    """With ``rd_lambda`` each value rounds down or up, whichever costs less ``w * error**2 + lambda * bits``:
    fewer bits and more error than rounding to nearest, a channel weighted higher kept nearer; lambda 0 is rounding
    to nearest. Saved with the tables, their id (streams name it) unchanged; a bad setting is refused on load."""
    tables, scale = synthetic
    step, i = tables.steps[1], 1
    z = torch.randn(3000, 6, generator=torch.Generator().manual_seed(7)) * scale
    v = ((z.double().numpy() - tables.offsets(len(z))) / (tables.std * step))
    nearest = tables.quantize(z, step, i)
    weights = [1, 1, 1, 1, 4, 0.25]
    assert np.array_equal(tables.with_rdoq(0.0, weights).quantize(z, step, i), nearest)
    rd = tables.with_rdoq(0.5, weights)
    q = rd.quantize(z, step, i)
    rows = np.broadcast_to(np.arange(6), q.shape)
    inside = np.all(np.abs(v) < 8, axis=1)   # well inside every table: bits straight from the CDFs
    low = np.floor(v[inside]).astype(np.int64)
    costs = [np.asarray(weights) * (v[inside] - y) ** 2 + 0.5 * _bits_by_cdf(tables.tables[i], rows[inside], y)
             for y in (low, low + 1)]
    assert np.array_equal(q[inside], np.where(costs[1] < costs[0], low + 1, low))
    far = z * 60   # escapes past the tables, and values clamped at the coder's range: still down or up
    v_far, q_far = (far.double().numpy() - tables.offsets(len(z))) / (tables.std * step), rd.quantize(far, step, i)
    lo, hi = tables._channel_range(tables.tables[i])
    assert (np.abs(v_far) > 130).any() and np.isin(q_far - np.clip(np.floor(v_far), lo, hi), (0, 1)).all()
    assert np.array_equal(tables.decode(tables.encode(q_far, i), len(q_far), i), q_far)
    assert rd.estimate_bits(q, i) < 0.9 * tables.estimate_bits(nearest, i)
    err = [((v - x) ** 2).mean(0) for x in (nearest, q)]
    assert (err[1] >= err[0]).all() and err[1][4] - err[0][4] < err[1][5] - err[0][5]   # weight 4 vs 0.25
    again = EntropyTables.load(rd.save(tmp_path / "rd.safetensors"))
    assert again.rd_lambda == 0.5 and again.distortion_weights.tolist() == weights
    assert again.table_id == tables.table_id and tables.rd_lambda == 0.0 and (tables.distortion_weights == 1).all()
    for bad, message in ((-0.1, "rd_lambda must be"), ("0.1", "rd_lambda must be"), (True, "rd_lambda must be"),
                         ([1, 1], "distortion_weights must be 6 numbers"), ([0] * 6, "not all 0"),
                         ([1, 1, 1, 1, 1, -1], "distortion_weights must be 6 numbers")):
        args = (bad,) if message.startswith("rd_") else (0.1, bad)
        with pytest.raises(CodecError, match=message):
            tables.with_rdoq(*args)
        key = "rd_lambda" if message.startswith("rd_") else "distortion_weights"
        hand = tables.with_rdoq(0.1)
        hand.meta[key] = bad   # a file written with it by hand
        hand.save(tmp_path / "bad.safetensors")
        with pytest.raises(CodecError, match=message):
            EntropyTables.load(tmp_path / "bad.safetensors")
    earlier = tables.with_rdoq(0.0)
    earlier.meta = {**tables.meta, "deadzone": 0.1}   # written by the vitok before rate-distortion rounding
    with pytest.warns(UserWarning, match="'deadzone' .* is no longer used: these tables round to nearest"):
        loaded = EntropyTables.load(earlier.save(tmp_path / "dz.safetensors"))
    assert loaded.rd_lambda == 0 and "deadzone" not in loaded.with_rdoq(0.1).meta


def test_garbage_rans_data_is_bitstream_error_or_values(synthetic):
    tables, _ = synthetic
    rng = np.random.default_rng(0)
    for n in range(200):
        data = rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
        try:
            q = tables.decode(data, 40, n % 3)
        except BitstreamError:
            continue
        assert q.shape == (40, 6)


def test_bad_step(synthetic):
    tables, _ = synthetic
    for bad in (0, -1.0, float("nan"), "x"):
        with pytest.raises(CodecError, match="quantization step must be a positive number"):
            tables.table_index(bad)
    assert tables.table_index(0.3) == 0 and tables.table_index(3.0) == 2


def test_calibrate_model_dir(tiny1d, tmp_path, clip):
    import shutil

    from vitok.codecs.entropy import calibrate_model_dir

    d = tmp_path / "m"
    shutil.copytree(tiny1d[2], d)
    (d / "entropy.safetensors").unlink()
    frames, _ = clip
    tables = calibrate_model_dir(d, [frames[:8]], steps=(1.0,), iters=10)
    assert load_entropy_tables(d).table_id == tables.table_id and tables.steps == [1.0]
    assert tables.meta["weights_hash"] == tiny1d[0].weights_hash and tables.rd_lambda == 0.0
    tables.with_rdoq(0.1, [5.0] * tables.channels).save(d)   # what tools/rdoq.py --write does
    again = calibrate_model_dir(d, [frames[:8]], steps=(1.0,), iters=10)   # recalibrating keeps the model's setting
    assert again.rd_lambda == 0.1 and load_entropy_tables(d).rd_lambda == 0.1
    w = again.distortion_weights   # measured again for these weights, which may be new
    assert w.shape == (tables.channels,) and w.mean() == pytest.approx(1, abs=1e-3) and w.std() > 0


def test_calibration_is_the_same_at_any_thread_count():
    """Float sums change with torch's thread count: fitted at 1 and 2 threads, the bundled 1D model's tables came
    out different (another id, so streams coded with one did not decode with the other); calibration runs on one
    thread and restores the caller's count."""
    import vitok
    from vitok.data.samples import train_segments

    tok = vitok.load("vitok-1d")
    clips = [frames for _, frames in train_segments(num_frames=17, size=128)[:2]]
    ids = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        ids.append(calibrate_entropy(tok, clips, steps=(0.5,), iters=30).table_id)
        assert torch.get_num_threads() == threads
    assert ids[0] == ids[1]


def test_per_position_offsets_code_ranked_tokens_in_fewer_bits(tmp_path):
    """1D tokens: each position has its own mean. A (K, C) offset codes the residual: fewer bits than per-channel
    tables at the same step, exact round trips for any prefix of k tokens per unit, and it survives save/load."""
    K, C, units = 8, 4, 400
    g = torch.Generator().manual_seed(5)
    centre = torch.randn(K, C, generator=g) * 3
    z = (centre + torch.randn(units, K, C, generator=g) * 0.5).reshape(-1, C)
    flat = fit_tables(z, steps=(0.5,), iters=80)
    ranked = fit_tables(z, steps=(0.5,), mean=z.reshape(-1, K, C).mean(0).numpy(), std=flat.std, iters=80)
    assert flat.unit_tokens is None and ranked.unit_tokens == K
    bits = [t.estimate_bits(t.quantize(z, 0.5), 0) for t in (flat, ranked)]
    assert bits[1] < 0.6 * bits[0], bits
    for k in (1, 3, K):  # a prefix of k tokens per unit: rows are units of k
        zk = z.reshape(units, K, C)[:20, :k].reshape(-1, C)
        q = ranked.quantize(zk, 0.5, tokens=k)
        assert np.array_equal(ranked.decode(ranked.encode(q, 0), len(q), 0), q)
        err = (ranked.dequantize(q, 0.5, tokens=k) - zk).abs() / torch.from_numpy(ranked.std)
        assert float(err.max()) <= 0.25 + 1e-4
    for rows, k in ((7, 3), (9, K + 1), (8, 0)):
        with pytest.raises(CodecError, match="per-position tables code units"):
            ranked.quantize(torch.zeros(rows, C), 0.5, tokens=k)
    with pytest.raises(CodecError, match="whole units of 8 tokens"):
        fit_tables(z[:-1], steps=(0.5,), mean=ranked.mean, iters=5)
    again = EntropyTables.load(ranked.save(tmp_path / "entropy.safetensors"))
    assert again.table_id == ranked.table_id and again.mean.shape == (K, C)


def test_format_1_tables_still_load(synthetic, tmp_path):
    """Tables written before per-position offsets (format 1) load unchanged."""
    import json

    from safetensors.torch import save_file

    tables, _ = synthetic
    meta = {"format": 1, "steps": tables.steps, "precision": 16, "table_id": tables.table_id}
    save_file(tables.tensors(), str(tmp_path / "old.safetensors"), metadata={"vitok_entropy": json.dumps(meta)})
    assert EntropyTables.load(tmp_path / "old.safetensors").table_id == tables.table_id
    meta["format"] = 99
    save_file(tables.tensors(), str(tmp_path / "new.safetensors"), metadata={"vitok_entropy": json.dumps(meta)})
    with pytest.raises(CodecError, match="unsupported format 99"):
        EntropyTables.load(tmp_path / "new.safetensors")


@pytest.fixture(scope="module")
def drifting():
    """Units of a (t, h, w) = (5, 4, 4) grid whose values drift slowly over t: what grid latents of video look like."""
    from vitok.codecs.entropy import fit_context_tables

    g = torch.Generator().manual_seed(6)
    units, grid, C = 60, (5, 4, 4), 3
    z = (torch.randn(units, 1, 16, C, generator=g) * 2 + 0.3 * torch.randn(units, 5, 16, C, generator=g).cumsum(1))
    z = z.reshape(units, 80, C)
    zero, one = np.zeros(C, np.float32), np.ones(C, np.float32)
    tables = fit_context_tables([(u, grid) for u in z[:50]], steps=(0.5, 2.0), mean=zero, std=one, radius=3)
    return tables, z, grid


def test_temporal_context_tables_code_drifting_units_in_fewer_bits(drifting, tmp_path):
    """Grid latents: the co-located value one latent frame back picks the table. Fewer bits than factorized tables
    on held-out units, exact round trips of several units at once, and the context survives save/load."""
    tables, z, grid = drifting
    assert tables.context_radius == 3 and tables.contexts == 8 and tables.tables[0].cdf.shape[0] == 8 * 3
    flat = fit_tables(z[:50].reshape(-1, 3), steps=(0.5, 2.0), mean=tables.mean, std=tables.std, iters=80)
    held = z[50:].reshape(-1, 3)
    for i, step in enumerate(tables.steps):
        q = tables.quantize(held, step, i)
        assert np.array_equal(flat.quantize(held, step, i), q)  # same quantizer: only the coding differs
        data = tables.encode(q, i, grid)
        assert np.array_equal(tables.decode(data, len(q), i, grid), q)
        assert len(data) < 0.85 * len(flat.encode(q, i)), step
        assert abs(8 * len(data) - tables.estimate_bits(q, i, grid)) < 0.02 * 8 * len(data) + 96
    for bad in (None, (5, 4)):
        with pytest.raises(CodecError, match="need whole units"):
            tables.encode(q, 0, bad)
    with pytest.raises(CodecError, match="need whole units"):
        tables.decode(data, len(q) - 1, 1, grid)
    again = EntropyTables.load(tables.save(tmp_path / "entropy.safetensors"))
    assert again.table_id == tables.table_id and again.context_radius == 3
    from vitok.codecs.entropy import fit_context_tables

    counted = fit_context_tables([(u, grid) for u in z[:50]], steps=(0.5,), mean=tables.mean, std=tables.std, radius=0)
    q5 = tables.quantize(held, 0.5, 0)  # radius 0: count-based tables without a context, which cost more here
    assert counted.contexts == 1 and len(counted.encode(q5, 0)) > len(tables.encode(q5, 0, grid))
    t = tables.tables[0]  # every context of a channel must share its range, or the clamp in quantize would not hold
    odd = StepTable(t.step, t.cdf, t.cdf_length, t.offset.copy(), t.median)
    odd.offset[3] -= 1
    with pytest.raises(ValueError, match="contexts of a channel differ"):
        EntropyTables(tables.mean, tables.std, [odd], context_radius=3)


def test_units_of_different_lengths(drifting):
    """Per-unit token counts (1D rate control per tile): per-position offsets restart in every unit, and context
    tables run along each unit's own length; integers round-trip exactly and the estimate adds up per unit."""
    tables, z, _ = drifting
    counts = (5, 2, 7, 1)
    rows = [z[u, :k] for u, k in enumerate(counts)]  # units (k, 1, 1): k tokens each
    q = tables.quantize(torch.cat(rows), 0.5, 0)
    grids = [(k, 1, 1) for k in counts]
    data = tables.encode(q, 0, grids)
    assert np.array_equal(tables.decode(data, len(q), 0, grids), q)
    per_unit = sum(tables.estimate_bits(part, 0, (k, 1, 1))
                   for part, k in zip(np.split(q, np.cumsum(counts)[:-1]), counts))
    assert per_unit == pytest.approx(tables.estimate_bits(q, 0, grids))
    with pytest.raises(CodecError, match="need whole units"):
        tables.encode(q, 0, grids[:-1])
    K, C = 8, 3
    mean = np.arange(K * C, dtype=np.float64).reshape(K, C)
    ranked = EntropyTables(mean, tables.std, tables.tables[:1], context_radius=tables.context_radius)
    off = ranked.offsets(6, (2, 4))
    assert np.array_equal(off, np.concatenate([mean[:2], mean[:4]]))
    for bad in ((2, 3), (2, K + 1), (0, 6)):
        with pytest.raises(CodecError, match="per-position tables code units"):
            ranked.offsets(6, bad)


def test_rd_rounding_with_temporal_contexts_costs_each_value_in_its_context(drifting):
    """With context tables a value's bits depend on the co-located value one step back: rate-distortion rounding
    costs each value under the table that value picks (quantizing one step along t at a time), so drifting units
    code in fewer bits than with rounding to nearest or with bits costed under the channel's first-step table,
    each value at most one away from nearest, and the decoder needs nothing new. Counting what each choice makes the
    next value cost (its table depends on it) lowers the whole objective below choosing each value alone."""
    tables, z, grid = drifting
    held = z[50:].reshape(-1, 3)
    rd = tables.with_rdoq(0.3)
    step, i = tables.steps[0], 0
    nearest, rounded = tables.quantize(held, step, i), rd.quantize(held, step, i, grid=grid)
    assert np.abs(rounded - nearest).max() == 1 and (rounded != nearest).mean() > 0.05
    first = tables.contexts - 1   # costed without contexts: every value under its channel's first-step table
    blind = EntropyTables(tables.mean, tables.std, [StepTable(t.step, *(a.reshape(tables.contexts, 3, *a.shape[1:])[
        first] for a in (t.cdf, t.cdf_length, t.offset, t.median))) for t in tables.tables], {"rd_lambda": 0.3})
    without = blind.quantize(held, step, i)
    bits = [tables.estimate_bits(q, i, grid) for q in (nearest, without, rounded)]
    assert bits[2] < bits[1] < bits[0], bits
    v = held.double().numpy() / step   # mean 0, std 1: values in steps
    greedy = np.empty_like(v).reshape(-1, 5, 16, 3)   # each value alone, without what it makes the next one cost
    rows = np.full((greedy.shape[0], 16, 3), tables.contexts - 1) * 3 + np.arange(3)
    for k in range(5):
        x = v.reshape(greedy.shape)[:, k]
        options = [np.floor(x), np.floor(x) + 1]
        cost = [(x - y) ** 2 + 0.3 * tables.tables[i].value_bits(rows, y.astype(np.int64)) for y in options]
        greedy[:, k] = np.where(cost[1] < cost[0], *options[::-1])
        rows = (np.clip(greedy[:, k], -3, 3).astype(np.int64) + 3) * 3 + np.arange(3)
    greedy = greedy.reshape(-1, 3).astype(np.int32)

    def objective(q):   # squared error in steps + lambda * bits, the whole units
        return ((v - q) ** 2).sum() + 0.3 * tables.estimate_bits(q, i, grid)

    assert not np.array_equal(greedy, rounded) and objective(rounded) < objective(greedy) < objective(nearest)
    data = tables.encode(rounded, i, grid)
    assert np.array_equal(tables.decode(data, len(rounded), i, grid), rounded)
    with pytest.raises(CodecError, match="need whole units"):
        rd.quantize(held, step, i)   # the contexts need the units' grid
    from vitok.codecs.entropy import fit_context_tables

    refit = fit_context_tables([(u, grid) for u in z[:10]], steps=(0.5,), mean=tables.mean, std=tables.std,
                               meta={"rd_lambda": 0.3})   # its calibration report quantizes each part by its grid
    assert refit.rd_lambda == 0.3 and refit.meta["calibration"]["tokens"] == 10 * 80


@pytest.fixture(scope="module")
def smooth():
    """Units of a (t, h, w) = (4, 5, 6) grid smooth across each latent frame and drifting over t, with temporal
    tables and spatio-temporal ones fitted to the first 200."""
    from vitok.codecs.entropy import fit_context_tables

    g = torch.Generator().manual_seed(7)
    units, grid, C = 240, (4, 5, 6), 2
    smooth = torch.randn(units, 5, 5, 6, C, generator=g).cumsum(2).cumsum(3)   # random walks along h and w
    z = (0.4 * smooth[:, :1] + 0.3 * smooth[:, 1:].cumsum(1)).reshape(units, -1, C)   # moving smoothly over t
    zero, one = np.zeros(C, np.float32), np.ones(C, np.float32)
    fit = [(u, grid) for u in z[:200]]
    temporal = fit_context_tables(fit, steps=(0.5, 2.0), mean=zero, std=one, radius=2)
    spatial = fit_context_tables(fit, steps=(0.5, 2.0), mean=zero, std=one, radius=2, spatial=2)
    return temporal, spatial, z[200:].reshape(-1, C), grid


def _spatial_rows_by_definition(q: np.ndarray, grid: tuple[int, int, int], R: int, S: int) -> np.ndarray:
    """FORMAT.md's rows, value by value."""
    t, h, w = grid
    c = q.shape[1]
    v = q.reshape(-1, t, h, w, c)
    rows = np.empty(v.shape, np.int64)
    for u, i, y, x, ch in np.ndindex(*v.shape):
        ctx = min(max(int(v[u, i - 1, y, x, ch]), -R), R) + R if i else 2 * R + 1
        near = [int(v[u, i, y, x - 1, ch])] if x else []
        near += [int(v[u, i, y - 1, x, ch])] if y else []
        p = (sum(near) + 1) // 2 if len(near) == 2 else (near[0] if near else None)
        sctx = 2 * S + 1 if p is None else min(max(p, -S), S) + S
        rows[u, i, y, x, ch] = (ctx * (2 * S + 2) + sctx) * c + ch
    return rows.reshape(-1)


def test_spatial_context_rows_and_coding_order_follow_the_definition():
    """A value's row: its temporal context times 2S + 2 plus the left and upper neighbours' rounded mean, clipped;
    the coding order is a permutation in which every neighbour a context reads comes earlier."""
    from vitok.codecs.entropy import stream_order, table_rows

    rng = np.random.default_rng(3)
    grid, c = (3, 3, 4), 2
    q = rng.integers(-5, 6, (2 * 36, c))
    assert np.array_equal(table_rows(q, grid, 1, 2), _spatial_rows_by_definition(q, grid, 1, 2))
    assert np.array_equal(table_rows(q, [grid, grid], 1, 2), table_rows(q, grid, 1, 2))
    order = stream_order(len(q), grid, c)
    assert sorted(order) == list(range(q.size))
    at = np.empty(q.size, np.int64)
    at[order] = np.arange(q.size)
    pos = at.reshape(2, 3, 3, 4, c)
    assert (pos[:, 1:] > pos[:, :-1]).all() and (pos[:, :, 1:] > pos[:, :, :-1]).all()
    assert (pos[:, :, :, 1:] > pos[:, :, :, :-1]).all()
    assert order[:2 * c].tolist() == [0, 1, 36 * c, 36 * c + 1]   # wave 0: (0, 0, 0) of each unit, unit by unit
    assert np.array_equal(stream_order(len(q), [grid, grid], c), np.arange(q.size).reshape(2, -1)[
        :, stream_order(36, grid, c)].reshape(-1))   # one run per unit when each unit has its own grid


def test_a_chunk_continues_the_temporal_contexts_of_the_one_before(smooth, synthetic):
    """With ``prev`` (the chunk before's last latent frame, ``carried_frame``) a chunk's first frame takes its
    temporal contexts from it, as if the two chunks were one unit: the rows match the definition on the joined
    frames, both kinds of context tables round-trip (rate-distortion rounding too), and the first frame costs fewer
    bits than with its own table; tables without a temporal context, and frames of another shape, are refused."""
    from vitok.codecs.entropy import carried_frame, table_rows

    temporal, spatial, held, (t, h, w) = smooth
    c = held.shape[1]
    units = held.reshape(-1, t, h, w, c)
    a, b = units[:, :2].reshape(-1, c), units[:, 2:].reshape(-1, c)   # each unit cut into two chunks of 2 frames
    for tables in (temporal, spatial):
        qa, qb = tables.quantize(a, 0.5, 0, grid=(2, h, w)), tables.quantize(b, 0.5, 0, grid=(2, h, w))
        prev = carried_frame(qa, (2, h, w))
        assert np.array_equal(prev, qa.reshape(-1, 2, h, w, c)[:, 1]) and prev.base is None   # holds no more than it
        joined = np.concatenate([prev[:, None], qb.reshape(-1, 2, h, w, c)], axis=1).reshape(-1, c)
        rows = _spatial_rows_by_definition(joined, (3, h, w), 2, tables.spatial_radius) if tables.spatial_radius \
            else table_rows(joined, (3, h, w), 2)
        assert np.array_equal(table_rows(qb, (2, h, w), 2, tables.spatial_radius, prev),
                              rows.reshape(-1, 3, h * w * c)[:, 1:].reshape(-1))
        data = tables.encode(qb, 0, (2, h, w), prev)
        assert np.array_equal(tables.decode(data, len(qb), 0, (2, h, w), prev), qb)
        assert tables.estimate_bits(qb, 0, (2, h, w), prev) < 0.97 * tables.estimate_bits(qb, 0, (2, h, w))
        rounded = tables.with_rdoq(0.2)
        qr = rounded.quantize(b, 0.5, 0, grid=(2, h, w), prev=prev)
        assert not np.array_equal(qr, rounded.quantize(b, 0.5, 0, grid=(2, h, w)))   # rounded in its contexts
        assert np.array_equal(rounded.decode(rounded.encode(qr, 0, (2, h, w), prev), len(qr), 0, (2, h, w), prev),
                              qr)
        with pytest.raises(BitstreamError, match="last latent frames .* do not fit units of 5x6x2"):
            tables.decode(data, len(qb), 0, (2, h, w), prev[:, :4])
    flat = synthetic[0]   # factorized tables
    with pytest.raises(CodecError, match="only tables with a temporal context carry"):
        flat.encode(np.zeros((8, 6), np.int32), 0, None, np.zeros((1, 1, 1, 6)))


def test_spatial_context_tables_code_smooth_units_in_fewer_bits(smooth, tmp_path):
    """Tables that also see the left and upper neighbours code latents smooth in space in fewer bytes than temporal
    tables, round-trip exactly (one grid for all units, or one per unit), and keep their radius through save/load."""
    from vitok.codecs.entropy import fit_context_tables

    temporal, spatial, held, grid = smooth
    assert (spatial.context_radius, spatial.spatial_radius, spatial.contexts) == (2, 2, 36)
    assert spatial.tables[0].cdf.shape[0] == 36 * 2 and temporal.contexts == 6
    for i, step in enumerate(spatial.steps):
        q = spatial.quantize(held, step, i)
        assert np.array_equal(temporal.quantize(held, step, i), q)   # the same quantizer: only the coding differs
        data = spatial.encode(q, i, grid)
        assert np.array_equal(spatial.decode(data, len(q), i, grid), q)
        assert len(data) < 0.9 * len(temporal.encode(q, i, grid)), step
        assert abs(8 * len(data) - spatial.estimate_bits(q, i, grid)) < 0.02 * 8 * len(data) + 96
        grids = [grid] * (len(q) // 120)
        assert np.array_equal(spatial.decode(spatial.encode(q, i, grids), len(q), i, grids), q)
    again = EntropyTables.load(spatial.save(tmp_path / "entropy.safetensors"))
    assert (again.table_id, again.spatial_radius, again.contexts) == (spatial.table_id, 2, 36)
    from safetensors import safe_open

    for tables, version in ((spatial, 3), (temporal, 2)):   # readers from before spatial contexts refuse format 3
        with safe_open(str(tables.save(tmp_path / f"v{version}.safetensors")), "np") as f:
            assert json.loads(f.metadata()["vitok_entropy"])["format"] == version
    flat = EntropyTables(spatial.mean, spatial.std, spatial.tables, context_radius=17)   # the same 36 rows a channel
    assert flat.table_id != spatial.table_id   # the radii are part of the id
    with pytest.raises(ValueError, match="needs a context radius"):
        EntropyTables(spatial.mean, spatial.std, spatial.tables, context_radius=0, spatial_radius=2)
    with pytest.raises(CodecError, match="need a temporal context radius"):
        fit_context_tables([(held[:120], grid)], mean=spatial.mean, std=spatial.std, radius=0, spatial=2)


@pytest.mark.parametrize("fixture", ["drifting", "smooth", "correlated"])
def test_corrupt_context_streams_fail_cleanly(fixture, request):
    """Random bytes as a stream of two units coded with temporal contexts, or with spatial ones in waves, or 50
    tokens coded channel by channel: a BitstreamError or integers of the right shape, never a crash."""
    made = request.getfixturevalue(fixture)
    if fixture == "correlated":
        tables, grid, n = made[1], None, 50
    else:
        tables, grid = (made[0], made[2]) if fixture == "drifting" else (made[1], made[3])
        n = 2 * grid[0] * grid[1] * grid[2]
    rng = np.random.default_rng(1)
    for k in range(100):
        data = rng.integers(0, 256, int(rng.integers(0, 120)), dtype=np.uint8).tobytes()
        try:
            q = tables.decode(data, n, k % 2, grid)
        except BitstreamError:
            continue
        assert q.shape == (n, tables.channels)



def test_spatial_tables_refuse_what_they_cannot_hold(smooth, tmp_path):
    """With spatial contexts and rate-distortion rounding (the bundled grid models' setting) a step far finer than
    the tables' is still refused (the rounding clamps as it goes, for its contexts); a tables file whose CDF rows
    are empty, or whose radius is not a number, is a CodecError naming it."""
    from safetensors.numpy import save_file

    _, spatial, held, grid = smooth
    rd = spatial.with_rdoq(0.3)
    with pytest.raises(CodecError, match="step 0.001 is too fine for these entropy tables"):
        rd.quantize(held * 20, 0.001, grid=grid)
    q = rd.quantize(held, 0.4, grid=grid)   # a little finer than the finest table: codes as before
    assert np.array_equal(spatial.decode(spatial.encode(q, 0, grid), len(q), 0, grid), q)
    meta = {"format": 3, "steps": spatial.steps, "precision": 16, "context_radius": 2, "spatial_radius": 2}
    tensors = {k: v.numpy() for k, v in spatial.tensors().items()}
    save_file(tensors, str(tmp_path / "ok.safetensors"), metadata={"vitok_entropy": json.dumps(meta)})
    assert EntropyTables.load(tmp_path / "ok.safetensors").table_id == spatial.table_id
    empty = {**tensors, **{k: np.zeros((v.shape[0], 0), np.int32) for k, v in tensors.items() if k.endswith(".cdf")}}
    for name, arrays, head, why in (
            ("empty", empty, meta, "invalid CDF"), ("inf", tensors, {**meta, "spatial_radius": float("inf")}, "integers"),
            ("frac", tensors, {**meta, "spatial_radius": 2.5}, "integers"),
            ("old", tensors, {**meta, "format": 2}, "format 2 with spatial radius 2")):
        save_file(arrays, str(tmp_path / f"{name}.safetensors"), metadata={"vitok_entropy": json.dumps(head)})
        with pytest.raises(CodecError, match=f"cannot read entropy tables .*{name}.safetensors: .*{why}"):
            EntropyTables.load(tmp_path / f"{name}.safetensors")
    temporal = {"format": 3, "steps": spatial.steps, "precision": 16, "context_radius": 17}   # the same 36 rows
    save_file(tensors, str(tmp_path / "f3.safetensors"), metadata={"vitok_entropy": json.dumps(temporal)})
    with pytest.raises(CodecError, match="format 3 with spatial radius 0"):
        EntropyTables.load(tmp_path / "f3.safetensors")

def test_rd_rounding_with_spatial_contexts(smooth):
    """Rate-distortion rounding under spatio-temporal tables: wave by wave each value is costed under the table its
    chosen neighbours pick, plus what it makes its three dependents cost; fewer bits and a lower objective than
    rounding to nearest and than choosing each value alone, each value at most one step from nearest, and the decoder
    reads it as it is."""
    _, spatial, held, grid = smooth
    lam, i = 0.3, 0
    step = spatial.steps[i]
    v = held.double().numpy() / step
    nearest, rounded = spatial.quantize(held, step, i), spatial.with_rdoq(lam).quantize(held, step, i, grid=grid)
    assert np.abs(rounded - nearest).max() == 1 and (rounded != nearest).mean() > 0.05
    t, h, w = grid
    alone = np.zeros((len(v) // 120, t, h, w, 2))   # each value alone, in raster order (its neighbours come first)
    for u, k, y, x in np.ndindex(*alone.shape[:4]):
        for ch in range(2):
            x0 = v.reshape(alone.shape)[u, k, y, x, ch]
            best = None
            for cand in (np.floor(x0), np.floor(x0) + 1):
                alone[u, k, y, x, ch] = cand
                row = _spatial_rows_by_definition(alone[u:u + 1].astype(np.int64).reshape(-1, 2), grid, 2, 2)
                row = row.reshape(t, h, w, 2)[k, y, x, ch]
                cost = (x0 - cand) ** 2 + lam * spatial.tables[i].value_bits(np.array([row]), np.array([int(cand)]))[0]
                if best is None or cost < best[0]:
                    best = (cost, cand)
            alone[u, k, y, x, ch] = best[1]
    alone = alone.reshape(-1, 2).astype(np.int32)

    def objective(q):
        return ((v - q) ** 2).sum() + lam * spatial.estimate_bits(q, i, grid)

    assert objective(rounded) < objective(alone) < objective(nearest)
    assert spatial.estimate_bits(rounded, i, grid) < spatial.estimate_bits(nearest, i, grid)
    assert np.array_equal(spatial.decode(spatial.encode(rounded, i, grid), len(rounded), i, grid), rounded)


def test_recalibrating_with_rd_rounding_refits_and_keeps_the_replaced_tables(tinygrid, tmp_path, clip):
    """`calibrate_model_dir` carries a model's rd_lambda over and fits context tables to the integers that rounding
    gives (fewer bits for them than tables fitted to rounding to nearest); the tables it replaces for the same weights
    stay beside the model (streams name them), those for other weights are dropped with a warning."""
    import shutil

    import vitok
    from vitok.codecs.entropy import calibrate_model_dir, context_grid, kept_name, load_kept_tables
    from vitok.data.convert import frames_to_tensor

    d = tmp_path / "m"
    shutil.copytree(tinygrid[2], d)
    frames, _ = clip
    plain = calibrate_model_dir(d, [frames[:8]], steps=(0.5, 2.0))
    plain.with_rdoq(0.3).save(d)
    refit = calibrate_model_dir(d, [frames[:8]], steps=(0.5, 2.0))
    assert refit.rd_lambda == 0.3 and refit.table_id != plain.table_id
    assert load_kept_tables(d, plain.table_id).table_id == plain.table_id
    assert load_kept_tables(d, "../" + plain.table_id[3:]) is None and load_kept_tables(d, 7) is None
    latents = vitok.load(d).encode(frames_to_tensor(frames[:8]))
    z, grid = latents.z[0], context_grid(latents.grid, None)
    rounding = plain.with_rdoq(0.3, refit.distortion_weights)   # the same rounding under the first tables
    for i, step in enumerate(refit.steps):
        before = rounding.estimate_bits(rounding.quantize(z, step, i, grid=grid), i, grid)
        after = refit.estimate_bits(refit.quantize(z, step, i, grid=grid), i, grid)
        assert after < before, (step, after, before)
    other = load_entropy_tables(d)
    other.meta["weights_hash"] = "0" * 64   # tables fitted for other weights: no stream of these weights names them
    other.save(d)
    with pytest.warns(UserWarning, match=f"tables {other.table_id} replaced by .*no longer decode"):
        calibrate_model_dir(d, [frames[:8]], steps=(1.0,))
    assert not (d / kept_name(other.table_id)).exists()
    with pytest.raises(CodecError, match="channel contexts are for 1D models"):   # not the temporal radius replaced
        calibrate_model_dir(d, [frames[:8]], steps=(1.0,), channel_radius=2)


@pytest.fixture(scope="module")
def correlated():
    """Tokens whose 4 channels share a common factor (a 1D model's channels are far from independent), with count
    tables that have no context and tables whose channels look at an earlier one (parents picked on the data)."""
    from vitok.codecs.entropy import fit_context_tables

    g = torch.Generator().manual_seed(8)
    common = torch.randn(3000, 1, generator=g) * 3
    z = common * torch.tensor([1.0, -0.8, 0.6, 0.0]) + torch.randn(3000, 4, generator=g) * torch.tensor(
        [0.3, 0.4, 0.5, 1.0])
    zero, one = np.zeros(4, np.float32), np.ones(4, np.float32)
    units = [(z[:2400], (2400, 1, 1))]
    flat = fit_context_tables(units, steps=(0.5, 2.0), mean=zero, std=one, radius=0)
    channel = fit_context_tables(units, steps=(0.5, 2.0), mean=zero, std=one, radius=0, channel=2)
    return flat, channel, z[2400:]


def test_channel_context_tables_code_correlated_channels_in_fewer_bits(correlated, tmp_path):
    """Each channel is coded with the table its three parent channels' clipped values pick: parents are the
    earlier channels (-1 where too few), fewer bytes than the same count tables without a context, exact round trips,
    rows as defined (the first parent's digit the most significant, base 2P + 2), the parents survive save/load."""
    from safetensors import safe_open

    from vitok.codecs.entropy import channel_rows, pick_parents

    flat, channel, held = correlated
    assert channel.channel_parents[:3] == ((-1, -1, -1), (0, -1, -1), (0, 1, -1)) and channel.contexts == 216
    assert flat.contexts == 1
    for i, step in enumerate(channel.steps):
        q = channel.quantize(held, step, i)
        assert np.array_equal(flat.quantize(held, step, i), q)   # the same quantizer: only the coding differs
        data = channel.encode(q, i)
        assert np.array_equal(channel.decode(data, len(q), i), q)
        assert len(data) < 0.9 * len(flat.encode(q, i)), step
        assert abs(8 * len(data) - channel.estimate_bits(q, i)) < 0.02 * 8 * len(data) + 96
    q = channel.quantize(held[:3], 0.5, 0)

    def digit(n: int, p: int) -> int:
        return 5 if p < 0 else int(np.clip(q[n, p], -2, 2)) + 2

    rows = [((digit(n, a) * 6 + digit(n, b)) * 6 + digit(n, d)) * 4 + c for n in range(3)
            for c, (a, b, d) in enumerate(channel.channel_parents)]
    assert channel_rows(q, 2, channel.channel_parents).tolist() == rows
    three = np.stack([np.arange(50) % 7, np.arange(50) % 3, np.arange(50) % 7], 1)
    assert pick_parents(three, 3, 2) == ((-1, -1), (0, -1), (0, 1)) and pick_parents(three, 3, 1)[2] == (0,)
    wild = np.stack([np.arange(50) % 7, np.arange(50) % 7], 1)
    wild[0, 1] = 10 ** 12   # an outlier counts at the edge of what a table holds, not as a histogram that wide
    assert pick_parents(wild, 2, 1) == ((-1,), (0,))
    again = EntropyTables.load(channel.save(tmp_path / "entropy.safetensors"))
    assert (again.table_id, again.channel_radius, again.channel_parents) == (channel.table_id, 2,
                                                                             channel.channel_parents)
    with safe_open(str(tmp_path / "entropy.safetensors"), "np") as f:   # readers before channel contexts refuse it
        assert json.loads(f.metadata()["vitok_entropy"])["format"] == 4
    swapped = [ps[::-1] for ps in channel.channel_parents]
    other = EntropyTables(channel.mean, channel.std, channel.tables, channel_radius=2, channel_parents=swapped)
    assert other.table_id != channel.table_id   # the parents, in order, are part of the id
    for parents in (((0, -1),) * 4, ((-1, -1), (2, -1), (0, 1), (0, 1)), ((-1, -1), (0, -1), (0, 1)),
                    ((-1,), (0, -1), (0, 1), (0, 1))):
        with pytest.raises(ValueError, match="bad channel contexts"):
            EntropyTables(channel.mean, channel.std, channel.tables, channel_radius=2, channel_parents=parents)
    with pytest.raises(ValueError, match="bad channel contexts"):
        EntropyTables(channel.mean, channel.std, channel.tables, context_radius=2, channel_radius=2,
                      channel_parents=channel.channel_parents)
    with pytest.raises(CodecError, match="only tables with a temporal context carry"):
        channel.encode(q, 0, None, prev=np.zeros((1, 1, 1, 4)))
    from vitok.codecs.entropy import fit_context_tables

    one = np.ones(4, np.float32)
    for parents, why in (([], "4 lists of parent channels"), ([-1, 0, 0, 1], "4 lists of parent channels")):
        with pytest.raises(CodecError, match=why):
            fit_context_tables([(held, (len(held), 1, 1))], steps=(0.5,), mean=0 * one, std=one, radius=0, channel=2,
                               parents=parents)
    with pytest.raises(CodecError, match="channel radius 16 gives more than 1024 tables per channel"):
        fit_context_tables([(held, (len(held), 1, 1))], steps=(0.5,), mean=0 * one, std=one, radius=0, channel=16)


def test_rd_rounding_with_channel_contexts(correlated):
    """Rate-distortion rounding under channel contexts spends fewer bits for some squared error, and its integers
    round-trip."""
    flat, channel, held = correlated
    near, rd = channel.quantize(held, 2.0, 1), channel.with_rdoq(0.5).quantize(held, 2.0, 1)
    assert np.array_equal(channel.decode(channel.encode(rd, 1), len(rd), 1), rd)
    assert channel.estimate_bits(rd, 1) < channel.estimate_bits(near, 1)
    err = lambda q: float(((held.numpy() / 2.0 - q) ** 2).sum())   # noqa: E731 (in step units)
    assert err(near) < err(rd)


@pytest.fixture(scope="module")
def following():
    """Units of 300 tokens x 4 correlated channels, each unit the one before plus a little noise (the same tokens of
    the next chunk of a shot), and tables fitted with and without the pairs of consecutive units."""
    from vitok.codecs.entropy import fit_context_tables

    g = torch.Generator().manual_seed(9)
    start = torch.randn(300, 1, generator=g) * torch.tensor([[2.0, -1.6, 1.2, 0.5]]) + torch.randn(300, 4, generator=g)
    units = [start]
    for _ in range(7):
        units.append(units[-1] + 0.3 * torch.randn(300, 4, generator=g))
    zero, one = np.zeros(4, np.float32), np.ones(4, np.float32)
    fit = [(u, (300, 1, 1)) for u in units[:6]]
    alone = fit_context_tables(fit, steps=(0.5, 2.0), mean=zero, std=one, radius=0, channel=2)
    inter = fit_context_tables(fit, steps=(0.5, 2.0), mean=zero, std=one, radius=0, channel=2,
                               pairs=[(i, i + 1) for i in range(5)])
    return alone, inter, units[6:]


def test_inter_tables_code_the_next_chunk_as_differences_in_fewer_bits(following, tmp_path):
    """With inter tables, the tokens a prediction marks are coded as their differences from it, under rows after the
    others' (contexts from the parents' differences); round trips exact, fewer bytes than coding them alone, the
    same tables without a prediction code as before, the estimate is close, and the tables survive save/load."""
    from safetensors import safe_open

    from vitok.codecs.entropy import Prediction, channel_rows

    alone, inter, (a, b) = following
    assert alone.inter is None and inter.predicts and inter.inter_contexts == 216
    report = inter.meta["calibration"]["bits_per_symbol"]   # the calibration chunks after the first, as coded
    assert all(r["predicted_bits"] < 0.8 * r["alone_bits"] for r in report.values()), report
    assert len(inter.inter_parents) == 4 and inter.table_id != alone.table_id
    for i, step in enumerate(inter.steps):
        qa, qb = inter.quantize(a, step, i), inter.quantize(b, step, i)
        assert np.array_equal(inter.encode(qb, i), alone.encode(qb, i))   # unpredicted: the same tables, same bytes
        mask = np.arange(300) < 250   # the chunk before kept 250 tokens: the rest are coded alone
        pred = Prediction(mask, qa)
        data = inter.encode(qb, i, pred=pred)
        assert np.array_equal(inter.decode(data, 300, i, pred=pred), qb)
        assert len(data) < 0.8 * len(inter.encode(qb, i)), step
        assert abs(8 * len(data) - inter.estimate_bits(qb, i, pred=pred)) < 0.03 * 8 * len(data) + 96
    q, p = inter.quantize(b[:3], 0.5, 0), inter.quantize(a[:3], 0.5, 0)
    rows, values = inter._rows_values(q, None, None, Prediction(np.array([True, False, True]), p))
    d = np.where(np.array([True, False, True])[:, None], q - p, q)
    expect = np.where(np.repeat([True, False, True], 4), 216 * 4 + channel_rows(d, 2, inter.inter_parents),
                      channel_rows(d, 2, inter.channel_parents))
    assert rows.tolist() == expect.tolist() and values.tolist() == d.reshape(-1).tolist()
    again = EntropyTables.load(inter.save(tmp_path / "entropy.safetensors"))
    assert (again.table_id, again.inter_parents) == (inter.table_id, inter.inter_parents)
    qb = again.quantize(b, 0.5, 0)
    pred = Prediction(np.ones(300, bool), again.quantize(a, 0.5, 0))
    assert again.encode(qb, 0, pred=pred) == inter.encode(qb, 0, pred=pred)
    with safe_open(str(tmp_path / "entropy.safetensors"), "np") as f:   # readers before prediction refuse it
        assert json.loads(f.metadata()["vitok_entropy"])["format"] == 5


def test_inter_tables_refuse_what_they_cannot_code(following):
    """A difference past what the inter tables hold is told before coding (the codec then codes the chunk alone); a
    prediction for tables without inter tables, or of another length, is a CodecError; malformed inter tables are
    refused."""
    from vitok.codecs.entropy import Prediction

    alone, inter, (a, b) = following
    q = inter.quantize(b, 0.5, 0)
    far = Prediction(np.ones(300, bool), q - 10_000)
    assert not inter.can_predict(q, 0, far) and inter.can_predict(q, 0, Prediction(np.ones(300, bool), q))
    with pytest.raises(CodecError, match="out of the inter tables' range"):
        inter.encode(q, 0, pred=far)
    with pytest.raises(CodecError, match="needs tables with inter tables"):
        alone.encode(q, 0, pred=Prediction(np.ones(300, bool), q))
    with pytest.raises(CodecError, match="one mask entry and value row per token"):
        inter.decode(inter.encode(q, 0), 300, 0, pred=Prediction(np.ones(299, bool), q[:299]))
    with pytest.raises(ValueError, match="inter tables need channel contexts"):
        EntropyTables(inter.mean, inter.std, inter.tables, channel_radius=2, channel_parents=inter.channel_parents,
                      inter=inter.inter[:1], inter_parents=inter.inter_parents)
    with pytest.raises(ValueError, match="bad channel contexts"):
        EntropyTables(inter.mean, inter.std, inter.tables, channel_radius=2, channel_parents=inter.channel_parents,
                      inter=inter.inter, inter_parents=((0, -1, -1),) * 4)
