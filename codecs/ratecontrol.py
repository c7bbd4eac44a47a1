"""Rate control for vitok codecs: pick per chunk an operating point (token count for 1D models, else a step).

Targets: a fixed token count (no search), a total byte budget for the whole clip (Lagrangian allocation over
every chunk's candidates: chunks where extra bytes buy little distortion get few), or a PSNR floor per chunk (the
cheapest candidate that reaches it, by bisection): static chunks get few tokens, busy ones many.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from vitok.codecs.errors import CodecError


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
        mse = self.sse / max(self.pixels, 1)
        return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def token_grid(max_tokens: int) -> list[int]:
    """Candidate token counts: powers of two below ``max_tokens``, then ``max_tokens`` itself."""
    grid = [1 << i for i in range(max_tokens.bit_length()) if (1 << i) < max_tokens]
    return grid + [max_tokens]


def pick_psnr(n: int, evaluate: Callable[[int], Candidate], target: float) -> Candidate:
    """The cheapest of ``n`` candidates (ordered by rising rate) whose PSNR reaches ``target``, by bisection;
    the richest one when none does. ``evaluate(i)`` codes candidate ``i``."""
    seen: dict[int, Candidate] = {}

    def get(i: int) -> Candidate:
        if i not in seen:
            seen[i] = evaluate(i)
        return seen[i]

    lo, hi = 0, n - 1
    if get(hi).psnr < target:
        return get(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if get(mid).psnr >= target:
            hi = mid
        else:
            lo = mid + 1
    return get(lo)


def allocate_bytes(options: list[list[Candidate]], budget: int) -> list[int]:
    """Per chunk the index of the candidate to use so that the payloads fit ``budget`` bytes with the least total
    distortion (Lagrangian bisection on lambda, then a greedy pass that spends what is left)."""
    if not options or any(not o for o in options):
        raise CodecError("rate control needs at least one candidate per chunk")
    floor = sum(min(c.nbytes for c in o) for o in options)
    if floor > budget:
        raise CodecError(f"byte budget too small: the cheapest setting needs {floor} payload bytes, "
                         f"the budget leaves {budget}")

    def choose(lam: float) -> list[int]:
        return [min(range(len(o)), key=lambda i: (o[i].sse + lam * o[i].nbytes, o[i].nbytes)) for o in options]

    def total(pick: list[int]) -> int:
        return sum(o[i].nbytes for o, i in zip(options, pick))

    lo, hi = 0.0, 1.0
    while total(choose(hi)) > budget and hi < 1e30:
        hi *= 16
    best = choose(hi)
    if total(choose(lo)) <= budget:
        best = choose(lo)
    else:
        for _ in range(60):
            mid = (lo + hi) / 2
            pick = choose(mid)
            if total(pick) <= budget:
                hi, best = mid, pick
            else:
                lo = mid
    if total(best) > budget:  # lambda never got there (non-monotone candidates): fall back to the cheapest
        best = [min(range(len(o)), key=lambda i: o[i].nbytes) for o in options]
    return _spend_rest(options, best, budget - total(best))


def _spend_rest(options: list[list[Candidate]], pick: list[int], left: int) -> list[int]:
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
