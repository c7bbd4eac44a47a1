"""Bjontegaard deltas between RD curves given as records: BD-rate (% bytes at equal quality) and BD-metric (dB).

Thin layer over the ``bjontegaard`` package (rate on a log axis, akima/pchip/cubic interpolation, integration over
the overlapping interval). Records are dicts as produced by ``rd_sweep``; each curve is the records of one codec on
one clip. Before interpolation a curve is sorted by rate and reduced to its monotone part (a point that does not
raise quality over every cheaper point is dropped), since both axes must be strictly monotone. For metrics where
lower is better (LPIPS) the curve is built on the negated metric and BD-metric keeps the metric's own sign.
When the records cover several clips, the delta is computed per clip and the clips' deltas are averaged (as in the
JVET/CTC sheets).
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from vitok.evaluation.errors import EvaluationError

METHODS = ("akima", "pchip", "cubic")
MIN_POINTS = 3
LOWER_IS_BETTER = frozenset({"lpips"})


def rd_points(records: Iterable[dict], metric: str = "psnr", rate: str = "bytes") -> tuple[np.ndarray, np.ndarray]:
    """``(rates, quality)`` of one curve, sorted by rate, reduced to strictly rising rate and quality (of points at
    one rate, the best).

    Quality is the metric itself, or its negation for metrics where lower is better.
    """
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    pts = sorted(((float(r[rate]), sign * float(r[metric])) for r in records
                  if r.get(rate) is not None and r.get(metric) is not None and float(r[rate]) > 0),
                 key=lambda p: (p[0], -p[1]))
    keep: list[tuple[float, float]] = []
    for x, y in pts:
        if not keep or (x > keep[-1][0] and y > keep[-1][1]):
            keep.append((x, y))
    arr = np.array(keep, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _by_clip(records: Iterable[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        out[str(r.get("clip", ""))].append(r)
    return out


def _delta(anchor: Sequence[dict], test: Sequence[dict], metric: str, method: str, rate: str, kind: str,
           skip_unmatched: bool) -> float:
    if method not in METHODS:
        raise EvaluationError(f"unknown BD interpolation {method!r}; choose from {', '.join(METHODS)}")
    anchors, tests = _by_clip(anchor), _by_clip(test)
    clips = [c for c in anchors if c in tests]
    if not clips:
        raise EvaluationError("BD: anchor and test records share no clip")
    deltas, skipped = [], []
    for clip in clips:
        try:
            deltas.append(_clip_delta(anchors[clip], tests[clip], clip, metric, method, rate, kind))
        except EvaluationError as e:
            if not skip_unmatched:
                raise
            skipped.append(str(e))
    if not deltas:
        raise EvaluationError(f"BD-{kind}: no clip has comparable curves ({'; '.join(skipped)})")
    mean = float(np.mean(deltas))
    return -mean if kind == "psnr" and metric in LOWER_IS_BETTER else mean


def _clip_delta(anchor: Sequence[dict], test: Sequence[dict], clip: str, metric: str, method: str, rate: str,
                kind: str) -> float:
    """One clip's BD value; an EvaluationError when a curve is too short or the two do not overlap."""
    import bjontegaard

    ra, da = rd_points(anchor, metric, rate)
    rt, dt = rd_points(test, metric, rate)
    where = f" on clip {clip!r}" if clip else ""
    for name, n, records in (("anchor", len(ra), anchor), ("test", len(rt), test)):
        if not any(r.get(metric) is not None for r in records):   # e.g. LPIPS without its backbone weights
            raise EvaluationError(f"BD-{kind}{where}: the {name} curve has no {metric} values (unavailable or not "
                                  f"applicable when it was measured)")
        if n < MIN_POINTS:
            raise EvaluationError(f"BD-{kind}{where}: the {name} curve has {n} usable {metric} points "
                                  f"(need {MIN_POINTS} with rising rate and quality)")
    lo_a, hi_a, lo_t, hi_t = (da[0], da[-1], dt[0], dt[-1]) if kind == "rate" else \
        (np.log10(ra[0]), np.log10(ra[-1]), np.log10(rt[0]), np.log10(rt[-1]))
    if min(hi_a, hi_t) <= max(lo_a, lo_t):
        axis = metric if kind == "rate" else rate
        raise EvaluationError(f"BD-{kind}{where}: anchor and test curves do not overlap in {axis} "
                              f"(anchor {lo_a:.4g}..{hi_a:.4g}, test {lo_t:.4g}..{hi_t:.4g})")
    fn = bjontegaard.bd_rate if kind == "rate" else bjontegaard.bd_psnr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns about partial overlap; we report the value anyway
        return float(fn(ra, da, rt, dt, method=method, require_matching_points=False))


def bd_rate(anchor_records: Sequence[dict], test_records: Sequence[dict], metric: str = "psnr",
            method: str = "akima", rate: str = "bytes", *, skip_unmatched: bool = False) -> float:
    """Average rate difference of test vs anchor in percent at equal ``metric`` (negative = test saves bytes).

    ``rate`` is the record field on the rate axis (bytes, bpp and kbps give the same result on one clip).
    Raises ``EvaluationError`` when a clip's curve has fewer than 3 usable points or the two do not overlap;
    with ``skip_unmatched`` such clips are left out of the mean instead (an error only when none is left).
    """
    return _delta(anchor_records, test_records, metric, method, rate, "rate", skip_unmatched)


def bd_psnr(anchor_records: Sequence[dict], test_records: Sequence[dict], metric: str = "psnr",
            method: str = "akima", rate: str = "bytes", *, skip_unmatched: bool = False) -> float:
    """Average ``metric`` difference of test vs anchor at equal rate (dB for PSNR; positive = test is better);
    ``skip_unmatched`` as for `bd_rate`."""
    return _delta(anchor_records, test_records, metric, method, rate, "psnr", skip_unmatched)
