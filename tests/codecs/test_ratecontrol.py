"""Rate control on synthetic candidates: busy chunks get more bytes than static ones; PSNR floors by bisection."""
from __future__ import annotations

import pytest

from vitok.codecs import CodecError
from vitok.codecs.ratecontrol import Candidate, allocate_bytes, pick_psnr, token_grid

PIXELS = 1000


def _options(sse_by_rate: list[tuple[int, float]]) -> list[Candidate]:
    return [Candidate(k, 0.5, bytes(n), sse, PIXELS) for k, (n, sse) in zip(token_grid(16), sse_by_rate)]


STATIC = _options([(10, 900.0), (20, 850.0), (40, 840.0), (80, 835.0), (160, 834.0)])  # more bytes buy little
BUSY = _options([(10, 90000.0), (20, 40000.0), (40, 15000.0), (80, 5000.0), (160, 1000.0)])


def test_token_grid():
    assert token_grid(16) == [1, 2, 4, 8, 16]
    assert token_grid(12) == [1, 2, 4, 8, 12]
    assert token_grid(1) == [1]


def test_budget_goes_to_busy_chunks():
    pick = allocate_bytes([STATIC, BUSY, STATIC], budget=200)
    spent = sum(o[i].nbytes for o, i in zip([STATIC, BUSY, STATIC], pick))
    assert spent <= 200
    assert pick[1] > pick[0] and pick[1] > pick[2]
    assert allocate_bytes([STATIC, BUSY], budget=10_000) == [4, 4]  # plenty: everything at full rate


def test_budget_too_small():
    with pytest.raises(CodecError, match="byte budget too small"):
        allocate_bytes([STATIC, BUSY], budget=19)


def test_psnr_floor_bisection():
    calls = []

    def evaluate(i):
        calls.append(i)
        return BUSY[i]

    target = BUSY[3].psnr - 0.01
    assert pick_psnr(len(BUSY), evaluate, target) is BUSY[3]
    assert len(calls) <= 4
    assert pick_psnr(len(STATIC), lambda i: STATIC[i], 0.0) is STATIC[0]
    assert pick_psnr(len(STATIC), lambda i: STATIC[i], 99.0) is STATIC[-1]
