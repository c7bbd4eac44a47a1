"""``vitok:<model>`` codecs: tokenizer encode -> quantize -> rANS per chunk -> ``.vtok``, and back.

Each chunk of ``tok.clip_frames`` frames is tokenized on its own; with temporal context tables (grid models) a chunk
after the first continues the entropy contexts of the one before (its first latent frame's temporal neighbours are
the previous chunk's last); with inter tables (1D models) it may code the tokens the chunk before kept as differences
from their integers there, when that takes fewer bytes than coding them alone. Knobs: ``step``
(quantization step in units of each channel's latent std; the main rate knob) and, for 1D models, ``tokens``
(tokens kept per unit). Rate control (``bytes=``, ``psnr=``) picks the token count per chunk, and per tile when a
1D model cuts frames into several (``adapt_units``); grid models: the step per chunk. Files are written and read
chunk by chunk, so memory stays flat for long videos.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import itertools
import math
import os
import threading
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np

from vitok.codecs.base import Codec, check_frames
from vitok.codecs.container import (VERSION, ChunkInfo, VtokHeader, VtokReader, VtokWriter, framing_bytes,
                                    sar_record)
from vitok.codecs.entropy import (DEFAULT_STEP, FILENAME as ENTROPY_FILE, EntropyTables, Prediction,
                                  carried_frame, context_grid, load_entropy_tables, load_kept_tables)
from vitok.codecs.errors import BitstreamError, CodecError
from vitok.codecs.models import DEFAULT_MODEL, bundled_dir, bundled_names, find_bundled
from vitok.codecs.payload import CONTINUES, ChunkTokens, header_size, pack_chunk, parse_chunk
from vitok.codecs.ratecontrol import (Candidate, Cost, UnitCosts, allocate_bytes, cheapest_bytes, pick_psnr,
                                     pick_units_psnr, psnr_from_sse, token_grid, units_for_psnr)
from vitok.codecs.refine import check_refine, refine_tokens
from vitok.codecs.spill import Spill, Spilled
from vitok.config import MAX_TILE_OVERLAP

__all__ = ["VitokCodec", "DEFAULT_MODEL", "EncodeStats", "ChunkCode", "bundled_codec_names", "model_for_stream"]

WEIGHTS_ID_CHARS = 16  # the header names the weights by the first 64 bits of their sha256


def bundled_codec_names() -> list[str]:
    """``vitok:<name>`` for every bundled model that ships entropy tables."""
    return [f"vitok:{n}" for n in bundled_names()]


def model_dir(model: str) -> Path:
    """The folder of a model given by bundled name or path; CodecError when it is neither or has no tables."""
    from vitok.registry import local_model_dir

    local = local_model_dir(model)   # a folder named like a bundled model is that model only if it is one
    d = local if local is not None else bundled_dir(model)
    if d is None:
        known = ", ".join(bundled_names()) or "none installed"
        raise CodecError(f"unknown vitok model {model!r}: not a model directory or a bundled model ({known})")
    if not (d / "config.json").is_file():
        raise CodecError(f"{d}: not a model directory (no config.json)")
    if not (d / ENTROPY_FILE).is_file():
        raise CodecError(f"model {model} has no entropy tables ({ENTROPY_FILE}); run `vitok calibrate {d}`")
    return d


@dataclass
class ChunkCode:
    """One coded chunk: its payload and the integers it carries (``q``: (tokens, C) int32). ``tokens``: per unit
    (1D models; a tuple when units keep different counts), None for grid models."""

    payload: bytes
    q: np.ndarray | None   # None once only the payload is kept (a byte budget's candidates)
    tokens: int | tuple[int, ...] | None
    step: float
    table: int
    frames: int
    estimated_bits: float
    psnr: float | None = None  # dB over the chunk, when rate control decoded it to choose
    carry: "np.ndarray | TokenCarry | None" = None   # what the next chunk continues from (``VitokCodec.carry_of``)


@dataclass(frozen=True)
class TokenCarry:
    """What a 1D model's chunk hands the next, which predicts its tokens from it: the integers of every unit
    ``(units, K, C)`` (zeros past a unit's count), the tokens each unit kept, and the step."""

    q: np.ndarray
    counts: tuple[int, ...]
    step: float

    @classmethod
    def of(cls, q: np.ndarray, tokens: int | tuple[int, ...], step: float, max_tokens: int) -> "TokenCarry":
        counts = tokens if isinstance(tokens, tuple) else (int(tokens),) * (len(q) // int(tokens))
        full = np.zeros((len(counts), max_tokens, q.shape[1]), np.int64)
        full[np.arange(max_tokens)[None] < np.asarray(counts)[:, None]] = q
        return cls(full, tuple(int(k) for k in counts), float(step))

    def prediction(self, tokens: int | tuple[int, ...], step: float) -> Prediction | None:
        """The prediction of a chunk keeping ``tokens`` per unit at ``step``: each token this chunk's unit kept, its
        integers rescaled to ``step`` (None: the chunks' units differ, nothing is predicted)."""
        counts = tokens if isinstance(tokens, tuple) else (int(tokens),) * len(self.counts)
        if len(counts) != len(self.counts):
            return None
        if step == self.step:
            q = self.q
        else:   # a tampered step may overflow: such a prediction decodes to out-of-range values, told as corrupt
            with np.errstate(all="ignore"):
                scaled = np.nan_to_num(np.rint(self.q * (self.step / step)), nan=0.0)
            q = np.clip(scaled, -2 ** 40, 2 ** 40).astype(np.int64)
        mask = np.concatenate([np.arange(k) < kept for k, kept in zip(counts, self.counts)])
        values = np.concatenate([q[u, :k] for u, k in enumerate(counts)])
        return Prediction(mask, values) if mask.any() else None

    def digest(self) -> bytes:
        h = hashlib.blake2b(self.q.astype(np.int64).tobytes(), digest_size=16)
        h.update(repr((self.counts, self.step)).encode())
        return h.digest()


@dataclass
class EncodeStats:
    """What an encode produced; ``file_bytes`` is the rate RD uses, the rest explains it."""

    frames: int = 0
    width: int = 0
    height: int = 0
    fps: Fraction = Fraction(0)
    chunks: int = 0
    file_bytes: int = 0
    payload_bytes: int = 0  # chunk payloads (chunk headers + rANS data)
    entropy_bytes: int = 0  # rANS data alone
    estimated_bytes: float = 0.0  # from the entropy model's likelihoods (ideal code length)
    tokens: list[int | tuple[int, ...] | None] = field(default_factory=list)  # per chunk, as in ChunkCode
    coded_tokens: int = 0   # tokens coded in all chunks, units and tiles
    steps: list[float] = field(default_factory=list)
    chunk_bytes: list[int] = field(default_factory=list)
    chunk_psnr: list[float | None] = field(default_factory=list)  # known when rate control decoded the chunk as
    # written (not per tile under a byte budget, nor for a chunk a byte budget coded otherwise than it weighed it,
    # after a chunk at another step: that would need every chunk's frames kept until the allocation ends)
    seconds: float = 0.0

    @property
    def bpp(self) -> float:
        return 8 * self.file_bytes / max(self.frames * self.width * self.height, 1)

    @property
    def kbps(self) -> float:
        seconds = self.frames / float(self.fps) if self.fps else 0.0
        return 8 * self.file_bytes / seconds / 1000 if seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "width": self.width, "height": self.height, "fps": str(self.fps),
                "chunks": self.chunks, "file_bytes": self.file_bytes, "payload_bytes": self.payload_bytes,
                "entropy_bytes": self.entropy_bytes, "estimated_bytes": round(self.estimated_bytes, 1),
                "bpp": round(self.bpp, 5), "kbps": round(self.kbps, 3), "tokens_per_chunk": self.tokens,
                "steps": self.steps, "chunk_bytes": self.chunk_bytes,
                "chunk_psnr": [None if p is None else round(p, 3) for p in self.chunk_psnr],
                "seconds": round(self.seconds, 3)}


def _float32_step(step: Any) -> Any:
    """``step`` unchanged, or a CodecError naming it when the float32 the stream stores it as would be 0 or inf."""
    if isinstance(step, (int, float)) and math.isfinite(step) and step > 0:
        with np.errstate(over="ignore"):
            stored = float(np.float32(step))
        if stored == 0 or not math.isfinite(stored):
            raise CodecError(f"quantization step {step!r} is out of float32's range (the stream stores it as float32)")
    return step


class VitokCodec(Codec):
    """A tokenizer + its entropy tables as a codec. ``model``: bundled name, model dir, or a ``Tokenizer``.

    One codec may encode and decode from several threads at once: coding leaves the model and tables as they are,
    and they load once, on first use."""

    suffix = ".vtok"
    knobs = ("step", "tokens", "bytes", "psnr", "adapt_units", "overlap", "refine")

    def __init__(self, model: Any = DEFAULT_MODEL, tables: EntropyTables | None = None, device: str = "cpu") -> None:
        self.device, self._loading, self._earlier = device, threading.RLock(), {}
        self._in_folder = isinstance(model, (str, os.PathLike))   # earlier tables may be kept beside the model
        if self._in_folder:
            self.model_ref, self._tok = str(model), None
            model_dir(self.model_ref)  # unknown models and missing tables fail here, before any work
        else:
            self.model_ref, self._tok = model.config.name, model
            if tables is None:
                raise CodecError("VitokCodec(tokenizer) needs its EntropyTables (see calibrate_entropy)")
        self._tables = None if tables is None else self._fitting(tables)
        self._tile_overlap: float | None = None   # the model's; else what with_overlap set or a stream's header says
        self._refine = 0   # Adam steps on each chunk's tokens before they are quantized (with_refinement)

    # model and tables load on first use (once, whichever thread asks first), so listing codecs stays cheap
    @property
    def tok(self):
        if self._tok is None:
            with self._loading:
                if self._tok is None:
                    import vitok

                    self._tok = vitok.load(self.model_ref, device=self.device)
        return self._tok

    @property
    def tables(self) -> EntropyTables:
        if self._tables is None:
            with self._loading:
                if self._tables is None:
                    self._tables = self._fitting(load_entropy_tables(self.model_ref))
        return self._tables

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_loading"}   # a lock does not pickle

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_earlier": {}, "_in_folder": False, "_tile_overlap": None, "_refine": 0, **state},
                             _loading=threading.RLock())

    def for_stream(self, header: VtokHeader) -> "VitokCodec":
        """This codec, or one decoding with the earlier tables a stream names when they are kept beside the model
        (``entropy-<id>.safetensors``: `vitok calibrate` keeps the tables it replaces for the same weights), and
        cutting tiles as its header's tiling record says when only the overlap differs from the model's tiling (else
        as the model does, whatever overlap this codec encodes with)."""
        coder = self._with_tables(header.meta.get("tables"))
        theirs, model = header.meta.get("tiling"), coder.tok.tiling
        overlap = model["overlap"]
        if _valid_tiling(theirs, coder.tok.spatial_stride) and model["tile"] is not None \
                and all(theirs[k] == model[k] and type(theirs[k]) is type(model[k]) for k in ("tile", "fit")):
            overlap = float(theirs["overlap"])
        return coder._overlapping(overlap)

    def _with_tables(self, wanted: Any) -> "VitokCodec":
        """This codec, or its twin with the kept tables ``wanted`` names (``for_stream``)."""
        if not self._in_folder or wanted == self.tables.table_id:
            return self
        with self._loading:
            if wanted not in self._earlier:
                kept = load_kept_tables(model_dir(self.model_ref), wanted)
                twin = None   # tables left from other weights: the weights check names the real mismatch
                if kept is not None and kept.meta.get("weights_hash") in (None, self.tok.weights_hash):
                    twin = copy.copy(self)   # with the model's tiling: for_stream sets the stream's
                    twin._tables, twin._earlier = self._fitting(kept), {}
                    twin._tile_overlap = None
                self._earlier[wanted] = twin
        return self._earlier[wanted] or self

    def with_overlap(self, pixels: Any) -> "VitokCodec":
        """This codec cutting frames into tiles that overlap by ``pixels`` (a multiple of the model's spatial stride)
        instead of the model's overlap: less overlap codes fewer tokens (decoders follow the stream's record)."""
        tok, stride = self.tok, self.tok.spatial_stride
        tile = tok.config.tile_size
        if isinstance(pixels, bool) or not isinstance(pixels, (int, np.integer)) or pixels < 0 or pixels % stride:
            raise CodecError(f"overlap must be a whole number of pixels, a multiple of {self.model_ref}'s stride "
                             f"{stride}, got {pixels!r}")
        if tile is None:
            raise CodecError(f"{self.model_ref} codes whole frames (no tiles): there is no tile overlap to set")
        if pixels / tile > MAX_TILE_OVERLAP:
            raise CodecError(f"overlap of {pixels} pixels is more than {MAX_TILE_OVERLAP:g} of {self.model_ref}'s "
                             f"{tile}-pixel tiles (at most {int(MAX_TILE_OVERLAP * tile) // stride * stride})")
        return self._overlapping(pixels / tile)

    def with_refinement(self, steps: int) -> "VitokCodec":
        """This codec refining each chunk's tokens by ``steps`` Adam steps through the frozen decoder before it
        quantizes them (``vitok.codecs.refine``): better pixels for the same tokens, at ``steps`` decoder passes and
        their gradients per chunk (1D models: per token count tried, or per tile and count). Streams decode as any
        other."""
        steps = check_refine(steps)
        if steps == self._refine:
            return self
        twin = copy.copy(self.load())   # the twin shares the model and tables, loaded once
        twin._refine = steps
        return twin

    def _overlapping(self, fraction: float) -> "VitokCodec":
        """A twin of this codec whose tiles overlap by ``fraction`` of the tile size (itself if that is its own)."""
        if fraction == self.tiling["overlap"]:
            return self
        twin = copy.copy(self)
        twin._tile_overlap = None if fraction == self.tok.config.tile_overlap else float(fraction)
        return twin

    @property
    def name(self) -> str:
        """``vitok:MODEL``, with the tiles' overlap when it is not the model's and ``+refineN`` when refining: rd
        tables and caches tell such twins from the plain codec."""
        name = f"vitok:{self.model_ref}"
        if self._tile_overlap is not None:
            from vitok.geometry import overlap_pixels

            tok = self.tok
            name += f" (overlap {overlap_pixels(tok.config.tile_size, self._tile_overlap, tok.spatial_stride)} px)"
        return name + (f"+refine{self._refine}" if self._refine else "")

    @property
    def tiling(self) -> dict[str, Any]:
        """How this codec cuts frames into tiles: the model's tiling (``Tokenizer.tiling``) with its overlap."""
        t = self.tok.tiling
        return t if self._tile_overlap is None else {**t, "overlap": self._tile_overlap}

    def plan(self, frames: int, height: int, width: int) -> Any:
        """The chunks and tiles this codec cuts a video of this geometry into (``Tokenizer.plan`` with its overlap)."""
        return self.tok.plan(frames, height, width, tile_overlap=self._tile_overlap)

    def _fitting(self, tables: EntropyTables) -> EntropyTables:
        """``tables`` if they fit this model's latents (channels; per-position tables: tokens per unit)."""
        tok = self.tok
        if tables.channels != tok.latent_channels:
            raise CodecError(f"{self.model_ref}: entropy tables have {tables.channels} channels, the model "
                             f"{tok.latent_channels}")
        if tables.unit_tokens not in (None, tok.max_tokens):
            raise CodecError(f"{self.model_ref}: entropy tables are for {tables.unit_tokens} tokens per unit, the "
                             f"model has {tok.max_tokens or 'a token grid'}")
        calibrated = tables.meta.get("weights_hash")
        if calibrated and calibrated != tok.weights_hash:   # e.g. new weights saved into a calibrated folder
            raise CodecError(f"{self.model_ref}: entropy tables were calibrated for other weights ({calibrated[:12]}, "
                             f"the model's are {tok.weights_hash[:12]}); refit them with `vitok calibrate DIR -y`")
        return tables

    @property
    def identity(self) -> str:
        """The model's weights, its config (tiling, clip length), the entropy tables (and the encoder's rounding,
        overlap, refinement and whether chunks continue their contexts) and the ``.vtok`` version: a model retrained
        or reconfigured in place codes differently, and another format frames it in other bytes."""
        rounding = self.tables.encoder_setting
        overlap = "" if self._tile_overlap is None else f"-overlap{self._tile_overlap:g}"
        carry = "-continued" if self.carries else ""   # chunks after the first code otherwise than before
        # q: a 1D model's refinement rounds its last steps to the step coded
        refine = f"-refine{self._refine}{'q' if self.is_1d else ''}" if self._refine else ""
        return (f"{self.tok.weights_hash[:16]}-{self.tok.config.digest()[:12]}-{self.tables.table_id}"
                f"{'-' + rounding if rounding else ''}{overlap}{refine}{carry}-v{VERSION}")

    def load(self) -> "VitokCodec":
        """Load the model and its tables now (errors surface before any video is read)."""
        _ = self.tables
        return self

    @property
    def is_1d(self) -> bool:
        return self.tok.max_tokens is not None

    def operating_points(self) -> list[dict[str, Any]]:
        """Grid models: every calibrated step; 1D models also every power-of-two token count at the default step."""
        points: list[dict[str, Any]] = [{"step": s} for s in self.tables.steps]
        if self.is_1d:  # a whole token curve (K down to 1) at the default step
            points += [{"tokens": k, "step": DEFAULT_STEP} for k in reversed(token_grid(self.tok.max_tokens))]
        return points

    # ---- one chunk ------------------------------------------------------------------------------------------
    def encode_chunk(self, frames: np.ndarray, *, step: float = DEFAULT_STEP, tokens: int | None = None,
                     prev: np.ndarray | None = None) -> ChunkCode:
        """Tokenize, quantize and entropy-code one chunk (at most ``clip_frames`` frames); ``prev``: the previous
        chunk's ``carry``, which it continues from (``_code``)."""
        self.tables.table_index(_float32_step(step))   # a step the stream cannot store is refused before encoding
        tokens = self._check_tokens(tokens)
        tokens_of = self._for_count(frames, self._tokens_of(frames), tokens, step)
        return self._code_tokens(tokens_of, frames.shape[0], tokens, step, prev)

    def _tokens_of(self, frames: np.ndarray) -> tuple[Any, tuple[int, int, int] | None]:
        """A chunk's tokens, every one (1D models: ``(units, K, C)``, whose prefixes are what ``encode`` keeps for
        fewer tokens), and the unit grid (None for 1D): rate control codes many settings from one encoder pass.
        A grid model's tokens come refined when the codec refines, unrounded (one refinement serves every step;
        rounding its last steps to the step coded bought the grid ViT nothing); a 1D model's are refined per token
        count and step (``_for_count``; per tile, ``_unit_costs``)."""
        from vitok.data.convert import frames_to_tensor

        x = frames_to_tensor(frames, device=self.tok.device)
        lat = self.tok.encode(x, tile_overlap=self._tile_overlap)
        z = lat.z[0].float()
        if self.is_1d:
            return z.view(lat.units, -1, z.shape[-1]), lat.grid
        return refine_tokens(self.tok, x, z, self._refine, tile_overlap=self._tile_overlap,
                             scale=self.tables.std), lat.grid

    def _for_count(self, frames: np.ndarray, tokens_of: tuple[Any, tuple[int, int, int] | None],
                   tokens: int | None, step: float) -> tuple[Any, tuple[int, int, int] | None]:
        """``_tokens_of``'s tokens as a chunk keeping ``tokens`` per unit at ``step`` codes them: a 1D model's
        refined for that count and step when the codec refines (the decoder renders the kept prefix alone), else as
        they are."""
        if not (self.is_1d and self._refine):
            return tokens_of
        from vitok.data.convert import frames_to_tensor

        z, grid = tokens_of
        x = frames_to_tensor(frames, device=self.tok.device)
        return self._refined(x, z.reshape(-1, z.shape[-1]), tokens, step).view(z.shape), grid

    def _refined(self, x: Any, z: Any, tokens: int | list[int] | None, step: float,
                 tiles: list[int] | None = None) -> Any:
        """A 1D chunk's tokens ``z`` ``(units * K, C)`` refined for ``tokens`` per unit (or one count per unit)
        coded at ``step``, every tile alone; ``tiles``: which tiles the units are (``refine_tokens``)."""
        return refine_tokens(self.tok, x, z, self._refine, tokens, self._tile_overlap, self.tables.std,
                             float(np.float32(step)), self.tables.mean, tiles)   # the step as the stream stores it

    def _code_tokens(self, tokens_of: tuple[Any, tuple[int, int, int] | None], frames: int, tokens: int | None,
                     step: float, prev: "np.ndarray | TokenCarry | None" = None) -> ChunkCode:
        """Code a chunk from ``_tokens_of``'s output, keeping ``tokens`` per unit (1D; None: all) at ``step``."""
        z, grid = tokens_of
        if self.is_1d:
            tokens = tokens or self.tok.max_tokens   # the count actually kept; grid: None (0 in the chunk header)
            z = z[:, :tokens].reshape(-1, z.shape[-1])
        return self._code(z, tokens, step, grid, frames, prev)

    @property
    def carries(self) -> bool:
        """Whether a chunk may continue from the chunk before: grid models with temporal tables continue its
        contexts, 1D models with inter tables predict its tokens."""
        return self.tables.predicts if self.is_1d else bool(self.tables.context_radius)

    def _code(self, z: Any, tokens: int | tuple[int, ...] | None, step: float, grid: tuple[int, int, int] | None,
              frames: int, prev: "np.ndarray | TokenCarry | None" = None) -> ChunkCode:
        """Quantize and entropy-code a chunk's kept tokens ``z`` (N, C) at ``step`` as the stream stores it
        (float32), continuing from ``prev`` (the chunk before's ``carry``) when given: a grid model's first latent
        frame's temporal contexts come from it; a 1D model predicts its tokens from it when that takes fewer bytes."""
        tables, step = self.tables, float(np.float32(step))
        index = tables.table_index(step)
        if isinstance(tokens, tuple) and len(set(tokens)) == 1:
            tokens = tokens[0]
        grids = context_grid(grid, tokens)
        if self.is_1d:
            q = tables.quantize(z, step, index, tokens=tokens, grid=grids)
            pred = None if prev is None or not self.carries else prev.prediction(tokens, step)
            data, pred = self._smaller(q, index, grids, tokens, pred)
            carry = TokenCarry.of(q, tokens, step, self.tok.max_tokens) if self.carries else None
            payload = pack_chunk(index | (0 if pred is None else CONTINUES), step, tokens, data)
            return ChunkCode(payload, q, tokens, step, index, frames,
                             tables.estimate_bits(q, index, grids, pred=pred), carry=carry)
        q = tables.quantize(z, step, index, tokens=tokens, grid=grids, prev=prev)
        flag = 0 if prev is None else CONTINUES
        payload = pack_chunk(index | flag, step, tokens or 0, tables.encode(q, index, grids, prev))
        carry = carried_frame(q, grid) if self.carries else None
        return ChunkCode(payload, q, tokens, step, index, frames, tables.estimate_bits(q, index, grids, prev),
                         carry=carry)

    def _smaller(self, q: np.ndarray, index: int, grids: Any, tokens: int | tuple[int, ...],
                 pred: Prediction | None) -> tuple[bytes, Prediction | None]:
        """A 1D chunk's coded integers, predicted by ``pred`` or not, whichever is shorter, and the prediction used
        (None: coded alone). Only the units (tiles) whose tokens the estimates say cost less predicted, and whose
        differences fit the inter tables, are predicted; with more than one unit their map comes first."""
        alone = self.tables.encode(q, index, grids)
        if pred is None:
            return alone, None
        counts = tokens if isinstance(tokens, tuple) else (tokens,) * (len(q) // tokens)
        starts = np.cumsum((0,) + tuple(counts[:-1]))
        by_token = [(bits.reshape(len(q), -1).sum(1), fits.reshape(len(q), -1).all(1))
                    for bits, fits in (self.tables.value_costs(q, index, grids, p) for p in (None, pred))]
        (bits, _), (bits_pred, fits) = by_token
        keep = (np.add.reduceat(bits_pred, starts) < np.add.reduceat(bits, starts)) & \
            np.logical_and.reduceat(fits, starts) & np.logical_or.reduceat(pred.mask, starts)
        if not keep.any():
            return alone, None
        pred = pred.for_units(keep, counts)
        head = unit_map(keep) if len(counts) > 1 else b""
        predicted = head + self.tables.encode(q, index, grids, pred=pred)
        return (predicted, pred) if len(predicted) < len(alone) else (alone, None)

    def decode_symbols(self, payload: bytes, frames: int, height: int, width: int,
                       prev: "np.ndarray | TokenCarry | None" = None) -> tuple[np.ndarray, int | None, float]:
        """Entropy-decode one chunk payload to its integers ``(tokens, C)``, its token count and step; ``prev``: the
        chunk before's ``carry_of``, which a chunk that continues from it (its ``continues`` bit) needs."""
        index, step, tokens, data = parse_chunk(payload)
        continues, index = bool(index & CONTINUES), index & ~CONTINUES
        if continues and not self.carries:
            raise BitstreamError("chunk continues from the chunk before, which these tables never do (no temporal "
                                 "context, or a 1D model's tables without inter tables)")
        if continues and prev is None:
            raise BitstreamError("chunk continues from the chunk before: decode it after that chunk (its carry_of), "
                                 "or from the stream's start")
        if index >= len(self.tables.tables):
            raise BitstreamError(f"chunk uses entropy table {index}, the model has {len(self.tables.tables)}")
        k, g = self.tok.max_tokens, self.plan(frames, height, width)
        counts = tokens if isinstance(tokens, tuple) else (tokens,)
        if (k is None) != (counts == (0,)) or (k is not None and max(counts) > k):
            raise BitstreamError(f"chunk says {_counts_text(tokens)} tokens per unit, the model takes "
                                 f"{'none (grid model)' if k is None else f'1..{k}'}")
        if isinstance(tokens, tuple) and len(tokens) != g.units:  # the per-unit form names every unit
            raise BitstreamError(f"chunk gives token counts for {len(tokens)} units, its frames make {g.units}")
        tokens = tokens or None
        grid = context_grid(self.tok.unit_grid(*g.unit_size), tokens)
        if self.is_1d:
            pred = None
            if continues:
                if not isinstance(prev, TokenCarry):
                    raise CodecError("a 1D model's chunk predicted from the chunk before needs that chunk's carry_of "
                                     "(a TokenCarry)")
                pred = prev.prediction(tokens, step)
                if pred is None:
                    raise BitstreamError("chunk predicts its tokens from the chunk before, whose tiles differ")
                if g.units > 1:   # which units are predicted: a bit each, first in the data
                    keep, data = read_unit_map(data, g.units)
                    pred = pred.for_units(keep, tokens if isinstance(tokens, tuple) else (tokens,) * g.units)
            return self.tables.decode(data, self._coded(g, tokens), index, grid, pred=pred), tokens, step
        q = self.tables.decode(data, self._coded(g, tokens), index, grid, prev if continues else None)
        return q, tokens, step

    def carry_of(self, q: np.ndarray, frames: int, height: int, width: int, tokens: int | tuple[int, ...] | None = None,
                 step: float | None = None) -> "np.ndarray | TokenCarry | None":
        """What the chunk after a decoded chunk continues from (None: nothing carries): its last latent frame per
        unit (grid models, the next chunk's temporal context), or its integers, token counts and ``step`` (1D models,
        the next chunk's prediction; ``tokens`` and ``step`` as ``decode_symbols`` gives them)."""
        if not self.carries:
            return None
        if self.is_1d:
            if tokens is None or step is None:
                raise CodecError("a 1D model's carry needs the chunk's tokens and step (as decode_symbols gives them)")
            return TokenCarry.of(q, tokens, step, self.tok.max_tokens)
        return carried_frame(q, self.tok.unit_grid(*self.plan(frames, height, width).unit_size))

    def coded_tokens(self, frames: int, height: int, width: int, tokens: int | tuple[int, ...] | None) -> int:
        """Tokens a chunk of this geometry codes: all of them, or ``tokens`` per unit for 1D models (a tuple:
        each unit's own count)."""
        return self._coded(self.plan(frames, height, width), tokens)

    def _coded(self, g: Any, tokens: int | tuple[int, ...] | None) -> int:
        if isinstance(tokens, tuple):
            return sum(tokens)
        return g.units * (self.tok.tokens_per_unit(*g.unit_size) if tokens is None else tokens)

    def reconstruct(self, q: np.ndarray, tokens: int | tuple[int, ...] | None, step: float, frames: int,
                    height: int, width: int) -> np.ndarray:
        """Integers -> latents -> uint8 frames ``(frames, height, width, 3)``."""
        from vitok.data.convert import tensor_to_frames

        return tensor_to_frames(self.tok.decode(self._latents(q, tokens, step, frames, height, width))[0])

    def _latents(self, q: np.ndarray, tokens: int | tuple[int, ...] | None, step: float, frames: int, height: int,
                 width: int) -> Any:
        """Integers -> the chunk's Latents (units keeping fewer than K tokens are zero-filled and masked)."""
        import torch

        tok = self.tok
        z = self.tables.dequantize(q, step, tokens=tokens).to(tok.device, tok.dtype)
        if not isinstance(tokens, tuple):
            return tok.make_latents(z[None], frames, height, width, num_tokens=tokens, tile_overlap=self._tile_overlap)
        K = tok.max_tokens
        keep = torch.arange(K, device=tok.device)[None] < torch.tensor(tokens, device=tok.device)[:, None]
        full = z.new_zeros(len(tokens) * K, z.shape[1])
        full[keep.reshape(-1)] = z
        return tok.make_latents(full[None], frames, height, width, mask=keep.reshape(1, -1),
                                tile_overlap=self._tile_overlap)

    def decode_chunk(self, payload: bytes, frames: int, height: int, width: int,
                     prev: "np.ndarray | TokenCarry | None" = None) -> np.ndarray:
        """Decode one chunk to uint8 frames; ``prev``: the chunk before's ``carry_of`` when this one continues it."""
        q, tokens, step = self.decode_symbols(payload, frames, height, width, prev)
        return self.reconstruct(q, tokens, step, frames, height, width)

    def _check_tokens(self, tokens: int | None) -> int | None:
        k = self.tok.max_tokens
        if tokens is None:
            return None
        if k is None:
            raise CodecError(f"{self.model_ref} is a grid model: --tokens is only for 1D models")
        if not (isinstance(tokens, (int, np.integer)) and 1 <= tokens <= k):
            raise CodecError(f"tokens must be an integer in 1..{k} for {self.model_ref}, got {tokens!r}")
        return int(tokens)

    # ---- rate control ---------------------------------------------------------------------------------------
    def _candidates(self, step: float | None) -> list[tuple[int | None, float]]:
        """(tokens, step) settings rate control chooses from, cheapest first."""
        if self.is_1d:
            s = DEFAULT_STEP if step is None else step
            return [(k, s) for k in token_grid(self.tok.max_tokens)]
        if step is not None:
            raise CodecError("--bytes/--psnr on a grid model choose the step per chunk: do not also give --step")
        return [(None, s) for s in sorted(self.tables.steps, reverse=True)]

    def _rate_candidates(self, step: float | None) -> list[tuple[int | None, float]]:
        """The settings ``--bytes``/``--psnr`` choose from per chunk, cheapest first: ``_candidates`` and settings
        between them (three steps between calibrated ones, evenly in log scale; 1D: also 3, 6, 12 ... tokens), so
        a target is met closely, not at the coarse grid's point below it (any step codes, any count decodes)."""
        coarse = self._candidates(step)
        if self.is_1d:
            k = self.tok.max_tokens
            counts = sorted({t for t, _ in coarse} | {3 << i for i in range(k.bit_length()) if 3 << i < k})
            return [(t, coarse[0][1]) for t in counts]
        fine = [(None, float(np.float32(a * (b / a) ** (j / 4))))
                for (_, a), (_, b) in zip(coarse, coarse[1:]) for j in range(4)]
        return fine + coarse[-1:]

    def _evaluate(self, frames: np.ndarray, tokens: int | None, step: float,
                  tokens_of: tuple[Any, Any], prev: np.ndarray | None = None) -> tuple[Candidate, ChunkCode]:
        """Code one setting of a chunk from its ``_tokens_of`` (``_for_count``'s for ``tokens``; continuing
        ``prev``'s contexts) and decode it: its candidate (bytes, distortion) and code."""
        code = self._code_tokens(tokens_of, frames.shape[0], tokens, step, prev)
        h, w = frames.shape[1:3]
        rec = self.reconstruct(code.q, code.tokens, code.step, frames.shape[0], h, w)
        cand = Candidate(tokens, code.step, code.payload, _sse(rec, frames), frames.size)
        code.psnr = cand.psnr
        return cand, code

    def _unit_costs(self, frames: np.ndarray, step: float) -> "_UnitChoices":
        """Tokenize a chunk once (1D model) and, for every candidate token count, code and decode each unit (tile)
        to get its estimated bits and blend-weighted squared error, from the tokens as the encoder gives them. A
        refining codec lays each count's tokens out apart, to be refined where rate control looks (``_refine_picks``;
        tiles are refined apart, so a tile's tokens for a count do not depend on the other tiles' counts)."""
        import torch

        from vitok.data.convert import frames_to_tensor

        K, counts = self.tok.max_tokens, token_grid(self.tok.max_tokens)
        x = frames_to_tensor(frames, device=self.tok.device)
        z = self.tok.encode(x, tile_overlap=self._tile_overlap).z[0].float()
        units = z.shape[0] // K
        z = z.view(units, K, -1)
        if self._refine:   # room for each count's own tokens, side by side (the tokens after a count are not coded)
            kept = torch.cat([z[:, :k] for k in counts], dim=1)
            starts = dict(zip(counts, np.cumsum([0, *counts[:-1]]).tolist()))
        else:
            kept, starts = z, dict.fromkeys(counts, 0)
        choices = _UnitChoices(UnitCosts(counts, np.zeros((units, len(counts))), np.zeros((units, len(counts))),
                                         frames.size), kept, starts, np.zeros((units, len(counts)), bool))
        for c in range(len(counts)):
            for u in range(units):
                self._cost_unit(x, choices, u, c, step)
        return choices

    def _cost_unit(self, x: Any, choices: "_UnitChoices", u: int, c: int, step: float) -> None:
        """Set unit ``u``'s estimated bits and blend-weighted squared error (on the frame's real pixels) for its
        ``c``-th candidate count, coded from ``choices.kept`` at ``step``: decoded as ``decode`` decodes the unit."""
        import torch

        from vitok.geometry import pad_region, real_blend_weights

        tok, tables = self.tok, self.tables
        k = choices.costs.counts[c]
        grid, index = context_grid(None, k), tables.table_index(step)
        q = tables.quantize(choices.tokens(u, k), step, index, tokens=k, grid=grid)
        choices.costs.bits[u, c] = tables.estimate_bits(q, index, grid)
        z = torch.zeros(tok.max_tokens, q.shape[1], device=tok.device, dtype=tok.dtype)
        z[:k] = tables.dequantize(q, step, tokens=k).to(tok.device, tok.dtype)
        g = self.plan(*x.shape[2:])
        i, j, y0, x0 = g.tiles()[u]
        with torch.inference_mode():
            tile = tok.decode_unit(z[None], tok.token_mask(1, k, tok.device), g.unit_size)
        ref = pad_region(x, g.unit_frames, g.rows.padded, g.cols.padded, y0, x0, g.rows.tile, g.cols.tile)
        err = (tile[0].float().clamp(-1, 1) - ref[0].float()) * 127.5
        choices.costs.sse[u, c] = float((err.square() * real_blend_weights(g, i, j, y0, x0, ref.device)).sum())

    def _refine_picks(self, chunks: list["_UnitChoices"], choose: Callable[[list[UnitCosts]], list[list[int]]],
                      step: float, opened: Callable[[int], Any]) -> bool:
        """Refine, where rate control looks, the tokens of a refining codec's ``chunks`` (``_unit_costs``' choices):
        every unit's count that ``choose`` picks (over every chunk's costs as they stand), the two counts below it
        and the one above, until the picks and their neighbours are refined ones. Refinement makes most counts
        decode better, so picks move down from the counts the encoder's tokens need, and up where a tile's given
        tokens gained nothing from a few more (its refined ones do); refining around the picks alone, not every
        count, is about twice as quick. ``opened(n)``: a context giving chunk n's frames and its choices with their
        tokens in memory. Says whether anything was refined."""
        if not self._refine:
            return False
        refined = False
        while True:
            worked = False
            for n, (chunk, pick) in enumerate(zip(chunks, choose([c.costs for c in chunks]))):
                reach = [(u, c) for u, p in enumerate(pick) for c in _around(p, len(chunk.costs.counts))]
                worked = self._refine_units(chunk, reach, step, lambda n=n: opened(n)) or worked
            if not worked:
                return refined
            refined = True

    def _refine_units(self, chunk: "_UnitChoices", wanted: Iterable[tuple[int, int]], step: float,
                      opened: Callable[[], Any]) -> bool:
        """Refine the (unit, candidate index) pairs of ``wanted`` that ``chunk`` has not refined yet (indices past
        its counts are skipped), cost them again, and say whether there were any. ``opened()``: a context giving the
        chunk's frames and its choices with their tokens in memory."""
        from vitok.data.convert import frames_to_tensor

        counts = chunk.costs.counts
        jobs = sorted({(u, c) for u, c in wanted if c < len(counts) and not chunk.refined[u, c]})
        if not self._refine or not jobs:
            return False
        with opened() as (frames, choices):
            x = frames_to_tensor(frames, device=self.tok.device)
            z = choices.kept.new_zeros(len(jobs), self.tok.max_tokens, choices.kept.shape[-1])
            for j, (u, c) in enumerate(jobs):
                z[j, :counts[c]] = choices.tokens(u, counts[c])
            out = self._refined(x, z.reshape(-1, z.shape[-1]), [counts[c] for _, c in jobs], step,
                                [u for u, _ in jobs]).view(z.shape)
            for j, (u, c) in enumerate(jobs):
                choices.tokens(u, counts[c])[:] = out[j, :counts[c]]
                choices.refined[u, c] = True
                self._cost_unit(x, choices, u, c, step)
        return True

    def _code_units(self, choices: "_UnitChoices", tokens: tuple[int, ...], step: float, frames: int,
                    prev: TokenCarry | None = None) -> ChunkCode:
        """Code ``tokens[u]`` tokens of each unit u, as ``choices`` (``_unit_costs``') hold them, predicted from
        ``prev`` when that is shorter."""
        import torch

        return self._code(torch.cat([choices.tokens(u, k) for u, k in enumerate(tokens)]), tokens, step, None,
                          frames, prev)

    def _units_to_psnr(self, frames: np.ndarray, step: float, target: float,
                       prev: TokenCarry | None = None) -> ChunkCode:
        """The chunk's cheapest per-unit token counts reaching ``target`` dB (``units_for_psnr``), each setting
        tried coded and decoded once (predicted from ``prev`` where shorter: the bytes, not the pixels, change)."""
        choices = self._unit_costs(frames, step)
        tried: dict[tuple[int, ...], ChunkCode] = {}

        def opened(*_: Any) -> Any:
            return contextlib.nullcontext((frames, choices))

        self._refine_picks([choices], lambda every: [pick_units_psnr(every[0], target)], step, opened)

        def measure(tokens: tuple[int, ...]) -> tuple[float, int]:
            # an aim below the target may pick counts not refined yet: every count coded is a refined one
            self._refine_units(choices, enumerate(map(choices.costs.counts.index, tokens)), step, opened)
            code = self._code_units(choices, tokens, step, frames.shape[0], prev)
            rec = self.reconstruct(code.q, code.tokens, step, *frames.shape[:3])
            code.psnr = psnr_from_sse(_sse(rec, frames), frames.size)
            tried[tokens] = code
            return code.psnr, len(code.payload)

        return tried[units_for_psnr(choices.costs, target, measure)]

    def _units_to_bytes(self, chunks: Iterable[np.ndarray], step: float, target_bytes: int,
                        header_bytes: int) -> Iterator[ChunkCode]:
        """Token counts for every unit of every chunk so the file fits ``target_bytes`` with the least total
        distortion (allocation on the entropy model's estimates of chunks coded alone, tightened until the real
        payloads fit, and loosened while they leave bytes unspent, as predicted chunks do). Each chunk's latents and
        payloads wait in a spill file, so memory does not grow with the video. A refining codec spills each chunk's
        frames too (refined once every chunk is costed: a minute of 1080p at 30 fps is about 11 GB of the temporary
        folder), and its tokens again each time more of them are refined."""
        import torch

        with Spill() as spill:
            # per chunk: its frame count, its frames (refining: spilled, refined later), its choices with their
            # tokens spilled (``loaded`` brings them back while they are used)
            evaluated = []
            for chunk in chunks:
                choices = self._unit_costs(chunk, step)
                evaluated.append([chunk.shape[0], spill.put_array(chunk) if self._refine else None,
                                  replace(choices, kept=spill.put_array(choices.kept.cpu().numpy()))])
            costs = [choices.costs for _, _, choices in evaluated]
            budget = target_bytes - header_bytes   # for the chunks, framed
            # room for framing and for chunk headers with a count per unit (distinct counts: header_size's longest)
            room = budget - sum(framing_bytes(max(budget, 0)) + header_size(range(1, len(c.bits) + 1)) for c in costs)

            def weighed(every: list[UnitCosts]) -> tuple[list[list[Cost]], float, float]:
                """Every unit's options, and the estimates of the cheapest and the dearest picks."""
                options = [opt for c in every for opt in c.options()]
                return options, cheapest_bytes(options), sum(max(c.nbytes for c in o) for o in options)

            def choose(target: float | None = None) -> Callable[[list[UnitCosts]], list[list[int]]]:
                """Every chunk's picks at ``target`` (None: the estimates' target, as below)."""
                def picks(every: list[UnitCosts]) -> list[list[int]]:
                    options, floor, _ = weighed(every)
                    pick = allocate_bytes(options, max(room if target is None else target, floor))
                    at = np.cumsum([0] + [len(c.bits) for c in every])
                    return [pick[a:b] for a, b in zip(at, at[1:])]
                return picks

            @contextlib.contextmanager
            def loaded(entry: list, changing: bool = False) -> Iterator[_UnitChoices]:
                """A chunk's choices with their tokens in memory while used (spilled again after when ``changing``)."""
                stored = entry[2]
                held = replace(stored, kept=torch.from_numpy(spill.get_array(stored.kept)).to(self.tok.device))
                yield held
                if changing:
                    entry[2] = replace(stored, kept=spill.put_array(held.kept.cpu().numpy()))

            @contextlib.contextmanager
            def refinable(n: int) -> Iterator[tuple[np.ndarray, _UnitChoices]]:
                with loaded(evaluated[n], changing=True) as held:
                    yield spill.get_array(evaluated[n][1]), held

            self._refine_picks([entry[2] for entry in evaluated], choose(), step, refinable)
            options, floor, ceiling = weighed(costs)
            target = max(room, floor)   # below the estimates' floor, the fewest tokens are coded to tell
            best, fit, over = None, None, None
            for attempt in range(8):
                # another target may pick counts not refined yet: refine around them, so every count coded is refined
                if self._refine_picks([entry[2] for entry in evaluated], choose(target), step, refinable):
                    options, floor, ceiling = weighed(costs)
                    target = max(target, floor)   # refined counts may cost more than the floor it was aimed at
                pick, coded, at, prev = allocate_bytes(options, target), [], 0, None
                for entry in evaluated:
                    frames, units = entry[0], len(entry[2].costs.bits)
                    with loaded(entry) as held:
                        code = self._code_units(held, held.costs.tokens(pick[at:at + units]), step, frames, prev)
                    prev = code.carry
                    coded.append((spill.put(code.payload), replace(code, q=None, payload=b"", carry=None)))
                    at += units
                real = sum(item.nbytes + framing_bytes(item.nbytes) for item, _ in coded)
                estimated = sum(opts[i].nbytes for opts, i in zip(options, pick))
                if real <= budget:
                    error = sum(o[i].sse for o, i in zip(options, pick))
                    if best is None or error < best[0]:
                        best = (error, coded)
                    fit = target
                    if target >= ceiling or real >= 0.99 * budget:
                        break
                elif estimated <= floor:
                    break
                else:
                    over = target
                if fit is None:   # aim the estimate below this pick's by what the real bytes ran over (doubled each
                    # round), so every round picks fewer tokens; the last round tries the fewest
                    target = floor if attempt == 6 else max(floor, estimated - (real - budget) * 2 ** attempt)
                elif over is None:   # it fit with bytes to spare (chunks predicted from the one before cost less
                    # than estimated): aim higher by what is left, doubled each round
                    target = min(ceiling, target + (budget - real) * 2 ** attempt)
                elif over - fit < 1:
                    break
                else:
                    target = (fit + over) / 2
            if best is None:
                raise CodecError(f"byte budget too small: {target_bytes} bytes; the cheapest setting takes "
                                 f"{real + target_bytes - budget}")
            for item, code in best[1]:
                yield replace(code, payload=spill.get(item))

    def _per_tile(self, frames: np.ndarray, adapt_units: bool) -> bool:
        """Whether rate control picks a token count per tile for chunks like ``frames``: asked to (``adapt_units``),
        on a 1D model whose frames span several tiles."""
        return adapt_units and self.is_1d and self.plan(*frames.shape[:3]).units > 1

    def _code_chunks(self, chunks: Iterable[np.ndarray], step: float | None, tokens: int | None,
                     target_bytes: int | None, psnr: float | None, header_bytes: int,
                     adapt_units: bool = True) -> Iterator[ChunkCode]:
        """Each chunk's code for the knob given; with ``target_bytes``, the file's ``header_bytes`` and every
        chunk's framing fit in it too."""
        if psnr is None and target_bytes is None:
            prev = None
            for chunk in chunks:
                code = self.encode_chunk(chunk, step=DEFAULT_STEP if step is None else step, tokens=tokens, prev=prev)
                prev = code.carry
                yield code
            return
        grid = self._rate_candidates(step)
        chunks = iter(chunks)
        first = next(chunks, None)
        if first is None:
            return
        chunks = itertools.chain([first], chunks)
        if self._per_tile(first, adapt_units):
            unit_step = float(np.float32(DEFAULT_STEP if step is None else step))   # as _code codes it
            if psnr is not None:
                prev = None
                for chunk in chunks:
                    code = self._units_to_psnr(chunk, unit_step, psnr, prev)
                    prev = code.carry
                    yield code
            else:
                yield from self._units_to_bytes(chunks, unit_step, target_bytes, header_bytes)
            return
        if psnr is not None:
            prev = None
            for chunk in chunks:
                codes: dict[int, ChunkCode] = {}
                tokens_of = self._tokens_of(chunk)

                def evaluate(i: int, chunk=chunk, codes=codes, tokens_of=tokens_of, prev=prev) -> Candidate:
                    counted = self._for_count(chunk, tokens_of, *grid[i])
                    cand, codes[i] = self._evaluate(chunk, *grid[i], counted, prev)
                    return cand

                plains: dict[int, float] = {}

                def plain(i: int, chunk=chunk, tokens_of=tokens_of, seen=plains) -> float:
                    """A count's PSNR from the encoder's tokens: a refining 1D codec's guess of its refined one."""
                    if i not in seen:
                        seen[i] = self._evaluate(chunk, *grid[i], tokens_of)[0].psnr
                    return seen[i]

                # refining a count costs a forward and a backward pass per step, coding it plain one decode: the
                # plain counts say where to look
                chosen = pick_psnr(len(grid), evaluate, psnr, plain if self.is_1d and self._refine else None)
                code = next(c for c in codes.values() if c.payload is chosen.payload)
                prev = code.carry
                yield code
            return
        yield from self._chunks_to_bytes(chunks, grid, target_bytes, header_bytes)

    def _chunks_to_bytes(self, chunks: Iterable[np.ndarray], grid: list[tuple[int | None, float]],
                         target_bytes: int, header_bytes: int) -> Iterator[ChunkCode]:
        """A setting of ``grid`` for every chunk so the file fits ``target_bytes`` with the least total distortion.
        Every chunk's settings are coded and decoded first; when chunks continue the temporal contexts of the
        chunk before, each setting is weighed coded after the chunk before's same setting, so one setting for every
        chunk costs exactly what was weighed. The allocation's pick is then coded in turn from the latents (they
        wait in a spill file): a chunk whose setting follows another costs other bytes than weighed, and its PSNR
        goes unmeasured (one coded after the contexts it was weighed after, as contexts read them, came out as
        weighed: its integers, payload and distortion depend on nothing else). The allocation tightens until the
        real bytes fit, and the best single setting that fits stands in when the allocation's picks decode worse. (A
        1D model's chunk predicted from another chunk than weighed after costs other bytes, but its integers and so
        its PSNR are what was weighed.) A refining 1D codec weighs every setting from the encoder's tokens first and
        refines where the allocation looks, as per-tile rate control does (``_refine_picks``): each chunk's pick,
        the two settings below it and the one above, until the picks rest on refined settings, which are all it
        codes; its frames wait in the spill meanwhile."""
        import torch

        budget = target_bytes - header_bytes
        lazy = self.is_1d and bool(self._refine)   # a 1D chunk is refined per count: only the counts looked at
        with Spill() as spill:
            options, kept, carries = [], [], [None] * len(grid)
            for chunk in chunks:
                tokens_of = self._tokens_of(chunk)
                counted = [tokens_of if lazy else self._for_count(chunk, tokens_of, *g) for g in grid]
                pairs = [self._evaluate(chunk, *g, counted[i], carries[i]) for i, g in enumerate(grid)]
                options.append([Cost(cand.nbytes + framing_bytes(cand.nbytes), cand.sse) for cand, _ in pairs])
                carries = [code.carry for _, code in pairs]
                spilled: dict[int, Spilled] = {}   # each distinct tokens once
                for z, _ in counted:
                    if id(z) not in spilled:
                        spilled[id(z)] = spill.put_array(z.cpu().numpy())
                latents = [spilled[id(z)] for z, _ in counted]
                kept.append(_Weighed(latents, tokens_of[1], chunk.shape[0], chunk.size,
                                     [self._context_digest(c) for c in carries], [not lazy] * len(grid),
                                     spill.put_array(chunk) if lazy else None))

            def tokens(c: int, i: int) -> tuple[Any, tuple[int, int, int] | None]:
                """Chunk c's tokens for setting i, as ``_tokens_of`` gives them."""
                return torch.from_numpy(spill.get_array(kept[c].latents[i])).to(self.tok.device), kept[c].unit_grid

            def carry(c: int, i: int) -> Any:
                """What chunk c hands the next at setting i (None: nothing carries, or there is no chunk c)."""
                if c < 0 or not self.carries:
                    return None
                return self._code_tokens(tokens(c, i), kept[c].frames, *grid[i]).carry

            def refine(pick: list[int]) -> bool:
                """Refine each chunk's picked setting, the two below it and the one above, where not refined yet, and
                weigh again the bytes of a setting coded after one the chunk before changed; says whether any was."""
                refined, stale = False, set()   # stale: (chunk, setting) weighed after a carry since refined
                for c, (weighed, p) in enumerate(zip(kept, pick)):
                    todo = [i for i in _around(p, len(grid)) if not weighed.refined[i]]
                    if not todo:
                        continue
                    frames, given = spill.get_array(weighed.source), tokens(c, todo[0])   # the encoder's tokens
                    for i in todo:
                        counted = self._for_count(frames, given, *grid[i])
                        cand, code = self._evaluate(frames, *grid[i], counted, carry(c - 1, i))
                        options[c][i] = Cost(cand.nbytes + framing_bytes(cand.nbytes), cand.sse)
                        weighed.latents[i] = spill.put_array(counted[0].cpu().numpy())
                        weighed.carries[i], weighed.refined[i] = self._context_digest(code.carry), True
                        stale.discard((c, i))
                        if self.carries and c + 1 < len(kept):
                            stale.add((c + 1, i))
                    refined = True
                for c, i in stale:
                    n = len(self._code_tokens(tokens(c, i), kept[c].frames, *grid[i], carry(c - 1, i)).payload)
                    options[c][i] = Cost(n + framing_bytes(n), options[c][i].sse)
                return refined

            def coded_in_turn(pick: list[int]) -> tuple[list[tuple[Spilled, ChunkCode]], int]:
                coded, prev = [], None
                for c, (weighed, i) in enumerate(zip(kept, pick)):
                    code = self._code_tokens(tokens(c, i), weighed.frames, *grid[i], prev)
                    as_weighed = self._context_digest(prev) == (kept[c - 1].carries[i] if c else None)
                    # a 1D model's integers never depend on the chunk before (its prediction changes bytes alone)
                    psnr = psnr_from_sse(options[c][i].sse, weighed.pixels) if as_weighed or self.is_1d else None
                    prev = code.carry
                    coded.append((spill.put(code.payload), replace(code, q=None, payload=b"", carry=None, psnr=psnr)))
                return coded, sum(item.nbytes + framing_bytes(item.nbytes) for item, _ in coded)

            def sse(pick: list[int]) -> float:
                return sum(o[i].sse for o, i in zip(options, pick))

            def single() -> list[int] | None:
                """The best setting for every chunk that fits the budget as weighed (refined ones alone)."""
                fitting = [[i] * len(kept) for i in range(len(grid))
                           if all(w.refined[i] for w in kept) and sum(o[i].nbytes for o in options) <= budget]
                return min(fitting, key=sse, default=None)

            if lazy and cheapest_bytes(options) > budget:   # refined, the fewest tokens may cost less
                refine([0] * len(kept))
            floor = cheapest_bytes(options)
            best, best_coded, real = single(), None, None
            target, fit, over = budget, None, None
            for attempt in range(8):
                # refine around this target's picks until they rest on refined settings: every setting coded is one
                moved = False   # (refined counts may cost more: a target the floor passed allocates the floor)
                while lazy and refine(allocate_bytes(options, max(target, cheapest_bytes(options)))):
                    moved = True
                if moved:
                    floor, alone = cheapest_bytes(options), single()
                    target = max(target, floor)
                    if alone is not None and (best is None or sse(alone) < sse(best)):
                        best, best_coded = alone, None
                pick = allocate_bytes(options, target, reserved=header_bytes)
                if best is not None and sse(pick) >= sse(best):
                    fit = target   # no better than what fits already: only more bytes could help
                else:
                    coded, real = coded_in_turn(pick)
                    if real <= budget:
                        fit, best, best_coded = target, pick, coded
                    else:
                        over = target
                if over is None or (fit is None and target <= floor) or (fit is not None and over - fit < 1):
                    break
                # below the budget by what the real bytes ran over (doubled each round) until a pick fits, then
                # halfway between the highest target that fit and the lowest that did not
                target = max(floor, target - (real - budget) * 2 ** attempt) if fit is None else (fit + over) / 2
            if best is None:
                raise CodecError(f"byte budget too small: {target_bytes} bytes; the cheapest setting takes "
                                 f"{real + header_bytes}")
            for item, code in best_coded or coded_in_turn(best)[0]:
                yield replace(code, payload=spill.get(item))

    def _context_digest(self, carry: "np.ndarray | TokenCarry | None") -> bytes | None:
        """A digest of a carry as the next chunk reads it (a carried frame clipped to the temporal radius)."""
        if carry is None:
            return None
        if isinstance(carry, TokenCarry):
            return carry.digest()
        r = self.tables.context_radius
        return hashlib.blake2b(np.clip(carry, -r, r).astype(np.int8).tobytes(), digest_size=16).digest()

    # ---- whole clips ----------------------------------------------------------------------------------------
    def header_meta(self, step: float | None, width: int, height: int,
                    sample_aspect_ratio: Fraction = Fraction(1)) -> dict[str, Any]:
        """The header's metadata: model identity, tables, the step asked for (None when rate control picks it), the
        tiling when frames span more than one tile (every tiling cuts a one-tile frame alike), and the pixel aspect
        when pixels are not square."""
        tok = self.tok
        meta = {"codec": "vitok", "model": tok.config.name, "weights": tok.weights_hash[:WEIGHTS_ID_CHARS],
                "kind": tok.config.kind, "channels": tok.latent_channels, "tables": self.tables.table_id,
                "step": None if step is None else float(np.float32(step))}
        if self.plan(1, height, width).layout[1:] != (1, 1):
            meta["tiling"] = self.tiling
        sar = sar_record(sample_aspect_ratio)
        if sar is not None:
            meta["sar"] = sar
        return meta

    def check_knobs(self, step: float | None = None, tokens: int | None = None, bytes: int | None = None,
                    psnr: float | None = None, adapt_units: bool = True, overlap: int | None = None,
                    refine: int | None = None) -> None:
        """Refuse knobs this model would refuse, naming the bad one, before any frame is coded (`vitok rd` checks
        its operating points with it before any work)."""
        if overlap is not None:
            self.with_overlap(overlap)
        if refine is not None:
            check_refine(refine)
        if step is not None:
            self.tables.table_index(_float32_step(step))
        if bytes is not None and (isinstance(bytes, bool) or not isinstance(bytes, (int, np.integer)) or bytes <= 0):
            raise CodecError(f"bytes must be a positive integer, got {bytes!r}")
        if psnr is not None and (isinstance(psnr, bool) or not isinstance(psnr, (int, float, np.integer, np.floating))
                                 or not math.isfinite(psnr)):
            raise CodecError(f"psnr must be a finite number of dB, got {psnr!r}")
        self._check_tokens(tokens)
        if sum(x is not None for x in (tokens, bytes, psnr)) > 1:
            raise CodecError("give at most one of tokens, bytes, psnr")
        if step is not None and (bytes is not None or psnr is not None):
            self._candidates(step)   # a grid model picks the step itself

    def encode_stream(self, chunks: Iterable[np.ndarray], fps: Fraction, out: BinaryIO, *,
                      step: float | None = None, tokens: int | None = None, bytes: int | None = None,
                      psnr: float | None = None, adapt_units: bool = True, overlap: int | None = None,
                      refine: int | None = None, on_chunk: Callable[[int], None] | None = None,
                      sample_aspect_ratio: Fraction = Fraction(1)) -> EncodeStats:
        """Encode frames arriving in arrays of any length into ``out`` (a seekable binary file), chunk by chunk.
        ``adapt_units``: with ``bytes``/``psnr``, a 1D model whose frames span several tiles picks a token count
        per tile (else one per chunk). ``overlap``: tiles overlap by this many pixels (``with_overlap``).
        ``refine``: Adam steps on each chunk's tokens through the decoder before quantizing (``with_refinement``).
        ``sample_aspect_ratio``: the source's pixel shape, kept in the header for the decoded video."""
        if overlap is not None or refine is not None:
            twin = self if overlap is None else self.with_overlap(overlap)
            return (twin if refine is None else twin.with_refinement(refine)).encode_stream(
                chunks, fps, out, step=step, tokens=tokens, bytes=bytes, psnr=psnr, adapt_units=adapt_units,
                on_chunk=on_chunk, sample_aspect_ratio=sample_aspect_ratio)
        t0 = time.perf_counter()
        self.check_knobs(step=step, tokens=tokens, bytes=bytes, psnr=psnr)
        if not sample_aspect_ratio > 0:
            raise CodecError(f"sample_aspect_ratio must be positive, got {sample_aspect_ratio!r}")
        it = _rechunk(chunks, self.tok.clip_frames)
        first = next(it, None)
        if first is None:
            raise BitstreamError("empty input video: no frames to encode")
        h, w = first.shape[1:3]
        asked = DEFAULT_STEP if step is None and bytes is None and psnr is None else step
        header = VtokHeader(w, h, fps, self.tok.clip_frames, meta=self.header_meta(asked, w, h, sample_aspect_ratio))
        writer = VtokWriter(out, header)   # packing the header checks it, before anything is written
        stats = EncodeStats(width=w, height=h, fps=fps)

        def frames_checked() -> Iterator[np.ndarray]:
            yield first
            for chunk in it:
                if chunk.shape[1:3] != (h, w):
                    raise CodecError(f"frame size changed mid-video: {chunk.shape[2]}x{chunk.shape[1]} after {w}x{h}")
                yield chunk

        for code in self._code_chunks(frames_checked(), step, tokens, bytes, psnr, writer.header_bytes,
                                      adapt_units):
            writer.write_chunk(code.payload, code.frames)
            stats.tokens.append(code.tokens)
            stats.coded_tokens += self.coded_tokens(code.frames, h, w, code.tokens)
            stats.steps.append(code.step)
            stats.chunk_bytes.append(len(code.payload))
            stats.chunk_psnr.append(code.psnr)
            stats.entropy_bytes += len(code.payload) - header_size(code.tokens or 0)
            stats.estimated_bytes += code.estimated_bits / 8
            if on_chunk:
                on_chunk(code.frames)
        hdr = writer.close()
        stats.frames, stats.chunks, stats.payload_bytes = hdr.frames, hdr.num_chunks, writer.payload_bytes
        stats.file_bytes = out.tell()
        stats.seconds = time.perf_counter() - t0
        return stats

    def encode(self, frames: np.ndarray, fps: Fraction, **knobs: Any) -> bytes:
        data, _ = self.encode_with_stats(frames, fps, **knobs)
        return data

    def encode_with_stats(self, frames: np.ndarray, fps: Fraction, **knobs: Any) -> tuple[bytes, EncodeStats]:
        """``encode`` that also returns the byte accounting (estimate vs real)."""
        frames, fps = check_frames(frames, fps)
        buf = io.BytesIO()
        stats = self.encode_stream([frames], fps, buf, **knobs)
        return buf.getvalue(), stats

    def iter_symbols(self, source: str | os.PathLike | bytes, reader: VtokReader | None = None, skip: int = 0
                     ) -> Iterator[tuple[ChunkInfo, np.ndarray, int | None, float]]:
        """Per chunk ``(info, integers (tokens, C), tokens per unit or None, step)``, after checking the stream
        matches this model: the bitstream half of decoding, without the neural decoder. The first ``skip`` chunks
        are not yielded (entropy-decoded only when chunks continue the contexts of the chunk before)."""
        with (reader or VtokReader(source)) as r:
            coder = self.for_stream(r.header)
            coder.check_header(r.header)
            h = r.header
            prev = None
            for info, payload in r.chunks():
                if info.index < skip and not coder.carries:
                    continue
                try:
                    q, tokens, step = coder.decode_symbols(payload, info.frames, h.height, h.width, prev)
                except BitstreamError as e:
                    raise BitstreamError(f"{r.name}: chunk {info.index}: {e}") from None
                prev = coder.carry_of(q, info.frames, h.height, h.width, tokens, step)
                if info.index >= skip:
                    yield info, q, tokens, step

    def iter_decode(self, source: str | os.PathLike | bytes, reader: VtokReader | None = None, *, start: int = 0,
                    frames: int | None = None) -> Iterator[np.ndarray]:
        """Decoded frames chunk by chunk (``(t,H,W,3)`` uint8) after checking the stream matches this model;
        ``start``/``frames``: only those (at most ``frames`` from frame ``start``): only the chunks holding them go
        through the neural decoder."""
        reader = reader or VtokReader(source)
        h = reader.header
        with _closed_on_error(reader):
            stop = start + frame_count(h.frames, start, frames)
            coder = self.for_stream(h)
        last = (stop - 1) // h.chunk_frames
        symbols = coder.iter_symbols(source, reader=reader, skip=start // h.chunk_frames)
        for info, q, tokens, step in symbols:
            at = info.index * h.chunk_frames
            yield coder.reconstruct(q, tokens, step, info.frames, h.height, h.width)[max(start - at, 0):stop - at]
            if info.index == last < h.num_chunks - 1:
                symbols.close()   # the chunks after are not read
                return

    def iter_latents(self, source: str | os.PathLike | bytes, reader: VtokReader | None = None
                     ) -> Iterator[tuple[ChunkInfo, Any]]:
        """Per chunk ``(info, vitok.Latents)``: the latents the stream's integers stand for, without the neural
        decoder (``self.tok.decode`` of them gives ``iter_decode``'s frames): a .vtok as latent storage."""
        reader = reader or VtokReader(source)
        h = reader.header
        with _closed_on_error(reader):
            coder = self.for_stream(h)
        for info, q, tokens, step in coder.iter_symbols(source, reader=reader):
            yield info, coder._latents(q, tokens, step, info.frames, h.height, h.width)

    def check_header(self, header: VtokHeader) -> None:
        """Refuse streams of another codec, from another model or tables (``check_model``), or cut in other tiles."""
        if header.meta.get("codec") != "vitok":
            raise BitstreamError(f"not a vitok stream (codec {header.meta.get('codec')!r})")
        self.check_model(header)
        self._check_tiling(header)

    def check_model(self, header: VtokHeader) -> None:
        """Refuse a stream from another model (name or weights differ, or a kind, channel count or chunk length that
        is not the model's) or other entropy tables than this codec's (``for_stream`` picks kept ones first)."""
        meta, tok = header.meta, self.tok
        theirs = (meta.get("model"), str(meta.get("weights", "")))
        ours = (tok.config.name, tok.weights_hash[:WEIGHTS_ID_CHARS])
        if theirs != ours:
            raise BitstreamError(f"model mismatch: the stream was encoded with {theirs[0]!r} (weights {theirs[1]}), "
                                 f"the decoder has {ours[0]!r} (weights {ours[1]})")
        for key, value in (("kind", tok.config.kind), ("channels", tok.latent_channels)):
            if meta.get(key) != value:
                raise BitstreamError(f"header says {key} {meta.get(key)!r}, the model {tok.config.name!r} has "
                                     f"{value!r}")
        if meta.get("tables") != self.tables.table_id:
            raise BitstreamError(f"entropy table mismatch: the stream used tables {meta.get('tables')!r}, the model "
                                 f"has {self.tables.table_id!r}")
        if header.chunk_frames != tok.clip_frames:   # the encoder always cuts clip_frames; an edit would decode longer
            raise BitstreamError(f"header says chunks of {header.chunk_frames} frames, the model {tok.config.name!r} "
                                 f"codes chunks of {tok.clip_frames}")

    def _check_tiling(self, header: VtokHeader) -> None:
        """Refuse a stream whose tiles of its frames differ from what this model would cut. Without ``tiling`` the
        frames are one tile, or the stream predates the record and used tiles of exactly the config's size."""
        from vitok.geometry import plan_axis

        ours = self.tiling
        theirs = header.meta.get("tiling", {**self.tok.tiling, "fit": False})
        if theirs == ours:
            return
        stride = self.tok.spatial_stride
        if not _valid_tiling(theirs, stride):
            raise BitstreamError(f"bad tiling record in the header: {theirs!r}")

        def axes(t: dict[str, Any]) -> list[Any]:
            return [plan_axis(n, stride, t["tile"], t["overlap"], t["fit"]) for n in (header.height, header.width)]

        if axes(theirs) != axes(ours):
            how = theirs if "tiling" in header.meta else ("one whole-frame tile (the stream holds no tiling record; "
                                                          "an earlier vitok also left it out for fixed tiles)")
            raise BitstreamError(f"tiling mismatch: the stream cut {header.width}x{header.height} frames into {how}, "
                                 f"the model cuts them {ours}; encode the video again with this model")

    def decode(self, data: bytes) -> tuple[np.ndarray, Fraction]:
        with VtokReader(data) as r:
            fps = r.header.fps
            frames = list(self.iter_decode(data, reader=r))
        return np.concatenate(frames), fps

    def tokens_per_chunk(self, data: bytes) -> list[int]:
        """Tokens coded in each chunk (all units and tiles), read from the chunk headers."""
        out = []
        with VtokReader(data) as r:
            h = r.header
            coder = self.for_stream(h)   # the stream's tiling
            for info, payload in r.chunks():
                _, _, tokens, _ = parse_chunk(payload)
                out.append(coder.coded_tokens(info.frames, h.height, h.width, tokens or None))
        return out

    def stream_bytes(self, data: bytes) -> int:
        """Bytes of the chunk payloads (what the entropy coder produced plus 7-byte chunk headers)."""
        with VtokReader(data) as r:
            return sum(info.nbytes for info, _ in r.chunks())


def frame_count(total: int, start: int, frames: int | None) -> int:
    """How many frames a decode of at most ``frames`` (None: all) from frame ``start`` of ``total`` gives; a start
    past the end, or a count below 1, is a CodecError."""
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < total:
        raise CodecError(f"start must be a frame index in 0..{total - 1} (the stream has {total} frames), "
                         f"got {start!r}")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1):
        raise CodecError(f"frames must be a positive integer, got {frames!r}")
    return total - start if frames is None else min(int(frames), total - start)


def model_for_stream(source: str | os.PathLike, device: str = "cpu") -> VitokCodec:
    """The codec for the model a ``.vtok`` names (a bundled model); others need an explicit model."""
    with VtokReader(source) as r:
        name = r.header.meta.get("model")
    bundled = find_bundled(name) if isinstance(name, str) else None
    if bundled is None:
        raise BitstreamError(f"{source}: encoded with model {name!r}, which is not bundled here; pass --model "
                             "<model dir>")
    return VitokCodec(bundled, device=device)


def _rechunk(arrays: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Re-slice a stream of frame arrays into chunks of exactly ``size`` frames (the last may be shorter)."""
    buf: list[np.ndarray] = []
    have = 0
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
            raise CodecError(f"frames must be uint8 (T,H,W,3), got {getattr(a, 'dtype', type(a))} "
                             f"{getattr(a, 'shape', '')}")
        while a.shape[0]:
            take = min(size - have, a.shape[0])
            buf.append(a[:take])
            have += take
            a = a[take:]
            if have == size:
                yield buf[0] if len(buf) == 1 else np.concatenate(buf)
                buf, have = [], 0
    if have:
        yield buf[0] if len(buf) == 1 else np.concatenate(buf)


@contextlib.contextmanager
def _closed_on_error(reader: VtokReader) -> Iterator[None]:
    """Close ``reader`` when what runs before ``iter_symbols`` owns it fails (a bad range, another model's stream)."""
    try:
        yield
    except BaseException:
        reader.close()
        raise


@dataclass
class _Weighed:
    """What a byte budget keeps in memory of one chunk while it allocates: where each setting's latents wait in the
    spill (one file entry for them all, unless refinement made them differ), their unit grid, its frames and pixels,
    per setting a digest of the context it hands on and whether it is refined (or needs no refinement), and where
    the frames wait (``source``: a refining 1D codec's, refined later)."""

    latents: list[Spilled]
    unit_grid: tuple[int, int, int] | None
    frames: int
    pixels: int
    carries: list[bytes | None]
    refined: list[bool]
    source: Spilled | None


@dataclass
class _UnitChoices:
    """One chunk's options for per-unit (tile) rate control: ``costs`` of every candidate count, and the tokens each
    count codes: unit u keeping k tokens codes ``kept[u, starts[k]:starts[k] + k]``, the encoder's first k until
    ``refined[u, c]`` (c: k's index in ``costs.counts``) says they were refined for k."""

    costs: UnitCosts
    kept: Any
    starts: dict[int, int]
    refined: np.ndarray

    def tokens(self, u: int, k: int) -> Any:
        """The k tokens ``(k, C)`` unit u codes when it keeps k."""
        return self.kept[u, self.starts[k]:self.starts[k] + k]


def _around(pick: int, n: int) -> range:
    """The candidates (of ``n``) refinement looks at around a pick: the pick, the two below it and the one above."""
    return range(max(pick - 2, 0), min(pick + 2, n))


def _valid_tiling(record: Any, stride: int) -> bool:
    """A header's tiling record a decoder can cut frames by (FORMAT.md): exactly the keys ``fit`` (bool), ``tile``
    (None or an integer of at least two strides) and ``overlap`` (a number in ``[0, MAX_TILE_OVERLAP]``)."""
    return (isinstance(record, dict) and set(record) == {"fit", "overlap", "tile"} and isinstance(record["fit"], bool)
            and (record["tile"] is None or type(record["tile"]) is int and record["tile"] >= 2 * stride)
            and type(record["overlap"]) in (int, float) and 0 <= record["overlap"] <= MAX_TILE_OVERLAP)


def unit_map(keep: np.ndarray) -> bytes:
    """The units a 1D chunk predicts, a bit each (unit ``u``: bit ``u % 8`` of byte ``u // 8``, low bit first)."""
    return np.packbits(np.asarray(keep, bool), bitorder="little").tobytes()


def read_unit_map(data: bytes, units: int) -> tuple[np.ndarray, bytes]:
    """``unit_map``'s bits for ``units`` units at the start of ``data``, and the data after it; a map that is cut
    short, names no unit or sets bits past the last is a BitstreamError."""
    n = (units + 7) // 8
    if len(data) < n:
        raise BitstreamError(f"chunk data too short for its map of {units} predicted units")
    bits = np.unpackbits(np.frombuffer(data[:n], np.uint8), bitorder="little").astype(bool)
    if not bits[:units].any() or bits[units:].any():
        raise BitstreamError("chunk's map of predicted units names none, or units it does not have")
    return bits[:units], data[n:]


def _counts_text(tokens: ChunkTokens) -> str:
    return ",".join(map(str, tokens)) if isinstance(tokens, tuple) else str(tokens)


def _sse(rec: np.ndarray, frames: np.ndarray) -> float:
    """Summed squared error of decoded uint8 frames against the originals."""
    return sum(float(((r.astype(np.float64) - f) ** 2).sum()) for r, f in zip(rec, frames, strict=True))   # by frame
