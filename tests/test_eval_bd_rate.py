"""BD-rate against curves whose answer is known in closed form."""

import math

import numpy as np
import pytest

from ldcodec.eval.bd_rate import bd_rate, lpips_quality, overlap

RATES = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
PSNR = np.array([26.0, 28.5, 31.0, 33.8, 36.9])


@pytest.mark.parametrize("method", ["cubic", "pchip"])
@pytest.mark.parametrize("scale", [0.8, 1.25, 1.0])
def test_scaled_rates_give_exact_bd_rate(method, scale):
    assert bd_rate(RATES, PSNR, RATES * scale, PSNR, method=method) == pytest.approx((scale - 1) * 100, abs=1e-9)


def test_point_order_does_not_matter():
    order = [3, 0, 4, 1, 2]
    assert bd_rate(RATES, PSNR, RATES[order] * 0.8, PSNR[order]) == pytest.approx(-20.0, abs=1e-9)


def test_cubic_matches_closed_form_on_partial_overlap():
    # log-rate is an exact cubic in quality for both curves, so the cubic fit is exact;
    # they differ by d(q) = 0.1 - 0.02 (q - 30), whose mean over the overlap [32, 40] is d(36) = -0.02.
    def anchor(q):
        return -4 + 0.1 * (q - 30) + 0.002 * (q - 30) ** 2 + 0.0001 * (q - 30) ** 3

    def test(q):
        return anchor(q) + 0.1 - 0.02 * (q - 30)

    qa, qt = np.linspace(26, 40, 6), np.linspace(32, 46, 7)
    expected = (math.exp(0.1 - 0.02 * (36 - 30)) - 1) * 100
    result = bd_rate(np.exp(anchor(qa)), qa, np.exp(test(qt)), qt, method="cubic")
    assert result == pytest.approx(expected, abs=1e-6)
    assert bd_rate(np.exp(anchor(qa)), qa, np.exp(test(qt)), qt, method="pchip") == pytest.approx(expected, abs=0.5)
    assert overlap(qa, qt) == (32.0, 40.0)


def test_nan_without_overlap_or_with_too_few_points():
    assert math.isnan(bd_rate(RATES, PSNR, RATES, PSNR + 20))
    assert math.isnan(bd_rate(RATES[:3], PSNR[:3], RATES[:3], PSNR[:3], method="cubic"))
    assert bd_rate(RATES[:2], PSNR[:2], RATES[:2] * 0.5, PSNR[:2], method="pchip") == pytest.approx(-50.0)


def test_duplicate_and_non_finite_points_are_ignored():
    rates = np.append(RATES, [RATES[0], np.nan])
    quality = np.append(PSNR, [PSNR[0], 30.0])
    assert bd_rate(rates, quality, RATES * 0.8, PSNR) == pytest.approx(-20.0, abs=1e-9)


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError):
        bd_rate(RATES, PSNR, RATES, PSNR, method="linear")


def test_lpips_quality_increases_as_lpips_falls():
    quality = lpips_quality([0.4, 0.2, 0.1])
    assert np.all(np.diff(quality) > 0)
    assert quality[2] == pytest.approx(10.0)
    # Halving LPIPS at every point is a shift of the quality axis; rates scaled by 0.8 still give -20 %.
    lpips = np.array([0.5, 0.35, 0.2, 0.12, 0.06])
    assert bd_rate(RATES, lpips_quality(lpips), RATES * 0.8, lpips_quality(lpips)) == pytest.approx(-20.0)
