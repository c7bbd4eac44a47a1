"""Rate control for vitok codecs: pick per chunk an operating point (token count for 1D models, else a step).

Targets: a fixed token count (no search), a total byte budget for the whole clip (Lagrangian allocation over
every chunk's candidates: chunks where extra bytes buy little distortion get few), or a PSNR floor per chunk (the
cheapest candidate that reaches it, by bisection): static chunks get few tokens, busy ones many. 1D models whose
chunks span several tiles choose a token count per tile (unit) the same ways (``UnitCosts``): a flat tile gets few
tokens, the busy tile beside it many.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from vitok.codecs.errors import CodecError


class Option(Protocol):
    """What byte allocation needs of a candidate: its bytes and its distortion."""

    @property
    def nbytes(self) -> float: ...

    @property
    def sse(self) -> float: ...


@dataclass
class Candidate:
    """One way to code one chunk: its knobs, payload and distortion (sum of squared errors over uint8 pixels)."""

    tokens: int | None
    step: float
    payload: bytes
    sse: float
    pixels: int

    @property
    def nbytes(self) -> int:
        return len(self.payload)

    @property
    def psnr(self) -> float:
        return psnr_from_sse(self.sse, self.pixels)


def psnr_from_sse(sse: float, pixels: int) -> float:
    """PSNR (dB) of uint8 pixels from their summed squared error; inf when it is 0."""
    return math.inf if sse <= 0 else 10 * math.log10(255.0 ** 2 * max(pixels, 1) / sse)


def token_grid(max_tokens: int) -> list[int]:
    """Candidate token counts: powers of two below ``max_tokens``, then ``max_tokens`` itself."""
    grid = [1 << i for i in range(max_tokens.bit_length()) if (1 << i) < max_tokens]
    return grid + [max_tokens]


def pick_psnr(n: int, evaluate: Callable[[int], Candidate], target: float,
              estimate: Callable[[int], float] | None = None) -> Candidate:
    """The cheapest of ``n`` candidates (ordered by rising rate) whose PSNR reaches ``target``, by bisection;
    the richest one when none does. ``evaluate(i)`` codes candidate ``i``. ``estimate(i)``: a cheap guess of
    candidate i's PSNR (before refinement, say): each probe then walks down from the dearest untried candidate while
    the guess below, shifted by what the last probe's guess missed, still reaches the target, instead of going to
    the middle (bisection takes over after ``n.bit_length() + 1`` such probes, should the guesses mislead)."""
    seen: dict[int, Candidate] = {}

    def get(i: int) -> Candidate:
        if i not in seen:
            seen[i] = evaluate(i)
        return seen[i]

    lo, hi, reaches, shift = 0, n - 1, False, 0.0   # the answer lies in lo..hi; whether hi is known to reach
    guided = n.bit_length() + 1 if estimate is not None else 0
    while lo < hi or not reaches:
        top = hi - 1 if reaches else hi   # the dearest candidate not tried
        if guided:
            i, guided = top, guided - 1
            while i > lo and estimate(i - 1) + shift >= target:
                i -= 1
        else:
            i = (lo + hi) // 2 if reaches else hi   # the richest first: does any reach?
        cand = get(i)
        if guided:   # (a lossless candidate and its guess are both infinite: no shift)
            missed = cand.psnr - estimate(i)
            shift = missed if math.isfinite(missed) else 0.0
        if cand.psnr >= target:
            hi, reaches = i, True
        elif i == n - 1:
            return cand
        else:
            lo = i + 1
    return get(hi)


def cheapest_bytes(options: Sequence[Sequence[Option]]) -> float:
    """The bytes of every chunk's cheapest candidate: the least any allocation can spend."""
    return sum(min(c.nbytes for c in o) for o in options)


def allocate_bytes(options: Sequence[Sequence[Option]], budget: float, reserved: float = 0) -> list[int]:
    """Per chunk the index of the candidate to use so that their bytes fit ``budget`` with the least total
    distortion (Lagrangian bisection on lambda, then a greedy pass that spends what is left). ``reserved``: the
    bytes the caller took off the user's budget for headers, so a budget too small is told in the user's terms."""
    if not options or any(not o for o in options):
        raise CodecError("rate control needs at least one candidate per chunk")
    floor = cheapest_bytes(options)
    if floor > budget:
        raise CodecError(f"byte budget too small: {budget + reserved:.0f} bytes; the cheapest setting takes about "
                         f"{floor + reserved:.0f} ({reserved:.0f} of them the file header)")

    def choose(lam: float) -> list[int]:
        return [min(range(len(o)), key=lambda i: (o[i].sse + lam * o[i].nbytes, o[i].nbytes)) for o in options]

    def total(pick: list[int]) -> int:
        return sum(o[i].nbytes for o, i in zip(options, pick))

    best = choose(0.0)
    if total(best) > budget:
        lo, hi = 0.0, 1.0
        while total(choose(hi)) > budget and hi < 1e30:
            hi *= 16
        # the cheapest candidates fit (floor); lambda may not reach them when distortions dwarf it
        best = choose(hi) if total(choose(hi)) <= budget else [min(range(len(o)), key=lambda i: o[i].nbytes)
                                                                 for o in options]
        for _ in range(60):
            mid = (lo + hi) / 2
            pick = choose(mid)
            if total(pick) <= budget:
                hi, best = mid, pick
            else:
                lo = mid
    return _spend_rest(options, best, budget - total(best))


