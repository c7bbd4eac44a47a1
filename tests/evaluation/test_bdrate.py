"""BD-rate / BD-PSNR: the bjontegaard README example, clip averaging, and clear errors."""
from __future__ import annotations

import bjontegaard
import pytest

from vitok.evaluation.bdrate import bd_psnr, bd_rate, rd_points
from vitok.evaluation.errors import EvaluationError

# bjontegaard 1.3.0 README (x265 presets): published BD-rates akima -4.4252 %, pchip -4.4175 %, cubic -4.4205 %
RATE_A = [9487.76, 4593.60, 2486.44, 1358.24]
PSNR_A = [40.037, 38.615, 36.845, 34.851]
RATE_T = [9787.80, 4469.00, 2451.52, 1356.24]
PSNR_T = [40.121, 38.651, 36.970, 34.987]


def _recs(rates, psnrs, clip="a", **extra):
    return [{"clip": clip, "kbps": r, "bytes": r * 100, "psnr": p, **extra} for r, p in zip(rates, psnrs)]


@pytest.mark.parametrize("method,expected", [("akima", -4.4252), ("pchip", -4.4175), ("cubic", -4.4205)])
def test_readme_example(method, expected):
    anchor, test = _recs(RATE_A, PSNR_A), _recs(RATE_T, PSNR_T)
    assert bd_rate(anchor, test, method=method, rate="kbps") == pytest.approx(expected, abs=5e-5)
    # rate units do not matter on one clip; bd_psnr is the package's number
    assert bd_rate(anchor, test, method=method) == pytest.approx(expected, abs=5e-5)
    assert bd_psnr(anchor, test, method=method) == pytest.approx(
        bjontegaard.bd_psnr(RATE_A, PSNR_A, RATE_T, PSNR_T, method=method), abs=1e-12)


def test_clips_are_averaged_and_order_does_not_matter():
    anchor = _recs(RATE_A, PSNR_A, "a") + _recs(RATE_A, PSNR_A, "b")
    test = _recs(RATE_T[::-1], PSNR_T[::-1], "a") + _recs(RATE_A, PSNR_A, "b")  # b: identical -> 0 %
    assert bd_rate(anchor, test) == pytest.approx(-4.4252 / 2, abs=5e-5)


def test_lower_is_better_metric():
    anchor = [{"bytes": r, "lpips": 1 / p} for r, p in zip(RATE_A, PSNR_A)]
    better = [{"bytes": r * 0.8, "lpips": 1 / p} for r, p in zip(RATE_A, PSNR_A)]
    assert bd_rate(anchor, better, metric="lpips") == pytest.approx(-20.0, abs=1e-6)
    assert bd_psnr(anchor, better, metric="lpips") < 0  # lower LPIPS at the same rate


def test_non_monotone_points_are_dropped():
    rates, values = rd_points([{"bytes": b, "psnr": p} for b, p in [(10, 30), (20, 29), (30, 35), (5, 25)]])
    assert list(rates) == [5, 10, 30] and list(values) == [25, 30, 35]


def test_of_points_at_one_rate_the_best_is_kept():
    """Sorted by rate alone, equal rates kept the worst point, unlike the plots and the matched-bytes anchor."""
    rates, quality = rd_points([{"bytes": b, "psnr": p} for b, p in [(100, 30), (100, 32), (200, 33), (200, 31)]])
    assert rates.tolist() == [100, 200] and quality.tolist() == [32, 33]


def test_errors_are_clear():
    anchor = _recs(RATE_A, PSNR_A)
    with pytest.raises(EvaluationError, match="test curve has 2 usable psnr points"):
        bd_rate(anchor, _recs(RATE_T[:2], PSNR_T[:2]))
    unmeasured = [{**r, "lpips": None} for r in anchor]   # LPIPS without its backbone: every value None
    with pytest.raises(EvaluationError, match=r"the anchor curve has no lpips values \(unavailable or not applicable"):
        bd_rate(unmeasured, unmeasured, metric="lpips")
    with pytest.raises(EvaluationError, match="do not overlap"):
        bd_rate(anchor, _recs(RATE_T, [p + 20 for p in PSNR_T]))
    with pytest.raises(EvaluationError, match="do not overlap"):
        bd_psnr(anchor, _recs([r * 100 for r in RATE_T], PSNR_T))
    with pytest.raises(EvaluationError, match="share no clip"):
        bd_rate(anchor, _recs(RATE_T, PSNR_T, clip="other"))
    with pytest.raises(EvaluationError, match="unknown BD interpolation"):
        bd_rate(anchor, anchor, method="linear")


def test_skip_unmatched_averages_the_clips_that_compare():
    """A clip whose curves miss each other fails the mean by default; skip_unmatched leaves it out (the sample set
    mixes clips where a low-rate codec meets h264 with clips where it never does)."""
    anchor = _recs(RATE_A, PSNR_A, "a") + _recs(RATE_A, PSNR_A, "far")
    test = _recs(RATE_T, PSNR_T, "a") + _recs([r * 1000 for r in RATE_T], [p - 20 for p in PSNR_T], "far")
    with pytest.raises(EvaluationError, match="clip 'far'.*do not overlap"):
        bd_rate(anchor, test)
    assert bd_rate(anchor, test, skip_unmatched=True) == pytest.approx(-4.4252, abs=5e-5)
    assert bd_psnr(anchor, test, skip_unmatched=True) == pytest.approx(bd_psnr(anchor[:4], test[:4]), abs=1e-12)
    with pytest.raises(EvaluationError, match="no clip has comparable curves.*'far'"):
        bd_rate(anchor[4:], test[4:], skip_unmatched=True)
