"""Quantization and entropy coding of latents with CompressAI, frozen into integer tables.

A latent ``z`` (tokens ``(N, C)``) is quantized per channel to integers ``q = round((z - mean_c) / (std_c * step))``.
Each step of an operating set gets its tables once (calibration), and only integer tables are kept
(``entropy.safetensors`` beside the model):

- Context tables (grid models' default): a value's table depends on the value one step back, clipped to a radius:
  for grid models the co-located value one latent frame back, for 1D models the previous token; grid models' tables
  also depend on the value's already coded neighbours left and above in its latent frame (spatial contexts;
  ``vitok calibrate``'s report for vitok-grid at step 0.5: 1.23 bits per value, 1.73 without them). The tables are the calibration values' histograms per context, frozen by CompressAI's
  ``pmf_to_quantized_cdf``.
- Factorized tables (``context_radius=0``, 1D models' default): one ``EntropyBottleneck`` per step fitted to the
  uniform-noise-relaxed values; its medians are rounded to integers and ``update()`` builds 16-bit CDFs. They
  decode in one call.
- 1D models also offset each token position by its own mean (``mean`` is ``(K, C)``): nested dropout ranks the
  tokens and each position settles on its own mean, so the residual costs about a fifth fewer bytes.
- Channel contexts (1D models' default): a value's table depends on the values of three earlier channels of the same
  token (its ``parents``, chosen per channel at calibration), each clipped to a radius: a 1D model's channels are far
  from independent, and a token has no neighbours in time or space to lean on instead.
- Prediction (1D models with channel contexts, when calibrated on consecutive chunks): a chunk may code each token
  the chunk before kept as the difference from that token's integers (``Prediction``), with tables of their own
  (``inter``, channel contexts among the differences): the same token of the next 20 frames of a shot changes
  little, so the difference often costs fewer bits than the value (README, "How latents become bytes").

Symbols ``q - median`` are coded with CompressAI's rANS coder using only the stored tables, so decoding never
recomputes anything from floats (CompressAI #279/#309: float-derived CDFs desynchronise across machines).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np
import torch

from vitok.codecs.errors import BitstreamError, CodecError


def _load_ans():
    """CompressAI's rANS extension. ``import compressai`` pulls in its datasets, zoo and torch_geometric (seconds);
    the coder alone is one compiled module, so load just that when possible (calibration imports the rest)."""
    import importlib.machinery
    import importlib.util
    import sys

    if "compressai.ans" not in sys.modules:
        try:
            spec = importlib.util.find_spec("compressai")
            folder = Path(spec.origin).parent
            path = next(p for p in folder.iterdir() if p.name.startswith("ans.") and p.suffix in (".so", ".pyd"))
            loader = importlib.machinery.ExtensionFileLoader("compressai.ans", str(path))
            mod_spec = importlib.util.spec_from_file_location("compressai.ans", path, loader=loader)
            module = importlib.util.module_from_spec(mod_spec)
            loader.exec_module(module)
            sys.modules["compressai.ans"] = module
        except (ImportError, StopIteration, AttributeError, TypeError, OSError):
            _import_compressai()
    return sys.modules["compressai.ans"]


def _import_compressai():
    """CompressAI's EntropyBottleneck and pmf_to_quantized_cdf (the whole package: seconds)."""
    with warnings.catch_warnings():  # compressai's import touches torch.jit.script, which warns on new torch
        warnings.simplefilter("ignore", FutureWarning)
        import compressai.ans  # noqa: F401
        from compressai._CXX import pmf_to_quantized_cdf
        from compressai.entropy_models import EntropyBottleneck
    return EntropyBottleneck, pmf_to_quantized_cdf


_ans = _load_ans()
RansEncoder, RansDecoder = _ans.RansEncoder, _ans.RansDecoder

STEPS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
MAX_CLIPPED = 1e-3   # share of values a step finer than every table's may push past the range (clamped) before
                     # quantize refuses it; at the calibrated steps outliers clamp as they are
DEFAULT_STEP = 0.5
PRECISION = 16  # CompressAI's rANS probability precision (bits)
ESCAPE_RANGE = 120  # beyond a table's range by more than this, values clamp: every symbol stays under 32 bits
MIN_SYMBOLS = 32  # CompressAI's encoder buffer holds one 32-bit word per symbol: short streams are padded
MAX_TABLE_HALF = 4096  # cap on a table's half-width (bins)
CONTEXT_RADIUS = 5  # a value's table depends on the value one step back (latent frame or token), clipped to +-5
SPATIAL_RADIUS = 6  # ... and (grid models) on the mean of its left and upper neighbours, clipped to +-6
CHANNEL_RADIUS = 2  # 1D models: a value's table depends on earlier channels of its token, each clipped to +-2
CHANNEL_PARENTS = 3  # ... three of them
MAX_CHANNEL_CONTEXTS = 1024  # (2P + 2)^k tables per channel at most: tables grow with that power
CONTEXT_PRIOR = 16.0  # pseudo-counts of the channel's histogram in each context's histogram (rare contexts)
TAIL_MASS = 1e-9  # probability left for the escape symbol of count-based tables
FILENAME = "entropy.safetensors"
Grids = Union[tuple[int, int, int], Sequence[tuple[int, int, int]], None]  # one unit grid for all, or one per unit
UnitTokens = Union[int, Sequence[int], None]  # tokens every unit keeps (None: all), or one count per unit
FORMAT_VERSION = 5  # 5: prediction (inter) tables, 4: channel contexts, 3: spatial contexts (each written only for
                    # them, so readers before them refuse such tables by their format); 2: per-position offsets
                    # (``mean`` (K, C)) and temporal contexts; 1 is still read


@dataclass(frozen=True)
class Prediction:
    """The integers a chunk's tokens are predicted with from the chunk before (1D models): ``mask`` ``(N,)`` marks
    the tokens predicted, ``values`` ``(N, C)`` their predictions (rows of tokens not predicted are ignored). A
    predicted token's values are coded as ``q - values`` with the inter tables."""

    mask: np.ndarray
    values: np.ndarray

    def for_units(self, keep: np.ndarray, counts: Sequence[int]) -> "Prediction":
        """This prediction for the units ``keep`` marks alone (``counts``: the tokens of each unit, in order)."""
        return Prediction(self.mask & np.repeat(keep, counts), self.values)