def _spend_rest(options: Sequence[Sequence[Option]], pick: list[int], left: float) -> list[int]:
    """Greedily switch chunks to costlier candidates with the best distortion drop per byte while bytes remain."""
    pick = list(pick)
    while True:
        best, gain = None, 0.0
        for c, o in enumerate(options):
            cur = o[pick[c]]
            for i, cand in enumerate(o):
                extra = cand.nbytes - cur.nbytes
                drop = cur.sse - cand.sse
                if 0 < extra <= left and drop > 0 and drop / extra > gain:
                    best, gain = (c, i, extra), drop / extra
        if best is None:
            return pick
        c, i, extra = best
        pick[c] = i
        left -= extra


@dataclass
class Cost:
    """A candidate as byte allocation sees it: its bytes and squared error (a unit's: estimated bytes and
    blend-weighted error)."""

    nbytes: float
    sse: float


@dataclass
class UnitCosts:
    """The candidate token counts of every unit (tile) of one chunk: ``bits`` and ``sse`` are ``(units, counts)``.
    A unit's ``sse`` weighs its tile's squared error by the tile's blend weights over the frame's real pixels, so
    the sum over units bounds the chunk's (blending averages errors where tiles overlap)."""

    counts: list[int]
    bits: np.ndarray
    sse: np.ndarray
    pixels: int

    def options(self) -> list[list[Cost]]:
        return [[Cost(b / 8, e) for b, e in zip(bits, sse)] for bits, sse in zip(self.bits, self.sse)]

    def tokens(self, pick: Sequence[int]) -> tuple[int, ...]:
        """Token count of every unit for a pick of candidate indices."""
        return tuple(self.counts[i] for i in pick)

    def psnr(self, pick: Sequence[int]) -> float:
        """The PSNR bound of a pick (from the summed unit errors)."""
        return psnr_from_sse(float(self.sse[np.arange(len(pick)), list(pick)].sum()), self.pixels)


def pick_units_psnr(costs: UnitCosts, target: float) -> list[int]:
    """Per unit the candidate index: the Lagrangian choice with the largest lambda (fewest bits) whose PSNR bound
    reaches ``target``; the least-distortion choice when none does."""
    def choose(lam: float) -> list[int]:
        return [int(np.lexsort((bits, sse + lam * bits))[0]) for bits, sse in zip(costs.bits, costs.sse)]

    best = choose(0.0)
    if costs.psnr(best) < target:
        return best
    lo, hi = 0.0, 1.0
    while costs.psnr(choose(hi)) >= target and hi < 1e30:
        lo, best, hi = hi, choose(hi), hi * 16
    for _ in range(60):  # the bound falls as lambda grows: keep the largest lambda that still reaches the target
        mid = (lo + hi) / 2
        pick = choose(mid)
        if costs.psnr(pick) >= target:
            lo, best = mid, pick
        else:
            hi = mid
    return best


def units_for_psnr(costs: UnitCosts, target: float, measure: Callable[[tuple[int, ...]], tuple[float, int]],
                   tries: int = 6) -> tuple[int, ...]:
    """The cheapest per-unit token counts found whose true PSNR reaches ``target`` (``measure(tokens)`` codes
    and decodes them: their PSNR and bytes); the best-measured ones when none does. Counts come from
    ``pick_units_psnr`` for an aim; blending makes the true PSNR higher than the bound the aim is met on, so the
    aim is lowered by the surplus each measurement shows, then bisected between the lowest aim that met the
    target and the highest that missed it: ``tries`` aims at most, no counts measured twice."""
    seen: dict[tuple[int, ...], tuple[float, int]] = {}
    met, missed, aim = target, None, target
    for _ in range(tries):
        tokens = costs.tokens(pick_units_psnr(costs, aim))
        if tokens not in seen:
            seen[tokens] = measure(tokens)
        surplus = seen[tokens][0] - target
        if surplus >= 0:
            met = aim
        else:
            missed = aim
        if missed is None:
            if surplus < 0.01:
                break
            aim -= min(surplus, 10.0)   # a lossless decode's surplus is infinite
        elif met - missed < 0.02:
            break
        else:
            aim = (met + missed) / 2
    good = [tokens for tokens, (psnr, _) in seen.items() if psnr >= target]
    if not good:
        return max(seen, key=lambda tokens: seen[tokens][0])
    return min(good, key=lambda tokens: seen[tokens][1])
