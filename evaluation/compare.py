"""One clip, a vitok codec against classical codecs at the same quality: each classical codec's CRF is found by
bisection so that its PSNR matches the vitok decode, then bytes, bpp, PSNR, SSIM and times are compared."""
from __future__ import annotations

import time
from fractions import Fraction
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from vitok.evaluation.errors import EvaluationError
from vitok.evaluation.metrics import compute_metrics, psnr


def default_model_codec() -> str:
    """``vitok:<name>`` of the default bundled model (else the first bundled); raises when none is bundled."""
    from vitok.codecs import DEFAULT_MODEL
    from vitok.codecs.neural import bundled_codec_names

    names = bundled_codec_names()
    if not names:
        raise EvaluationError("no bundled vitok model found; pass one with --model NAME_OR_DIR")
    return f"vitok:{DEFAULT_MODEL}" if f"vitok:{DEFAULT_MODEL}" in names else names[0]


def _crf_range(codec: Any) -> tuple[int, int]:
    spec = getattr(codec, "spec", None)
    return 0, int(getattr(spec, "crf_max", 51))


class CrfMatch(NamedTuple):
    """What `match_psnr` found: the operating point, its file and decoded frames, their PSNR, ``matched``: False
    when the target lies past an end of the CRF range, so this is the closest setting, not a match; and
    ``bytes_at_target``: the codec's rate bytes at exactly the target PSNR, linear in log-bytes between the two
    CRFs around it, as the RD tables match (None when not matched)."""

    op: dict
    data: bytes
    decoded: np.ndarray
    psnr: float
    matched: bool
    bytes_at_target: float | None


def match_psnr(codec: Any, frames: np.ndarray, fps: Fraction, target: float, **fixed: Any) -> CrfMatch:
    """The CRF of a classical ``codec`` whose PSNR is closest to ``target``, by bisection over integer CRF
    (PSNR falls as CRF rises); about log2(CRF range) encodes."""
    tried: dict[int, tuple[bytes, np.ndarray, float]] = {}

    def run(crf: int) -> float:
        if crf not in tried:
            data = codec.encode(frames, fps, crf=crf, **fixed)
            decoded, _ = codec.decode(data)
            tried[crf] = (data, decoded, psnr(frames, decoded))
        return tried[crf][2]

    lo, hi = _crf_range(codec)
    at_target = None
    if run(lo) <= target:
        best, matched = lo, run(lo) == target
    elif run(hi) >= target:
        best, matched = hi, run(hi) == target
    else:  # invariant: psnr(lo) > target > psnr(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if run(mid) >= target:
                lo = mid
            else:
                hi = mid
        best, matched = min((lo, hi), key=lambda c: abs(tried[c][2] - target)), True
        (q_lo, q_hi), (b_lo, b_hi) = (tried[lo][2], tried[hi][2]), (codec.rate_bytes(tried[c][0]) for c in (lo, hi))
        at_target = float(b_lo * (b_hi / b_lo) ** ((q_lo - target) / (q_lo - q_hi)))
    data, decoded, value = tried[best]
    if matched and at_target is None:   # hit exactly at an end of the range
        at_target = float(codec.rate_bytes(data))
    return CrfMatch({"crf": best, **fixed}, data, decoded, value, matched, at_target)


def _row(name: str, op: dict, frames: np.ndarray, nbytes: int, decoded: np.ndarray, enc_s: float,
         dec_s: float) -> dict:
    """One table row; ``nbytes`` is the codec's ``rate_bytes`` (elementary stream for classical codecs)."""
    t, h, w = frames.shape[:3]
    m = compute_metrics(frames, decoded, which=("psnr", "ssim"))
    return {"codec": name, "op": op, "bytes": nbytes, "bpp": nbytes * 8 / (t * h * w), **m,
            "encode_s": enc_s, "decode_s": dec_s}


def unmatched_note(rows: Sequence[dict]) -> str:
    """A line per classical row that could not match vitok's PSNR (empty when all did)."""
    from vitok.evaluation.report import op_label

    return "".join(f"\nnote: {r['codec']} {op_label(r['op'])} gives {r['psnr']:.2f} dB, the closest its CRF range "
                   f"comes to vitok's {rows[0]['psnr']:.2f} dB: not a match at equal PSNR"
                   for r in rows[1:] if not r["matched"])


def compare_codecs(frames: np.ndarray, fps: Fraction, model: str | None = None,
                   codecs: Sequence[str] = ("h264",), model_op: Mapping[str, Any] | None = None, device: str = "cpu"
                   ) -> tuple[list[dict], dict[str, np.ndarray], dict[str, tuple[bytes, np.ndarray]]]:
    """Encode ``frames`` with ``vitok:<model>`` (default: the default bundled model) on ``device``, then each
    codec at the matching PSNR.

    Returns the rows (vitok first; classical rows also carry the ``crf`` found, ``matched``: False when vitok's
    PSNR lies outside what the codec's CRF range reaches, so the row is its closest setting, and ``bytes_at_psnr``:
    the codec's bytes at exactly vitok's PSNR, between its two nearest CRFs (None unmatched); their encode time is
    that of the final CRF only; vitok's excludes loading the model and a first frame coded to warm it), each
    codec's decoded middle frame (plus ``reference``) for a side-by-side figure, and each codec's ``(bytes,
    decoded frames)``.
    """
    from vitok.codecs import get_codec
    from vitok.codecs.neural import VitokCodec

    name = default_model_codec() if model is None else (model if model.startswith("vitok:") else f"vitok:{model}")
    classical = [get_codec(c) for c in codecs]   # an unknown name fails before any encode
    if not name[len("vitok:"):].strip():
        raise EvaluationError("--model needs a model: a bundled name or a model folder")
    neural = VitokCodec(name[len("vitok:"):], device=device).load()  # the model's load is not its encode time
    op = dict(model_op or {})
    # a frame through encode and decode first: the classical codecs are timed after match_psnr's encodes, so
    # vitok's timing must not carry torch's first-call costs either
    neural.decode(neural.encode(frames[:1], fps))
    t0 = time.perf_counter()
    data = neural.encode(frames, fps, **op)
    t1 = time.perf_counter()
    decoded, _ = neural.decode(data)
    t2 = time.perf_counter()
    rows = [_row(name, op, frames, neural.rate_bytes(data), decoded, t1 - t0, t2 - t1)]
    mid = len(frames) // 2
    shown = {"reference": frames[mid], name: decoded[mid]}
    streams = {name: (data, decoded)}
    for cname, codec in zip(codecs, classical):
        cop, cdata, cdec, _, matched, at_psnr = match_psnr(codec, frames, fps, rows[0]["psnr"])
        t0 = time.perf_counter()
        codec.encode(frames, fps, **cop)
        t1 = time.perf_counter()
        codec.decode(cdata)
        t2 = time.perf_counter()
        row = _row(cname, cop, frames, codec.rate_bytes(cdata), cdec, t1 - t0, t2 - t1)
        rows.append({**row, "matched": matched, "bytes_at_psnr": at_psnr})
        shown[cname] = cdec[mid]
        streams[cname] = (cdata, cdec)
    return rows, shown, streams