@dataclass
class StepTable:
    """Integer rANS tables for one quantization step: per channel CDF, its length, offset and integer median."""

    step: float
    cdf: np.ndarray  # int32 (C, L)
    cdf_length: np.ndarray  # int32 (C,)
    offset: np.ndarray  # int32 (C,)
    median: np.ndarray  # int32 (C,)
    _lists: tuple | None = field(default=None, init=False, repr=False, compare=False)   # built from the tables
    _bits: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)   # once, on first use

    def coder_args(self) -> tuple[list[list[int]], list[int], list[int]]:
        """The tables as the Python lists CompressAI's coder takes (built once)."""
        if self._lists is None:
            self._lists = (self.cdf.tolist(), self.cdf_length.tolist(), self.offset.tolist())
        return self._lists

    def value_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per table row the smallest and largest integer ``q`` that can be coded (in-table values plus escapes);
        the rows of one channel share them, so the first C rows are the channels'."""
        lo = self.median + self.offset - ESCAPE_RANGE
        hi = self.median + self.offset + (self.cdf_length - 2) + ESCAPE_RANGE
        return lo.astype(np.int64), hi.astype(np.int64)

    def value_bits(self, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Bits coding each integer ``q`` with its table row ``rows`` (same shapes): in-table values at their
        probability, escapes at the escape symbol's cost plus the raw bits CompressAI writes after it."""
        v = np.asarray(q, np.int64) - self.median[rows] - self.offset[rows]
        width = self.cdf_length[rows] - 2
        inside = (v >= 0) & (v < width)
        bits = self.bit_costs()[rows, np.where(inside, v, width)]
        if inside.all():
            return bits
        raw = np.where(inside, 0, np.where(v < 0, -2 * v - 1, 2 * (v - width)))
        nibbles = np.ceil(np.log2(raw + 1) / 4).astype(np.int64)
        return bits + np.where(inside, 0, 4 * (nibbles + nibbles // 15 + 1))

    def bit_costs(self) -> np.ndarray:
        """Bits per in-table value ``(rows, L-2)`` and the escape cost in column ``L-2`` (without its raw bits);
        computed once."""
        if self._bits is None:
            freq = np.diff(self.cdf.astype(np.float64), axis=1)
            mask = np.arange(freq.shape[1])[None, :] < (self.cdf_length - 1)[:, None]
            self._bits = np.where(mask, PRECISION - np.log2(np.maximum(freq, 1)), np.inf)
        return self._bits


class EntropyTables:
    """The frozen entropy model of one tokenizer: quantizer offset ``mean`` (per channel ``(C,)``, or per token
    position and channel ``(K, C)`` for 1D models), per-channel scale ``std``, and one ``StepTable`` per step.

    With ``context_radius`` R > 0 each step holds ``2R + 2`` tables per channel, row ``ctx * C + c``: in units of a
    grid ``(t, h, w)`` a value at ``t > 0`` is coded with context ``clip(q[t-1], -R, R) + R`` (the co-located value of
    the same channel one step back), values at ``t = 0`` with context ``2R + 1``. Grid models step along latent
    frames, 1D models along tokens (grid ``(tokens, 1, 1)``, see ``context_grid``). With ``spatial_radius`` S > 0
    too, each temporal context splits into ``2S + 2`` by the value's left and upper neighbours in its frame
    (``context_index``): ``(2R + 2)(2S + 2)`` tables per channel, values coded in waves (``waves``). With a
    ``channel_radius`` P > 0 instead (no temporal context), ``(2P + 2)^k`` tables per channel for ``k`` parents each:
    channel ``c`` of a token is coded with the context its parents ``parents[c]`` (earlier channels, or -1 for none)
    give, each ``clip(q[p], -P, P) + P`` or ``2P + 1`` (``parent_context``); values are coded channel by channel.
    Channel-context tables may also hold ``inter`` tables (one ``StepTable`` per step, parents ``inter_parents``) for
    the tokens a chunk predicts from the chunk before (``Prediction``): they code ``q - prediction``, with contexts
    from the parent channels' differences; their rows follow the others' in coding.
    """

    channel_radius, channel_parents, inter, inter_parents = 0, None, None, None   # tables pickled before lack them

    def __init__(self, mean: np.ndarray, std: np.ndarray, tables: list[StepTable], meta: dict[str, Any] | None = None,
                 context_radius: int = 0, spatial_radius: int = 0, channel_radius: int = 0,
                 channel_parents: Sequence[Sequence[int]] | None = None, inter: list[StepTable] | None = None,
                 inter_parents: Sequence[Sequence[int]] | None = None):
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.tables = tables
        self.meta = dict(meta or {})
        self.context_radius = int(context_radius)
        self.spatial_radius = int(spatial_radius)
        self.channel_radius = int(channel_radius)
        self.channel_parents = _parents(channel_parents)
        self.inter = None if inter is None else list(inter)
        self.inter_parents = _parents(inter_parents)
        self._validate()
        self.table_id = self._digest()

    @property
    def channels(self) -> int:
        return int(self.std.shape[0])

    @property
    def contexts(self) -> int:
        """Tables per channel and step: 1, ``2R + 2`` with a temporal context, ``(2R + 2)(2S + 2)`` with a spatial
        one too, ``(2P + 2)^k`` with a channel context of ``k`` parents."""
        parents = len(self.channel_parents[0]) if self.channel_parents else 0
        return context_count(self.context_radius) * context_count(self.spatial_radius) * \
            context_count(self.channel_radius) ** parents

    @property
    def inter_contexts(self) -> int:
        """Inter tables per channel and step (0: no inter tables)."""
        return context_count(self.channel_radius) ** len(self.inter_parents[0]) if self.inter else 0

    @property
    def predicts(self) -> bool:
        """Whether these tables code tokens predicted from the chunk before (``Prediction``)."""
        return bool(self.inter)

    def _coding_table(self, index: int) -> StepTable:
        """Step ``index``'s table as the coder sees it: with inter tables, their rows after the others'."""
        if not self.inter:
            return self.tables[index]
        cache = self.__dict__.setdefault("_merged", {})
        if index not in cache:
            a, b = self.tables[index], self.inter[index]
            cdf = np.zeros((len(a.cdf) + len(b.cdf), max(a.cdf.shape[1], b.cdf.shape[1])), np.int32)
            cdf[:len(a.cdf), :a.cdf.shape[1]], cdf[len(a.cdf):, :b.cdf.shape[1]] = a.cdf, b.cdf
            cache[index] = StepTable(a.step, cdf, *(np.concatenate([getattr(a, k), getattr(b, k)])
                                                    for k in ("cdf_length", "offset", "median")))
        return cache[index]

    @property
    def unit_tokens(self) -> int | None:
        """K when the offset is per token position (1D models), else None."""
        return int(self.mean.shape[0]) if self.mean.ndim == 2 else None

    @property
    def steps(self) -> list[float]:
        return [t.step for t in self.tables]

    @property
    def rd_lambda(self) -> float:
        """The encoder's rate-distortion trade in its rounding (0: round to nearest): each value rounds down or up,
        whichever costs less ``w * error**2 + lambda * bits`` (error in steps, ``w`` the channel's
        ``distortion_weights``, bits under the table the value is coded with, its context included; with contexts
        plus the least each value whose table depends on this choice then costs: the next along ``t``, and with
        spatial contexts the one below and the one to the right too). Set per
        model by ``tools/rdoq.py``, which measures what it saves; decoders dequantize the integers as they are."""
        return float(self.meta.get("rd_lambda", 0.0))

    @property
    def distortion_weights(self) -> np.ndarray:
        """Per channel, what a quantization error of one step costs in pixels relative to the other channels (mean
        1; ``vitok.codecs.distortion``); all ones when not measured."""
        w = self.meta.get("distortion_weights")
        return np.ones(self.channels) if w is None else np.asarray(w, np.float64)

    @property
    def encoder_setting(self) -> str:
        """The rounding these tables make the encoder do, for a codec's identity: '' (nearest) or
        ``rd<lambda>-<weights digest>``."""
        if not self.rd_lambda:
            return ""
        setting = [repr(self.rd_lambda), self.distortion_weights.round(4).tolist()]
        return f"rd{self.rd_lambda:g}-{hashlib.sha256(json.dumps(setting).encode()).hexdigest()[:8]}"

    def with_rdoq(self, rd_lambda: float, weights: Sequence[float] | None = None) -> "EntropyTables":
        """These tables coding with ``rd_lambda`` and per-channel ``weights`` (None: every weight 1, whatever these
        tables held); the same tables and id; values they cannot use are a CodecError."""
        out = copy.copy(self)
        out.meta = {k: v for k, v in self.meta.items() if k not in ("distortion_weights", "deadzone")}
        out.meta["rd_lambda"] = rd_lambda
        if weights is not None:
            out.meta["distortion_weights"] = [round(float(x), 4) for x in weights]
        try:
            out._validate()
        except (ValueError, TypeError) as e:
            raise CodecError(str(e)) from None
        return out

    def table_index(self, step: float) -> int:
        """The table calibrated for the step nearest to ``step`` (in log scale); coding stays exact for any step."""
        if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
            raise CodecError(f"quantization step must be a positive number, got {step!r}")
        return int(np.argmin([abs(math.log(step / s)) for s in self.steps]))

    # quantization -----------------------------------------------------------------------------------------
    def quantize(self, z: torch.Tensor | np.ndarray, step: float, index: int | None = None,
                 tokens: UnitTokens = None, grid: Grids = None, prev: np.ndarray | None = None) -> np.ndarray:
        """Latent tokens ``(N, C)`` -> int32 ``(N, C)``, clamped to what the step's table can code (a step finer than
        every table's that would clamp more than ``MAX_CLIPPED`` of them is refused). ``tokens``: for
        per-position tables, the tokens each unit keeps (rows are units of that many, in order; default K), or one
        count per unit. ``grid``: the units' grid as for ``encode``, which ``rd_lambda`` with temporal contexts
        needs (a value's bits depend on the value one step back); ``prev`` as for ``encode``."""
        table = self.tables[self.table_index(step) if index is None else index]
        z = z.detach().cpu().double().numpy() if isinstance(z, torch.Tensor) else np.asarray(z, np.float64)
        if z.ndim != 2 or z.shape[1] != self.channels:
            raise CodecError(f"latents must be (N, {self.channels}), got {z.shape}")
        v = np.nan_to_num((z - self.offsets(z.shape[0], tokens)) / (self.std.astype(np.float64) * step))
        lo, hi = self._channel_range(table)
        y = self._rd_round(v, table, grid, lo, hi, self._carry(prev)) if self.rd_lambda else np.rint(v)
        # the share past the range, before any clamp (spatial rounding clamps as it goes: its contexts need it)
        clipped = float(((v < lo - 0.5) | (v > hi + 0.5)).mean()) if v.size and step < min(self.steps) else 0.0
        if clipped > MAX_CLIPPED:   # a step far finer than the tables': quality would fall as the bytes grow
            raise CodecError(f"quantization step {step:g} is too fine for these entropy tables (calibrated for steps "
                             f"{min(self.steps):g} to {max(self.steps):g}): {clipped:.1%} of the latent values fall "
                             f"outside what they code; use a coarser step")
        return np.clip(y, lo, hi).astype(np.int32)

    def _rd_round(self, v: np.ndarray, table: StepTable, grid: Grids, lo: np.ndarray, hi: np.ndarray,
                  prev: np.ndarray | None = None) -> np.ndarray:
        """Rate-distortion rounding of ``v`` (N, C) in step units (see ``rd_lambda``); with temporal contexts one
        step along ``t`` at a time, each value costed under the table the value before it picks, plus what its choice
        makes the next value cost (the cheaper of that value's two options under the table the choice picks)."""
        c, radius = self.channels, self.context_radius
        weights, lam = self.distortion_weights, self.rd_lambda

        base, width = (table.median + table.offset)[:c], (table.cdf_length - 2)[:c]   # shared by a channel's rows

        def options(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """The integer below each value, and what it and the one above cost ``(2, *x.shape)``."""
            low = np.floor(x)
            rows = np.broadcast_to(rows, x.shape)
            col = low.astype(np.int64) - base
            if ((col >= 0) & (col < width - 1)).all():   # both inside their tables: bits straight from the CDFs
                bits = table.bit_costs()
                return low, np.stack([weights * (x - low) ** 2 + lam * bits[rows, col],
                                      weights * (x - (low + 1)) ** 2 + lam * bits[rows, col + 1]])
            return low, np.stack([weights * (x - y) ** 2 + lam * table.value_bits(
                rows, np.clip(y, lo, hi).astype(np.int64)) for y in (low, low + 1)])

        def rows_after(y: np.ndarray) -> np.ndarray:
            return (np.clip(np.clip(y, lo, hi), -radius, radius).astype(np.int64) + radius) * c + np.arange(c)

        if self.channel_radius:
            return self._rd_round_channels(v, table, lo, hi)
        if self.contexts == 1:
            low, cost = options(v, np.arange(c))
            return low + (cost[1] < cost[0])
        if self.spatial_radius:
            return self._rd_round_waves(v, grid, lo, hi, options, prev)
        y, start, unit = np.empty_like(v), 0, 0
        for t, h, w, count in unit_runs(len(v), grid):
            rest = h * w
            n = count * t * rest
            block, out = v[start:start + n].reshape(count, t, rest, c), y[start:start + n].reshape(count, t, rest, c)
            before = _units(prev, unit, count, h, w, c)
            rows = (np.full((count, rest, c), 2 * radius + 1) * c + np.arange(c) if before is None   # its own table
                    else rows_after(before.reshape(count, rest, c)))
            for i in range(t):
                low, cost = options(block[:, i], rows)
                if i + 1 < t:
                    cost = cost + np.stack([options(block[:, i + 1], rows_after(choice))[1].min(0)
                                            for choice in (low, low + 1)])
                out[:, i] = low + (cost[1] < cost[0])
                rows = rows_after(out[:, i])
            start, unit = start + n, unit + count
        return y

    def _rd_round_channels(self, v: np.ndarray, table: StepTable, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """``_rd_round`` with channel contexts: channel by channel in coding order, each value costed under the table
        its parent channels' chosen values pick (what the choice makes a child channel cost is left out)."""
        c, radius, weights, lam = self.channels, self.channel_radius, self.distortion_weights, self.rd_lambda
        y = np.zeros_like(v)
        for ch, parents in enumerate(self.channel_parents):
            rows, x = parent_context(y, radius, parents).astype(np.int64) * c + ch, v[:, ch]
            low = np.floor(x)
            cost = [weights[ch] * (x - y_) ** 2 + lam * table.value_bits(rows, np.clip(y_, lo[ch], hi[ch]).astype(
                np.int64)) for y_ in (low, low + 1)]
            y[:, ch] = np.clip(low + (cost[1] < cost[0]), lo[ch], hi[ch])
        return y

    def _rd_round_waves(self, v: np.ndarray, grid: Grids, lo: np.ndarray, hi: np.ndarray,
                        options: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                        prev: np.ndarray | None = None) -> np.ndarray:
        """``_rd_round`` with spatial contexts: wave by wave in coding order, each value costed under the table its
        decided neighbours pick, then chosen again adding what it makes its three dependents cost (the next value
        along t, the one below and the one to the right: the cheaper of their two options under the table the choice
        picks, their other neighbours in this wave as first chosen)."""
        c, radius, spatial = self.channels, self.context_radius, self.spatial_radius
        y, start, unit = np.empty_like(v), 0, 0
        for t, h, w, units in unit_runs(len(v), grid):
            size = units * t * h * w
            block = v[start:start + size].reshape(units, t, h, w, c)
            out = np.zeros(block.shape)   # the chosen integers, clamped as the decoder will see them
            before = _units(prev, unit, units, h, w, c)

            def rows(near: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
                return context_index(near, radius, spatial) * c + np.arange(c)

            for (i, y_, x), (src, j, yy, xx, which) in zip(waves(t, h, w), wave_dependents(t, h, w)):
                low, cost = options(block[:, i, y_, x], rows(neighbours(out, i, y_, x, before)))
                out[:, i, y_, x] = np.clip(low + (cost[1] < cost[0]), lo, hi)
                if len(src):
                    nxt, near = block[:, j, yy, xx], neighbours(out, j, yy, xx, before)
                    for k, choice in enumerate((low, low + 1)):   # the value being chosen, as that neighbour of each
                        me = np.clip(choice[:, src], lo, hi)
                        swapped = {key: (np.where(is_me, me, near[key][0]), near[key][1] | is_me)
                                   for key, is_me in zip(NEIGHBOURS, which)}
                        np.add.at(cost[k], (slice(None), src), options(nxt, rows(swapped))[1].min(0))
                    out[:, i, y_, x] = np.clip(low + (cost[1] < cost[0]), lo, hi)
            y[start:start + size] = out.reshape(-1, c)
            start, unit = start + size, unit + units
        return y

    def dequantize(self, q: np.ndarray, step: float, tokens: UnitTokens = None) -> torch.Tensor:
        """int ``(N, C)`` -> float32 latents ``(N, C)`` (``tokens`` as for ``quantize``)."""
        q = np.asarray(q, np.float64)
        z = q * (self.std.astype(np.float64) * float(step)) + self.offsets(q.shape[0], tokens)
        return torch.from_numpy(z.astype(np.float32))

    def offsets(self, rows: int, tokens: UnitTokens = None) -> np.ndarray:
        """The quantizer offset of each of ``rows`` tokens, ``(rows, C)`` float64 (see ``row_offsets``)."""
        return row_offsets(self.mean, rows, tokens)

    # entropy coding ---------------------------------------------------------------------------------------
    def encode(self, q: np.ndarray, index: int, grid: Grids = None, prev: np.ndarray | None = None,
               pred: Prediction | None = None) -> bytes:
        """rANS-code int32 ``(N, C)`` with table ``index``; decodable knowing only ``N``, the unit ``grid``
        ``(t, h, w)`` (needed with a temporal context: ``q`` is whole units of it, in order) and the tables. ``prev``
        (temporal contexts): the previous chunk's last latent frames (``carried_frame``), the first frame's
        temporal neighbours instead of its own table. ``pred``: the tokens coded as differences from a prediction
        (inter tables; ``can_predict`` tells whether their differences fit them)."""
        table = self._coding_table(index)
        q = np.asarray(q)
        lo, hi = self._channel_range(self.tables[index])
        if q.ndim != 2 or q.shape[1] != self.channels or (q < lo).any() or (q > hi).any():
            raise CodecError("symbols out of the coder's range: quantize with the same tables")
        idx, v = self._rows_values(q, grid, prev, pred)
        if pred is not None and not self._in_range(table, idx, v):
            raise CodecError("predicted symbols out of the inter tables' range: code the chunk without prediction")
        sym = v - table.median[idx]
        if self.spatial_radius:   # coded in waves, the order the decoder can rebuild the contexts in
            order = stream_order(len(q), grid, self.channels)
            idx, sym = idx[order], sym[order]
        elif self.channel_radius:   # channel by channel: a parent before its children
            idx, sym = (a.reshape(len(q), self.channels).T.reshape(-1) for a in (idx, sym))
        pad = np.arange(max(MIN_SYMBOLS - sym.size, 0)) % self.channels  # the coder's minimum: zero symbols
        cdfs, lengths, offsets = table.coder_args()
        return RansEncoder().encode_with_indexes(np.concatenate([sym, 0 * pad]).tolist(),
                                                 np.concatenate([idx, pad]).tolist(), cdfs, lengths, offsets)

    def decode(self, data: bytes, n: int, index: int, grid: Grids = None, prev: np.ndarray | None = None,
               pred: Prediction | None = None) -> np.ndarray:
        """Inverse of ``encode``: ``n`` tokens -> int32 ``(n, C)``; corrupt data gives a BitstreamError."""
        table = self._coding_table(index)
        prev = self._carry(prev)
        self._check_prediction(pred, n)
        c = self.channels
        count = max(n * c, MIN_SYMBOLS)
        cdfs, lengths, offsets = table.coder_args()
        decoder = RansDecoder()
        # The coder does not bounds-check its reads: zero padding keeps a corrupt stream inside the buffer.
        decoder.set_stream(bytes(data) + bytes(8 * count + 4096))

        def read(rows: np.ndarray) -> np.ndarray:
            used, local = np.unique(rows, return_inverse=True)
            if 2 * len(used) < len(cdfs):   # the coder converts every table it is handed, on every call
                sym = decoder.decode_stream(local.tolist(), [cdfs[r] for r in used], [lengths[r] for r in used],
                                            [offsets[r] for r in used])
            else:
                sym = decoder.decode_stream(rows.tolist(), cdfs, lengths, offsets)
            return np.asarray(sym, np.int64) + table.median[rows]

        if self.spatial_radius and n:
            parts, unit = [], 0
            for t, h, w, units in unit_runs(n, grid):
                part, before = np.zeros((units, t, h, w, c), np.int64), _units(prev, unit, units, h, w, c)
                for i, y, x in waves(t, h, w):   # a wave's contexts come from the waves before it
                    rows = context_index(neighbours(part, i, y, x, before), self.context_radius, self.spatial_radius)
                    part[:, i, y, x] = read((rows * c + np.arange(c)).reshape(-1)).reshape(units, len(i), c)
                parts.append(part.reshape(-1, c))
                unit += units
            q = np.concatenate(parts)
        elif self.context_radius and n:
            parts, unit, r = [], 0, self.context_radius
            for t, h, w, units in unit_runs(n, grid):
                rest = h * w
                part = np.empty((units, t, rest, c), np.int64)
                before = _units(prev, unit, units, h, w, c)
                for u in range(units):  # step by step along t: each step's contexts come from the last
                    ctx = np.full((rest, c), self.contexts - 1) if before is None else \
                        np.clip(before[u].reshape(rest, c), -r, r) + r
                    for k in range(t):
                        part[u, k] = read((ctx * c + np.arange(c)).reshape(-1)).reshape(rest, c)
                        ctx = np.clip(part[u, k], -r, r) + r
                parts.append(part.reshape(-1, c))
                unit += units
            q = np.concatenate(parts)
        elif self.channel_radius and n:
            v, r = np.zeros((n, c), np.int64), self.channel_radius
            for ch, parents in enumerate(self.channel_parents):   # contexts from the parents' values, decoded before
                rows = parent_context(v, r, parents) * c + ch
                if pred is not None:   # predicted tokens: differences, under the inter tables
                    rows = np.where(pred.mask, (self.contexts + parent_context(v, r, self.inter_parents[ch])) * c + ch,
                                    rows)
                v[:, ch] = read(rows)
            q = v if pred is None else np.where(pred.mask[:, None], v + pred.values, v)
        else:
            q = read(np.tile(np.arange(c), n)).reshape(n, c)
        pad = np.arange(count - n * c) % c
        lo, hi = self._channel_range(self.tables[index])
        if (q < lo).any() or (q > hi).any() or (read(pad) != table.median[pad]).any():
            raise BitstreamError("entropy-coded data decodes to out-of-range values (corrupt stream)")
        return q.astype(np.int32)

    def estimate_bits(self, q: np.ndarray, index: int, grid: Grids = None, prev: np.ndarray | None = None,
                      pred: Prediction | None = None) -> float:
        """Ideal code length in bits of ``q`` under the table's probabilities (the entropy model's likelihoods)."""
        rows, v = self._rows_values(np.asarray(q), grid, prev, pred)
        return float(self._coding_table(index).value_bits(rows, v).sum())

    def value_costs(self, q: np.ndarray, index: int, grid: Grids = None, pred: Prediction | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Per value of ``q`` (flattened, token-major): the bits ``estimate_bits`` sums, and whether the coded
        integer (with ``pred``, a predicted token's difference) lies in its table row's range."""
        rows, v = self._rows_values(np.asarray(q), grid, None, pred)
        table = self._coding_table(index)
        lo, hi = table.value_range()
        return table.value_bits(rows, v), (v >= lo[rows]) & (v <= hi[rows])

    def can_predict(self, q: np.ndarray, index: int, pred: Prediction) -> bool:
        """Whether ``q``'s predicted tokens' differences from ``pred`` fit the inter tables of step ``index``."""
        rows, v = self._rows_values(np.asarray(q), None, None, pred)
        return self._in_range(self._coding_table(index), rows, v)

    def table_rows(self, q: np.ndarray, grid: Grids = None, prev: np.ndarray | None = None) -> np.ndarray:
        """The table row coding each value of ``q`` ``(N, C)``, flattened (see ``table_rows``)."""
        if self.channel_radius:
            self._carry(prev)
            return channel_rows(q, self.channel_radius, self.channel_parents)
        return table_rows(q, grid, self.context_radius, self.spatial_radius, self._carry(prev))

    def _rows_values(self, q: np.ndarray, grid: Grids, prev: np.ndarray | None, pred: Prediction | None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The row and the integer coded for each value of ``q`` (flattened): the value itself, or for a predicted
        token its difference from the prediction, under the inter rows (after the others)."""
        v = np.asarray(q, np.int64)
        if pred is None:
            return self.table_rows(v, grid, prev), v.reshape(-1)
        self._check_prediction(pred, len(v))
        v = np.where(pred.mask[:, None], v - pred.values, v)
        inter = self.contexts * self.channels + channel_rows(v, self.channel_radius, self.inter_parents)
        rows = np.where(np.repeat(pred.mask, self.channels), inter, self.table_rows(v, grid, prev))
        return rows, v.reshape(-1)

    def _check_prediction(self, pred: Prediction | None, n: int) -> None:
        if pred is not None and (not self.inter or pred.mask.shape != (n,) or pred.values.shape != (n, self.channels)):
            raise CodecError("a prediction needs tables with inter tables and one mask entry and value row per token")

    @staticmethod
    def _in_range(table: StepTable, rows: np.ndarray, v: np.ndarray) -> bool:
        lo, hi = table.value_range()
        return bool(((v >= lo[rows]) & (v <= hi[rows])).all())

    def _carry(self, prev: np.ndarray | None) -> np.ndarray | None:
        """``prev`` where these tables have a temporal context to carry it in; refused for others."""
        if prev is not None and not self.context_radius:
            raise CodecError("only tables with a temporal context carry the previous chunk's last frame")
        return prev

    def _channel_range(self, table: StepTable) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = table.value_range()
        return lo[: self.channels], hi[: self.channels]

    # storage ----------------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"mean": torch.from_numpy(self.mean.copy()), "std": torch.from_numpy(self.std.copy())}
        for kind, tables in (("step", self.tables), ("inter", self.inter or [])):
            for i, t in enumerate(tables):
                for key in ("cdf", "cdf_length", "offset", "median"):
                    out[f"{kind}{i}.{key}"] = torch.from_numpy(np.ascontiguousarray(getattr(t, key), np.int32))
        return out

    def save(self, path: str | Path) -> Path:
        """Write ``entropy.safetensors`` (int32 tables, float32 scale, JSON metadata) atomically."""
        from vitok.data.atomic import atomic_path, save_safetensors

        path = Path(path)
        path = path / FILENAME if path.is_dir() else path
        meta = {**self.meta, "format": 5 if self.inter else 4 if self.channel_radius else 3 if self.spatial_radius
                else 2,
                "steps": self.steps, "precision": PRECISION, "table_id": self.table_id,
                "context_radius": self.context_radius,
                **({"spatial_radius": self.spatial_radius} if self.spatial_radius else {}),
                **({"channel_radius": self.channel_radius,
                    "channel_parents": [list(ps) for ps in self.channel_parents]} if self.channel_radius else {}),
                **({"inter_parents": [list(ps) for ps in self.inter_parents]} if self.inter else {})}
        with atomic_path(path) as tmp:
            save_safetensors(self.tensors(), tmp, metadata={"vitok_entropy": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EntropyTables":
        """Read tables written by ``save``; a malformed file is a CodecError naming it."""
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["vitok_entropy"])
                t = {k: f.get_tensor(k).numpy() for k in f.keys()}
            if meta.get("format") not in (1, 2, 3, 4, FORMAT_VERSION) or meta.get("precision") != PRECISION:
                raise ValueError(f"unsupported format {meta.get('format')} / precision {meta.get('precision')}")
            channel, parents = meta.get("channel_radius", 0), meta.get("channel_parents")
            inter_parents = meta.get("inter_parents")

            def step_tables(kind: str) -> list[StepTable]:
                return [StepTable(float(s), *(t[f"{kind}{i}.{k}"].astype(np.int32)
                                              for k in ("cdf", "cdf_length", "offset", "median")))
                        for i, s in enumerate(meta["steps"])]

            for ps in (parents, inter_parents):
                if ps is not None and not (isinstance(ps, list) and all(
                        isinstance(p, list) and all(type(x) is int for x in p) for p in ps)):
                    raise ValueError(f"channel parents must be a list of lists of integers, got {repr(ps)[:40]}")
            tables, inter = step_tables("step"), step_tables("inter") if inter_parents is not None else None
            radius, spatial = meta.get("context_radius", 0), meta.get("spatial_radius", 0)
            if any(type(r) is not int for r in (radius, spatial)):
                raise ValueError(f"context radii must be integers, got {radius!r} and {spatial!r}")
            if (meta["format"] == 3) != (spatial > 0):
                raise ValueError(f"format {meta['format']} with spatial radius {spatial} (format 3 is for tables "
                                 f"with spatial contexts)")
            if type(channel) is not int:
                raise ValueError(f"channel contexts must have an integer radius, got {channel!r}")
            if (meta["format"] in (4, 5)) != (channel > 0) or (meta["format"] == 5) != (inter_parents is not None):
                raise ValueError(f"format {meta['format']} with channel radius {channel} and "
                                 f"{'' if inter_parents else 'no '}inter tables (format 4 is for tables with channel "
                                 f"contexts, 5 for those with inter tables too)")
            if "deadzone" in meta and "rd_lambda" not in meta:
                warnings.warn(f"{path}: 'deadzone' (an earlier vitok's rounding) is no longer used: these tables round "
                              f"to nearest; set rate-distortion rounding with tools/rdoq.py --write", stacklevel=2)
            meta = {k: v for k, v in meta.items() if k not in ("format", "steps", "precision", "table_id",
                                                               "context_radius", "spatial_radius", "channel_radius",
                                                               "channel_parents", "inter_parents")}
            return cls(t["mean"], t["std"], tables, meta, context_radius=radius, spatial_radius=spatial,
                       channel_radius=channel, channel_parents=parents, inter=inter,
                       inter_parents=inter_parents)
        except (OSError, SafetensorError, KeyError, ValueError, TypeError, OverflowError, json.JSONDecodeError) as e:
            raise CodecError(f"cannot read entropy tables {path}: {e}") from None
        except RecursionError:
            raise CodecError(f"cannot read entropy tables {path}: metadata nested too deeply") from None

    def _validate(self) -> None:
        """Reject tables the C++ coder would index out of bounds with (it checks nothing itself)."""
        if self.std.ndim != 1 or self.mean.ndim not in (1, 2):
            raise ValueError("entropy tables: bad mean/std shapes")
        c = self.channels
        if self.mean.shape not in ((c,), (self.mean.shape[0], c)) or \
                not self.mean.shape[0] or not np.isfinite(self.mean).all() or not (self.std > 0).all() or \
                not self.tables:
            raise ValueError("entropy tables: bad mean/std or no step tables")
        if not 0 <= self.context_radius <= 64:
            raise ValueError(f"entropy tables: bad context radius {self.context_radius}")
        if not 0 <= self.spatial_radius <= 64 or (self.spatial_radius and not self.context_radius):
            raise ValueError(f"entropy tables: bad spatial radius {self.spatial_radius} (it needs a context radius)")
        for parents in (self.channel_parents, self.inter_parents):
            if parents is None:
                continue
            if not 0 < self.channel_radius <= 64 or self.context_radius or len(parents) != c or \
                    len({len(ps) for ps in parents}) != 1 or not 1 <= len(parents[0]) <= 3 or \
                    context_count(self.channel_radius) ** len(parents[0]) > MAX_CHANNEL_CONTEXTS or \
                    any(not -1 <= p < i for i, ps in enumerate(parents) for p in ps):
                raise ValueError(f"entropy tables: bad channel contexts (radius {self.channel_radius}, parents "
                                 f"{parents}): every channel has the same number (1 to 3) of parents, each -1 or an "
                                 f"earlier channel, at most {MAX_CHANNEL_CONTEXTS} contexts, without a temporal "
                                 f"context")
        if not 0 <= self.channel_radius <= 64 or (self.channel_radius > 0) != (self.channel_parents is not None):
            raise ValueError(f"entropy tables: channel radius {self.channel_radius} with parents "
                             f"{self.channel_parents}")
        if (self.inter is not None) != (self.inter_parents is not None) or (self.inter is not None and (
                not self.channel_radius or [t.step for t in self.inter] != self.steps)):
            raise ValueError("entropy tables: inter tables need channel contexts, their parents and one table per "
                             "step, at the same steps")
        lam = self.meta.get("rd_lambda", 0.0)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam <= 100:
            raise ValueError(f"entropy tables: rd_lambda must be a number in [0, 100], got {repr(lam)[:40]}")
        w = self.meta.get("distortion_weights")
        if w is not None and not (isinstance(w, list) and len(w) == c and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1e6 for x in w) and sum(w) > 0):
            raise ValueError(f"entropy tables: distortion_weights must be {c} numbers in [0, 1e6), not all 0")
        for t, contexts in [(t, self.contexts) for t in self.tables] + [(t, self.inter_contexts)
                                                                        for t in self.inter or []]:
            rows = c * contexts
            if t.cdf.ndim != 2 or t.cdf.shape[0] != rows or any(a.shape != (rows,) for a in (t.cdf_length, t.offset,
                                                                                           t.median)):
                raise ValueError(f"entropy tables: bad shapes for step {t.step}")
            if not (math.isfinite(t.step) and t.step > 0) or (t.offset > 0).any():
                raise ValueError(f"entropy tables: bad step/offset for step {t.step}")
            shared = [a.reshape(contexts, c) for a in (t.cdf_length, t.offset, t.median)]
            if any((a != a[:1]).any() for a in shared):
                raise ValueError(f"entropy tables: the contexts of a channel differ in range for step {t.step}")
            if t.cdf.shape[1] < 3:
                raise ValueError(f"entropy tables: invalid CDF for step {t.step} (rows of {t.cdf.shape[1]} entries)")
            n = t.cdf_length.astype(np.int64)
            cdf = t.cdf.astype(np.int64)
            ok = (n >= 3) & (n <= cdf.shape[1]) & (cdf[:, 0] == 0)
            ok &= cdf[np.arange(rows), np.clip(n - 1, 0, cdf.shape[1] - 1)] == 1 << PRECISION
            valid = np.arange(cdf.shape[1] - 1)[None, :] < (n - 1)[:, None]
            ok &= ~((np.diff(cdf, axis=1) <= 0) & valid).any(1)
            if not ok.all():
                raise ValueError(f"entropy tables: invalid CDF for step {t.step} row {int(np.argmin(ok))}")

    def _digest(self) -> str:
        head = {"steps": self.steps, "precision": PRECISION}
        if self.context_radius:
            head["context_radius"] = self.context_radius
        if self.spatial_radius:
            head["spatial_radius"] = self.spatial_radius
        if self.channel_radius:
            head["channel_radius"] = self.channel_radius
            head["channel_parents"] = [list(ps) for ps in self.channel_parents]
        if self.inter:
            head["inter_parents"] = [list(ps) for ps in self.inter_parents]
        h = hashlib.sha256(json.dumps(head).encode())
        for k, v in self.tensors().items():
            h.update(k.encode())
            h.update(v.numpy().tobytes())
        return h.hexdigest()[:16]


def _parents(parents: Sequence[Sequence[int]] | None) -> tuple[tuple[int, ...], ...] | None:
    return None if parents is None else tuple(tuple(int(p) for p in ps) for ps in parents)


def row_offsets(mean: np.ndarray, rows: int, tokens: UnitTokens = None) -> np.ndarray:
    """The quantizer offset of each of ``rows`` tokens, ``(rows, C)`` float64: a ``(C,)`` mean for every row, or
    with a ``(K, C)`` mean (1D models) that of each row's position in its unit. ``tokens``: the tokens every unit
    keeps (default K), or a sequence of them, one per unit."""
    mean = np.asarray(mean, np.float64)
    if mean.ndim == 1:
        return np.broadcast_to(mean, (rows, mean.shape[0]))
    K = mean.shape[0]
    k = K if tokens is None else tokens
    if isinstance(k, (int, np.integer)):
        if 1 <= k <= K and rows % k == 0:
            return mean[np.arange(rows) % k]
    elif all(isinstance(n, (int, np.integer)) and 1 <= n <= K for n in k) and sum(k) == rows:
        return mean[np.concatenate([np.arange(n) for n in k])] if rows else mean[:0]
    raise CodecError(f"per-position tables code units of 1..{K} tokens; got {rows} tokens, not whole units of "
                     f"{k} tokens")


def context_count(radius: int) -> int:
    """Contexts of one kind, temporal or spatial, for a ``radius`` (0: none): the ``2R + 1`` clipped values and one
    for a value without that neighbour; the tables per channel and step are the product of both kinds'."""
    return 2 * radius + 2 if radius else 1


def table_rows(q: np.ndarray, grid: Grids, radius: int, spatial: int = 0,
               prev: np.ndarray | None = None) -> np.ndarray:
    """The table row coding each value of ``q`` ``(N, C)``, flattened: its channel ``c``, and with a context of
    ``radius`` R > 0 ``ctx * C + c``, ``ctx`` from ``context_index`` (``grid``: the units' ``(t, h, w)``, one for all
    (``q`` holds whole units of it, in order) or a list, one per unit; ``prev``: see ``carried_frame``)."""
    n, c = q.shape
    if not radius:
        return np.tile(np.arange(c), n)
    v = np.asarray(q, np.int64)
    rows, start, unit = [], 0, 0
    for t, h, w, count in unit_runs(n, grid):
        size = count * t * h * w
        block = v[start:start + size].reshape(count, t, h, w, c)
        i, y, x = (a.reshape(-1) for a in np.indices((t, h, w)))
        ctx = context_index(neighbours(block, i, y, x, _units(prev, unit, count, h, w, c)), radius, spatial)
        rows.append((ctx * c + np.arange(c)).reshape(-1))
        start, unit = start + size, unit + count
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def parent_context(q: np.ndarray, radius: int, parents: Sequence[int]) -> np.ndarray:
    """The channel context ``(N,)`` one channel's parents give each token of ``q`` ``(N, C)``: the parents' digits
    ``clip(q[:, p], -P, P) + P`` (``2P + 1`` for a parent -1), the first parent's the most significant, in base
    ``2P + 2``."""
    base, ctx = 2 * radius + 2, np.zeros(len(q), np.int64)
    for p in parents:
        digit = np.full(len(q), 2 * radius + 1) if p < 0 else np.clip(np.asarray(q[:, p], np.int64), -radius,
                                                                      radius) + radius
        ctx = ctx * base + digit
    return ctx


def channel_rows(q: np.ndarray, radius: int, parents: Sequence[Sequence[int]]) -> np.ndarray:
    """The table row coding each value of ``q`` ``(N, C)`` with channel contexts, flattened: ``ctx * C + c``."""
    c = np.asarray(q).shape[1]
    ctx = np.stack([parent_context(q, radius, ps) for ps in parents], 1) if len(q) else np.zeros((0, c), np.int64)
    return (ctx * c + np.arange(c)).reshape(-1)


def pick_parents(q: np.ndarray, radius: int, count: int = CHANNEL_PARENTS) -> tuple[tuple[int, ...], ...]:
    """Per channel of integers ``q`` ``(N, C)`` ``count`` parents, picked one after another among the earlier
    channels: each the one that with those picked before leaves the least conditional entropy on ``q`` (-1 where
    there are too few earlier channels)."""
    q = np.asarray(q, np.int64)
    out = []
    for ch in range(q.shape[1]):
        med = int(np.median(q[:, ch]))   # outliers past what a table holds count at its edge, as in the tables
        v = np.clip(q[:, ch], med - MAX_TABLE_HALF, med + MAX_TABLE_HALF) - (med - MAX_TABLE_HALF)
        v = v - v.min()
        width = int(v.max()) + 1

        def bits(parents: list[int]) -> float:
            ctx = parent_context(q, radius, parents)
            joint = np.bincount(ctx * width + v, minlength=(2 * radius + 2) ** len(parents) * width).reshape(-1, width)
            per = np.broadcast_to(joint.sum(1, keepdims=True), joint.shape)
            nz = joint > 0
            return float(-(joint[nz] * np.log2(joint[nz] / per[nz])).sum())

        parents: list[int] = []
        for _ in range(count):
            left = [p for p in range(ch) if p not in parents]
            parents.append(min(left, key=lambda p: bits(parents + [p])) if left else -1)
        out.append(tuple(parents))
    return tuple(out)


def neighbours(q: np.ndarray, i: np.ndarray, y: np.ndarray, x: np.ndarray,
               prev: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The context neighbours of positions ``(i, y, x)`` in every unit of ``q`` ``(units, t, h, w, C)``: the value
    one step back along t (``back``), the one to the left and the one above, each ``(values (units, P, C), whether
    it exists (1, P, 1))``. ``prev`` ``(units, h, w, C)``: the previous chunk's last latent frame, the values one
    step back of the first frame (else they have none)."""
    back, has_back = q[:, np.maximum(i - 1, 0), y, x], (i > 0)[None, :, None]
    if prev is not None:
        back, has_back = np.where(has_back, back, prev[:, y, x]), np.ones_like(has_back)
    return {"back": (back, has_back),
            "left": (q[:, i, y, np.maximum(x - 1, 0)], (x > 0)[None, :, None]),
            "up": (q[:, i, np.maximum(y - 1, 0), x], (y > 0)[None, :, None])}


def context_index(near: dict[str, tuple[np.ndarray, np.ndarray]], radius: int, spatial: int) -> np.ndarray:
    """A value's context from its ``neighbours``: temporal ``clip(back, -R, R) + R`` (``2R + 1`` at t = 0); with a
    spatial radius S, times ``2S + 2`` plus ``clip(p, -S, S) + S``, ``p`` the left and upper neighbours' mean
    rounded half up (``floor((left + up + 1) / 2)``), the one of them there is, or ``2S + 1`` with neither."""
    back, has_back = near["back"]
    ctx = np.where(has_back, np.clip(back, -radius, radius) + radius, 2 * radius + 1)
    if spatial:
        (left, has_left), (up, has_up) = near["left"], near["up"]
        s = np.where(has_left, left, 0) + np.where(has_up, up, 0)
        p = np.where(has_left & has_up, np.floor_divide(s + 1, 2), s)
        near_ctx = np.where(has_left | has_up, np.clip(p, -spatial, spatial) + spatial, 2 * spatial + 1)
        ctx = ctx * context_count(spatial) + near_ctx
    return ctx.astype(np.int64)


def carried_frame(q: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """The last latent frame of every unit of a chunk's integers ``q`` ``(N, C)`` (units of one ``grid``),
    ``(units, h, w, C)``: the temporal neighbours of the next chunk's first frame when it continues the context."""
    t, h, w = grid
    return np.array(np.asarray(q).reshape(-1, t, h, w, q.shape[1])[:, -1], np.int64)   # a copy: q is not kept


def _units(prev: np.ndarray | None, unit: int, count: int, h: int, w: int, c: int) -> np.ndarray | None:
    """``prev``'s frames for units ``unit .. unit + count`` of an ``h x w`` grid (None without ``prev``)."""
    if prev is None:
        return None
    part = np.asarray(prev, np.int64)[unit:unit + count]
    if part.shape != (count, h, w, c):
        raise BitstreamError(f"the previous chunk's last latent frames {tuple(np.shape(prev))} do not fit units of "
                             f"{h}x{w}x{c}")
    return part


@functools.lru_cache(maxsize=64)
def waves(t: int, h: int, w: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """The positions ``(i, y, x)`` of a ``(t, h, w)`` grid wave by wave, wave ``d`` holding ``i + y + x = d`` in
    raster order: every context neighbour of a value (one step back, left, above) lies in the wave before."""
    i, y, x = (a.reshape(-1) for a in np.indices((t, h, w)))
    d = i + y + x
    order = np.argsort(d, kind="stable")
    out = tuple((i[o], y[o], x[o]) for o in np.split(order, np.cumsum(np.bincount(d))[:-1]))
    for part in out:
        for a in part:
            a.flags.writeable = False
    return out


NEIGHBOURS = ("back", "up", "left")   # the context neighbours one step back along t, h and w


@functools.lru_cache(maxsize=64)
def wave_dependents(t: int, h: int, w: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """Per wave of ``waves``, the positions whose context reads one of its values: the index of that value in the
    wave, the position ``(i, y, x)``, and per ``NEIGHBOURS`` key whether it is that neighbour ``(1, D, 1)``."""
    out = []
    for i, y, x in waves(t, h, w):
        parts = []
        for k, (di, dy, dx) in enumerate(((1, 0, 0), (0, 1, 0), (0, 0, 1))):
            at = np.flatnonzero((i + di < t) & (y + dy < h) & (x + dx < w))
            parts.append((at, i[at] + di, y[at] + dy, x[at] + dx, np.full(len(at), k)))
        src, j, yy, xx, key = (np.concatenate(a) for a in zip(*parts))
        out.append((src, j, yy, xx, tuple((key == k)[None, :, None] for k in range(3))))
    return tuple(out)


def stream_order(n: int, grid: Grids, c: int) -> np.ndarray:
    """Value indices of ``(N, C)`` in the order spatial-context tables code them: per run of alike units, wave by
    wave (``waves``), in each wave unit by unit, each position's channels in order."""
    parts, start = [], 0
    for t, h, w, units in unit_runs(n, grid):
        size = t * h * w
        for i, y, x in waves(t, h, w):
            parts.append((start + np.arange(units)[:, None] * size + ((i * h + y) * w + x)[None, :]).reshape(-1))
        start += units * size
    pos = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return (pos[:, None] * c + np.arange(c)).reshape(-1)


def unit_runs(n: int, grid: Grids) -> list[tuple[int, int, int, int]]:
    """``(t, h, w, units)`` runs of alike units covering ``n`` tokens, from one grid or a list of per-unit grids."""
    grids = [grid] if grid is None or isinstance(grid[0], (int, np.integer)) else list(grid)
    if any(g is None or len(g) != 3 or min(g) < 1 for g in grids):
        raise CodecError(f"context tables need whole units of a (t, h, w) grid; got {n} tokens and grid {grid}")
    if len(grids) == 1:
        size = math.prod(grids[0])
        if n % size:
            raise CodecError(f"context tables need whole units of a (t, h, w) grid; got {n} tokens and grid {grid}")
        return [(*map(int, grids[0]), n // size)] if n else []
    if sum(math.prod(g) for g in grids) != n:
        raise CodecError(f"context tables need whole units: {n} tokens, the unit grids hold "
                         f"{sum(map(math.prod, grids))}")
    return [(*map(int, g), 1) for g in grids]


# calibration ----------------------------------------------------------------------------------------------
def fit_tables(z: torch.Tensor, steps: Iterable[float] = STEPS, *, mean: np.ndarray | None = None,
               std: np.ndarray | None = None, iters: int = 300, batch: int = 4096, seed: int = 0,
               meta: dict[str, Any] | None = None) -> EntropyTables:
    """Fit one EntropyBottleneck per step to latent tokens ``z`` ``(M, C)`` and freeze it into integer tables.

    ``mean``/``std`` default to the tokens' own per-channel statistics; a ``(K, C)`` ``mean`` is an offset per
    token position (``z`` then holds whole units of K tokens, in order). All steps train together as one
    bottleneck with ``C x steps`` independent channels.
    """
    z = torch.as_tensor(z, dtype=torch.float32).reshape(-1, z.shape[-1])
    steps = [float(np.float32(s)) for s in steps]
    if z.shape[0] < 2 or not steps:
        raise CodecError("calibration needs at least 2 latent tokens and one step")
    mean = z.mean(0).numpy() if mean is None else np.asarray(mean, np.float32)
    std = z.std(0).clamp_min(1e-6).numpy() if std is None else np.asarray(std, np.float32)
    g = torch.Generator().manual_seed(seed)
    c = z.shape[1]
    y = (z - torch.tensor(row_offsets(mean, z.shape[0]), dtype=torch.float32)) / torch.from_numpy(std)
    ys = torch.cat([y / s for s in steps], dim=1).T.contiguous()  # (S*C, M)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        eb = _train_bottleneck(ys, iters, batch, g)
        bits_float = _likelihood_bits(eb, ys)
    tables = []
    cdf, length, offset, med = (eb._quantized_cdf.numpy(), eb._cdf_length.numpy(), eb._offset.numpy(),
                                eb.quantiles[:, 0, 1].detach().numpy())
    for i, s in enumerate(steps):
        sl = slice(i * c, (i + 1) * c)
        width = int(length[sl].max())
        tables.append(StepTable(s, cdf[sl, :width].astype(np.int32), length[sl].astype(np.int32),
                                offset[sl].astype(np.int32), med[sl].round().astype(np.int32)))
    out = EntropyTables(mean, std, tables, meta)
    return _with_report(out, [(z, None)], [float(bits_float[i * c:(i + 1) * c].sum()) for i in range(len(steps))])


def fit_context_tables(units: Iterable[tuple[torch.Tensor, tuple[int, int, int]]], steps: Iterable[float] = STEPS,
                       *, mean: np.ndarray, std: np.ndarray, radius: int = CONTEXT_RADIUS,
                       prior: float = CONTEXT_PRIOR, meta: dict[str, Any] | None = None, rd_lambda: float = 0.0,
                       weights: Sequence[float] | None = None, spatial: int = 0, channel: int = 0,
                       parents: Sequence[Sequence[int]] | None = None,
                       pairs: Sequence[tuple[int, int]] = ()) -> EntropyTables:
    """Context tables from counts: per step, channel and context (see ``EntropyTables``) the histogram of the
    quantized values, shrunk towards the channel's histogram by ``prior`` pseudo-counts and frozen with CompressAI's
    ``pmf_to_quantized_cdf``. ``units``: ``(z (N, C), (t, h, w))``, whole units in order (1D models: ``(K, 1, 1)``,
    so the context is the previous token); a ``(K, C)`` ``mean`` is an offset per token position. ``spatial`` > 0
    adds spatial contexts of that radius (the left and upper neighbours in the value's latent frame). ``channel`` > 0
    (with ``radius`` 0) gives channel contexts of that radius instead, each channel's parents from ``parents``
    (default: ``pick_parents`` on the integers rounded to nearest at the middle step).

    A value's context is the value one step back, so counting the discrete values directly is exact where a smooth
    density (the factorized ``EntropyBottleneck``) would have to be fitted once per context. With ``rd_lambda`` > 0
    the tables code with that rate-distortion rounding (and ``weights``), and are counted twice: the second time on
    the integers that rounding gives under the first count, rather than on rounding to nearest. ``pairs`` (channel
    contexts): ``(a, b)`` indices of units where unit ``b`` is the chunk after unit ``a`` (the same tiles): inter tables
    are counted on the differences ``q_b - q_a`` at each step, with parents of their own.
    """
    _, pmf_to_quantized_cdf = _import_compressai()
    units = [(torch.as_tensor(z, dtype=torch.float64).numpy(), tuple(g)) for z, g in units]
    steps = [float(np.float32(s)) for s in steps]
    if not units or not steps or sum(z.shape[0] for z, _ in units) < 2:
        raise CodecError("calibration needs at least 2 latent tokens and one step")
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    c = std.shape[0]
    if spatial and not radius:
        raise CodecError("spatial contexts need a temporal context radius")
    if channel and radius:
        raise CodecError("channel contexts are instead of a temporal context: give one radius or the other")
    if channel and parents is not None and (len(parents) != c or any(
            not isinstance(ps, (list, tuple)) or not ps for ps in parents)):
        raise CodecError(f"channel parents must be {c} lists of parent channels, one per channel")
    if channel and context_count(channel) ** (len(parents[0]) if parents else CHANNEL_PARENTS) > MAX_CHANNEL_CONTEXTS:
        raise CodecError(f"channel radius {channel} gives more than {MAX_CHANNEL_CONTEXTS} tables per channel")
    if channel and parents is None:
        middle = std.astype(np.float64) * steps[len(steps) // 2]
        parents = pick_parents(np.concatenate([np.rint((z - row_offsets(mean, len(z))) / middle)
                                               for z, _ in units]).astype(np.int64), channel)
    n_ctx = context_count(radius) * context_count(spatial) * (context_count(channel) ** len(parents[0]) if channel
                                                              else 1)

    def rows_of(y: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
        return channel_rows(y, channel, parents) if channel else table_rows(y, grid, radius, spatial)

    def nearest(step: float, _: int) -> list[np.ndarray]:
        return [np.rint((z - row_offsets(mean, len(z))) / (std.astype(np.float64) * step)).astype(np.int64)
                for z, _ in units]

    pairs = [(a, b) for a, b in pairs if units[a][0].shape == units[b][0].shape] if channel else []
    inter_parents = None
    if pairs:
        middle = nearest(steps[len(steps) // 2], 0)
        inter_parents = pick_parents(np.concatenate([middle[b] - middle[a] for a, b in pairs]), channel)

    def counted(integers: Callable[[float, int], list[np.ndarray]], meta: dict[str, Any] | None
                ) -> tuple[EntropyTables, list[float]]:
        """Tables counted on ``integers(step, index)`` (one int array per unit), and each step's bits under them;
        with ``pairs``, inter tables counted on the differences of nearest rounding."""
        tables, float_bits, inter = [], [], []
        for index, step in enumerate(steps):
            ys = integers(step, index)
            table, bits = _counted_table(step, [(y, rows_of(y, grid)) for y, (_, grid) in zip(ys, units)], n_ctx, c,
                                         prior, pmf_to_quantized_cdf)
            tables.append(table)
            float_bits.append(bits)
            if pairs:
                ys = nearest(step, index)
                diffs = [ys[b] - ys[a] for a, b in pairs]
                inter.append(_counted_table(step, [(d, channel_rows(d, channel, inter_parents)) for d in diffs],
                                            context_count(channel) ** len(inter_parents[0]), c, prior,
                                            pmf_to_quantized_cdf)[0])
        return EntropyTables(mean, std, tables, meta, context_radius=radius, spatial_radius=spatial,
                             channel_radius=channel, channel_parents=parents if channel else None,
                             inter=inter or None, inter_parents=inter_parents), float_bits


    out, float_bits = counted(nearest, meta)
    if rd_lambda:
        rounding = out.with_rdoq(rd_lambda, weights)
        out, float_bits = counted(lambda step, index: [rounding.quantize(z, step, index, grid=grid).astype(np.int64)
                                                       for z, grid in units], rounding.meta)
    return _with_report(out, units, float_bits, pairs)


def _counted_table(step: float, coded: list[tuple[np.ndarray, np.ndarray]], n_ctx: int, c: int, prior: float,
                   pmf_to_quantized_cdf: Callable) -> tuple[StepTable, float]:
    """One step's table from integers and the rows coding them (``coded``: ``(y (N, C), rows (N * C,))``), each
    context's histogram shrunk towards its channel's by ``prior`` pseudo-counts; and the bits the counts cost."""
    flat = np.concatenate([y for y, _ in coded])
    med = np.median(flat, axis=0).round().astype(np.int64)
    lo = np.maximum(flat.min(0), med - MAX_TABLE_HALF)
    width = np.minimum(flat.max(0), med + MAX_TABLE_HALF) - lo + 1
    counts = np.zeros((n_ctx, c, int(width.max())))
    for y, rows in coded:
        v = y.reshape(-1) - lo[rows % c]
        keep = (v >= 0) & (v < width[rows % c])  # values past the table are escapes
        counts += np.bincount(rows[keep] * counts.shape[-1] + v[keep], minlength=counts.size).reshape(counts.shape)
    inside = np.arange(counts.shape[-1])[None, :] < width[:, None]
    marginal = counts.sum(0) + 0.5 * inside
    marginal /= marginal.sum(-1, keepdims=True)
    pmf = (counts + prior * marginal) / (counts.sum(-1, keepdims=True) + prior)
    bits = float(-(counts * np.log2(np.maximum(pmf, 1e-300))).sum())
    cdf = np.zeros((n_ctx * c, counts.shape[-1] + 2), np.int32)
    for k in range(n_ctx):
        for ch in range(c):
            w = int(width[ch])
            probs = np.append(pmf[k, ch, :w] * (1 - TAIL_MASS), TAIL_MASS)
            cdf[k * c + ch, :w + 2] = pmf_to_quantized_cdf(probs.tolist(), PRECISION)
    return StepTable(step, cdf, np.tile(width + 2, n_ctx).astype(np.int32), np.tile(lo - med, n_ctx).astype(np.int32),
                     np.tile(med, n_ctx).astype(np.int32)), bits


def _with_report(out: EntropyTables, parts: list[tuple[Any, tuple[int, int, int] | None]],
                 float_bits: list[float], pairs: Sequence[tuple[int, int]] = ()) -> EntropyTables:
    """``out`` with its calibration report: per step, bits per value on the calibration latents ``parts``
    (``(z, grid)``, each coded as one stream) under the fitted model (``float_bits``, totals), under the integer
    tables, and from real rANS output; with inter tables also, over the second part of each of ``pairs``, real bits
    per value coded alone (``alone_bits``) and as the codec codes it (``predicted_bits``: predicted from the first,
    every token, where that is shorter)."""
    total = sum(int(np.prod(z.shape)) for z, _ in parts)
    report = {}
    for i, step in enumerate(out.steps):
        coded = [(out.quantize(z, step, index=i, grid=grid), grid) for z, grid in parts]
        real = sum(8 * len(out.encode(q, i, grid)) for q, grid in coded)
        table = sum(out.estimate_bits(q, i, grid) for q, grid in coded)
        report[str(step)] = {"float_bits": round(float_bits[i] / total, 4), "table_bits": round(table / total, 4),
                             "real_bits": round(real / total, 4)}
        if out.inter and pairs:
            values, alone, chosen = 0, 0, 0
            for a, b in pairs:
                (q, grid), pred = coded[b], Prediction(np.ones(len(coded[b][0]), bool), coded[a][0])
                bits = 8 * len(out.encode(q, i, grid))
                values, alone = values + q.size, alone + bits
                chosen += min(bits, 8 * len(out.encode(q, i, grid, pred=pred))) if out.can_predict(q, i, pred) else bits
            report[str(step)].update(alone_bits=round(alone / values, 4), predicted_bits=round(chosen / values, 4))
    out.meta["calibration"] = {"tokens": total // out.channels, "bits_per_symbol": report}
    return out


def _train_bottleneck(ys: torch.Tensor, iters: int, batch: int, g: torch.Generator):
    EntropyBottleneck, _ = _import_compressai()
    n_ch, m = ys.shape
    scale = float(ys.abs().quantile(0.999).clamp_min(1.0)) if m * n_ch <= 1 << 24 else float(ys.abs().max())
    eb = EntropyBottleneck(n_ch, init_scale=max(scale, 1.0))
    _init_scales(eb, ys)
    params = [p for n, p in eb.named_parameters() if not n.endswith("quantiles")]
    opt = torch.optim.Adam(params, lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iters, 1))
    eb.train()
    for _ in range(iters):
        cols = torch.randint(0, m, (min(batch, m),), generator=g)
        _, lik = eb(ys[:, cols].T.unsqueeze(-1))  # (B, C, 1)
        loss = -torch.log2(lik).sum() / lik.shape[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    eb.eval()
    with torch.no_grad():
        eb._update_quantiles()
        q = eb.quantiles.data
        med = q[:, 0, 1].round()
        q[:, 0, 0] = torch.maximum(q[:, 0, 0], med - MAX_TABLE_HALF).clamp(max=med)
        q[:, 0, 2] = torch.minimum(q[:, 0, 2], med + MAX_TABLE_HALF).clamp(min=med)
        q[:, 0, 1] = med
        eb.update(force=True)
    return eb


def _init_scales(eb, ys: torch.Tensor) -> None:
    """Start each channel's density at that channel's spread (CompressAI uses one ``init_scale`` for all)."""
    spread = (ys.std(dim=1) * 3 + 1.0).double()  # (C,)
    k = len(eb.filters) + 1
    dims = (1,) + eb.filters + (1,)
    with torch.no_grad():
        for i, m in enumerate(eb.matrices):
            per = spread ** (1.0 / k)
            init = torch.log(torch.expm1(1.0 / per / dims[i + 1])).float()
            m.data.copy_(init[:, None, None].expand_as(m))
        eb.quantiles.data = torch.stack([-spread, torch.zeros_like(spread), spread], -1)[:, None, :].float()


@torch.no_grad()
def _likelihood_bits(eb, ys: torch.Tensor) -> np.ndarray:
    """Per channel total bits of ``round(ys)`` under the float model (what #236 calls the likelihood rate)."""
    med = eb.quantiles[:, 0, 1:2]
    q = torch.round(ys - med) + med
    lik, _, _ = eb._likelihood(q.unsqueeze(1))
    return (-torch.log2(lik.clamp_min(1e-9))).sum(-1)[:, 0].numpy()


def calibrate_entropy(tok: Any, clips: Iterable[Any], steps: Iterable[float] = STEPS, iters: int = 300,
                      seed: int = 0, context_radius: int | None = None, rd_lambda: float = 0.0,
                      spatial_radius: int | None = None, channel_radius: int | None = None,
                      follows: Sequence[bool] | None = None) -> EntropyTables:
    """Encode calibration clips with ``tok`` and fit tables; the quantizer scale is the model's latent statistics,
    the offset its latent mean (grid models) or the clips' mean per token position (1D models).

    With ``context_radius`` > 0 the tables are count-based and a value's table depends on the value one step back
    (grid models: one latent frame back; 1D models: the previous token); 0 fits factorized ``EntropyBottleneck``
    tables (``iters``, ``seed``), which decode in one call instead of one per latent frame, token or wave. Default:
    ``CONTEXT_RADIUS`` for grid models; 0 for 1D models, whose previous-token context cost bytes on carphone
    (``vitok bench codec`` against a copy calibrated with ``vitok calibrate --context-radius 3``).
    ``channel_radius`` > 0 (default ``CHANNEL_RADIUS`` for 1D models without a temporal context, else 0): each value's
    table depends on three earlier channels of its token, each clipped to that radius (``pick_parents`` picks them).
    ``spatial_radius`` > 0 (default ``SPATIAL_RADIUS`` for grid models with a context, else 0) also conditions each
    table on the value's left and upper neighbours in its latent frame (README, "How latents become bytes").
    ``clips``: uint8 ``(T,H,W,3)`` arrays or float ``(B,3,T,H,W)`` tensors in [-1, 1]; ``follows[i]``: clip ``i`` (a
    chunk) is the one after clip ``i - 1`` in a video, which with channel contexts adds inter tables, fitted on the
    differences between such chunks' integers (``Prediction``).
    Runs on one torch thread: float sums change with the thread count, which would change a few quantized values
    and so the tables and their id, which every ``.vtok`` names; on one thread a machine fits the same tables
    whatever thread count it runs with. Another instruction set (AVX-512 or AVX2 kernels) may still fit other
    tables: the shipped tables are what streams name, and calibrating again elsewhere replaces them.
    ``rd_lambda`` > 0: the tables code with that rate-distortion rounding (weights from ``vitok.codecs.distortion``),
    and context tables are fitted twice, the second time to the integers that rounding gives under the first.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _calibrate(tok, clips, steps, iters, seed, context_radius, rd_lambda, spatial_radius, channel_radius,
                          follows)
    finally:
        torch.set_num_threads(threads)


def _calibrate(tok: Any, clips: Iterable[Any], steps: Iterable[float], iters: int, seed: int,
               context_radius: int | None, rd_lambda: float, spatial_radius: int | None,
               channel_radius: int | None = None, follows: Sequence[bool] | None = None) -> EntropyTables:
    from vitok.data.convert import frames_to_tensor

    if context_radius is None:
        context_radius = CONTEXT_RADIUS if tok.max_tokens is None else 0
    if spatial_radius is None:
        spatial_radius = SPATIAL_RADIUS if tok.max_tokens is None and context_radius else 0
    if spatial_radius and tok.max_tokens is not None:
        raise CodecError("spatial contexts are for grid models: a 1D model's tokens have no neighbours in a frame")
    if spatial_radius and not context_radius:
        raise CodecError("spatial contexts need a temporal context radius (context_radius > 0)")
    if channel_radius is None:
        channel_radius = CHANNEL_RADIUS if tok.max_tokens is not None and not context_radius else 0
    if channel_radius and tok.max_tokens is None:
        raise CodecError("channel contexts are for 1D models: a grid model's values lean on their neighbours in time "
                         "and space (context and spatial radii)")
    if channel_radius and context_radius:
        raise CodecError("channel contexts are instead of a temporal context: give a context radius or a channel "
                         "radius, not both")
    units, clips, pairs = [], list(clips), []
    if follows is not None and len(follows) != len(clips):
        raise CodecError(f"follows names {len(follows)} clips, {len(clips)} given")
    with torch.no_grad():
        for i, clip in enumerate(clips):
            x = frames_to_tensor(clip) if isinstance(clip, np.ndarray) else clip
            lat = tok.encode(x.to(_device(tok)))  # all tokens: the posterior mean, what the codec quantizes
            if follows is not None and follows[i] and i and len(lat.z) == 1:
                pairs.append((len(units) - 1, len(units)))
            units += [(z, context_grid(lat.grid, tok.max_tokens)) for z in lat.z.float().cpu()]
    if not units:
        raise CodecError("calibration needs at least one clip")
    z = torch.cat([u for u, _ in units])
    cfg = tok.config
    meta = {"model": cfg.name, "weights_hash": tok.weights_hash}
    if tok.max_tokens is not None:  # 1D: whole units of K ranked tokens, each position with its own mean
        mean = z.reshape(-1, tok.max_tokens, z.shape[-1]).mean(0)
    else:
        mean = z.mean(0) if cfg.latent_mean is None else torch.tensor(cfg.latent_mean)
    std = z.std(0).clamp_min(1e-6) if cfg.latent_std is None else torch.tensor(cfg.latent_std)
    weights = None
    if rd_lambda:
        from vitok.codecs.distortion import distortion_weights

        weights = distortion_weights(tok, std.numpy(), clips)
    if context_radius or channel_radius:
        return fit_context_tables(units, steps, mean=mean.numpy(), std=std.numpy(), radius=context_radius, meta=meta,
                                  rd_lambda=rd_lambda, weights=weights, spatial=spatial_radius,
                                  channel=channel_radius, pairs=pairs)
    tables = fit_tables(z, steps, mean=mean.numpy(), std=std.numpy(), iters=iters, seed=seed, meta=meta)
    return tables.with_rdoq(rd_lambda, weights) if rd_lambda else tables


def context_grid(grid: tuple[int, int, int] | None, tokens: UnitTokens) -> Grids:
    """The grid contexts run along: a grid model's unit grid ``(t, h, w)``, or ``(tokens, 1, 1)`` for a 1D model
    keeping ``tokens`` per unit (its previous token is a token's context); a list of them for per-unit counts."""
    if grid is not None:
        return grid
    if tokens is None or isinstance(tokens, (int, np.integer)):
        return (tokens, 1, 1)
    return [(int(k), 1, 1) for k in tokens]


def _device(tok: Any) -> torch.device:
    try:
        return next(tok.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def write_entropy_tables(model_dir: str | Path, tables: EntropyTables) -> Path:
    """Store tables beside a saved model (``<model_dir>/entropy.safetensors``), atomically."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CodecError(f"model directory not found: {model_dir}")
    return tables.save(model_dir / FILENAME)


def calibrate_model_dir(model_dir: str | Path, clips: Iterable[np.ndarray] | None = None,
                        steps: Iterable[float] = STEPS, iters: int = 300,
                        context_radius: int | None = None, spatial_radius: int | None = None,
                        channel_radius: int | None = None) -> EntropyTables:
    """Load the model saved in ``model_dir``, calibrate tables and write ``entropy.safetensors`` beside it.

    ``clips``: uint8 ``(T,H,W,3)`` videos, cut into chunks of the model's ``clip_frames`` as the codec cuts them
    (default: the sample clips' training segments at their own size; never the eval ones); with channel contexts, a
    clip's consecutive chunks fit inter tables (``Prediction``). Tables replaced for the
    same weights stay beside the model as ``entropy-<id>.safetensors``, so the streams coded with them still decode;
    the rate-distortion rounding they coded with carries over (its weights measured again), and so do their context
    radii: both when neither is given, the temporal one when only ``spatial_radius`` is (a given ``context_radius``
    takes the default spatial radius for it), the channel one when neither it nor ``context_radius`` is given."""
    import vitok

    tok = vitok.load(model_dir)
    chunks, follows = calibration_chunks(tok, clips)
    old = Path(model_dir) / FILENAME
    try:
        before = EntropyTables.load(old) if old.is_file() else None
    except CodecError:   # unreadable tables: nothing a stream could have been coded with
        before = None
    rd_lambda = 0.0 if before is None else before.rd_lambda   # the model's encoder setting carries over
    if before is not None and context_radius is None:   # and the tables' shape, as chosen last time
        if channel_radius:   # a channel context asked for is instead of the temporal one the tables had
            context_radius = 0
        else:
            context_radius = before.context_radius
            spatial_radius = before.spatial_radius if spatial_radius is None else spatial_radius
            channel_radius = before.channel_radius if channel_radius is None else channel_radius
    tables = calibrate_entropy(tok, chunks, steps=steps, iters=iters, context_radius=context_radius,
                               rd_lambda=rd_lambda, spatial_radius=spatial_radius, channel_radius=channel_radius,
                               follows=follows)
    if before is not None and before.table_id != tables.table_id:
        if before.meta.get("weights_hash") == tok.weights_hash:   # streams coded with them still decode
            before.save(Path(model_dir) / kept_name(before.table_id))
        else:
            warnings.warn(f"{old}: tables {before.table_id} replaced by {tables.table_id}; .vtok files coded with the "
                          "old tables no longer decode with this model folder", stacklevel=2)
    write_entropy_tables(model_dir, tables)
    return tables


def calibration_chunks(tok: Any, clips: Iterable[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[bool]]:
    """``clips`` (default: each sample clip's training segments at their own size, in order) cut into chunks of the
    model's ``clip_frames``, as the codec cuts them; and per chunk whether it follows the one before in its clip."""
    if clips is None:
        from vitok.data.samples import train_segments

        segments: dict[str, list[np.ndarray]] = {}
        for name, frames in train_segments(num_frames=tok.clip_frames, size=None):   # consecutive within a clip
            segments.setdefault(name.split(":")[0], []).append(frames)
        clips = [np.concatenate(parts) for parts in segments.values()]
    n = tok.clip_frames
    cut = [(clip[i:i + n], i > 0) for clip in clips for i in range(0, len(clip), n)]
    return [c for c, _ in cut], [f for _, f in cut]


def kept_name(table_id: str) -> str:
    """File name of earlier tables kept beside a model, for decoding the streams coded with them."""
    return f"entropy-{table_id}.safetensors"


def load_kept_tables(model_dir: str | Path, table_id: Any) -> EntropyTables | None:
    """The earlier tables ``table_id`` kept in ``model_dir``, or None."""
    if not (isinstance(table_id, str) and len(table_id) == 16 and all(c in "0123456789abcdef" for c in table_id)):
        return None
    path = Path(model_dir) / kept_name(table_id)
    if not path.is_file():
        return None
    tables = EntropyTables.load(path)
    if tables.table_id != table_id:
        raise CodecError(f"{path}: holds tables {tables.table_id}, not {table_id}")
    return tables


def load_entropy_tables(model: Any) -> EntropyTables:
    """Tables of a model: a model dir, a bundled model name, an ``entropy.safetensors`` path, or a loaded
    bundled ``Tokenizer`` (found by its config name)."""
    if not isinstance(model, (str, Path)):
        from vitok.codecs.models import find_bundled

        name = find_bundled(model.config.name)
        if name is None:
            raise CodecError(f"model {model.config.name!r} is not bundled: load its tables from its directory")
        model = name
    path = Path(model)
    if path.is_file():
        return EntropyTables.load(path)
    if path.is_dir():
        if not (path / FILENAME).is_file():
            raise CodecError(f"model {model} has no entropy tables ({FILENAME}); run `vitok calibrate {model}`")
        return EntropyTables.load(path / FILENAME)
    from vitok.codecs.models import bundled_dir

    d = bundled_dir(str(model))
    if d is None or not (d / FILENAME).is_file():
        raise CodecError(f"no entropy tables for model {model!r}: not a model directory or bundled model with "
                         f"{FILENAME}")
    return EntropyTables.load(d / FILENAME)
