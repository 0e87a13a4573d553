"""Bjøntegaard delta rate: the average rate difference between two RD curves at equal quality.

Both curves are modelled as log(rate) as a function of quality, integrated over
the quality range where they overlap; the mean log-rate difference ``d`` gives
``BD-rate = (exp(d) - 1) × 100 %``. Negative means the test codec needs less rate
than the anchor for the same quality.

Two interpolations:

* ``"cubic"`` — Bjøntegaard's original (VCEG-M33): a least-squares cubic
  polynomial through all points of each curve. Needs at least 4 points.
* ``"pchip"`` — piecewise cubic Hermite (monotone) interpolation through the
  points, as in the JVET/AOM common-test-conditions spreadsheets; follows the
  data exactly and does not overshoot. Needs at least 2 points.

For PSNR the quality axis is PSNR in dB. LPIPS is a distance (lower is better)
spanning an order of magnitude over a typical sweep, so its quality axis is
:func:`lpips_quality` = −10·log10(LPIPS), "LPIPS in dB", by analogy with PSNR
(−10·log10 of MSE): larger is better and the range is weighted evenly in
relative terms.
"""

from __future__ import annotations

import math

import numpy as np

METHODS = ("cubic", "pchip")


def lpips_quality(lpips_values) -> np.ndarray:
    """LPIPS distances as a quality axis for BD-rate: −10·log10(LPIPS), higher is better."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -10.0 * np.log10(np.asarray(lpips_values, dtype=np.float64))


def _clean_curve(rate, quality) -> tuple[np.ndarray, np.ndarray]:
    """Points with finite positive rate and finite quality, sorted by quality, duplicates merged."""
    rate = np.asarray(rate, dtype=np.float64)
    quality = np.asarray(quality, dtype=np.float64)
    if rate.shape != quality.shape or rate.ndim != 1:
        raise ValueError("rate and quality must be 1-D sequences of the same length")
    keep = np.isfinite(rate) & np.isfinite(quality) & (rate > 0)
    log_rate, quality = np.log(rate[keep]), quality[keep]
    unique_quality, index = np.unique(quality, return_inverse=True)
    merged_log_rate = np.bincount(index, weights=log_rate) / np.bincount(index)
    return unique_quality, merged_log_rate


def _integral(quality: np.ndarray, log_rate: np.ndarray, low: float, high: float, method: str) -> float:
    if method == "cubic":
        polynomial = np.polynomial.Polynomial.fit(quality, log_rate, 3).integ()
        return float(polynomial(high) - polynomial(low))
    if method == "pchip":
        from scipy.interpolate import PchipInterpolator

        return float(PchipInterpolator(quality, log_rate).integrate(low, high))
    raise ValueError(f"unknown BD-rate method {method!r} (choose from {METHODS})")


def bd_rate(anchor_rate, anchor_quality, test_rate, test_quality, method: str = "cubic") -> float:
    """BD-rate of the test curve against the anchor curve, in percent.

    Rates are any positive rate measure (bpp, bytes); quality must increase for
    better reconstructions (PSNR, or :func:`lpips_quality` for LPIPS). Returns
    NaN when a curve has too few distinct points or the quality ranges do not overlap.
    """
    if method not in METHODS:
        raise ValueError(f"unknown BD-rate method {method!r} (choose from {METHODS})")
    minimum_points = 4 if method == "cubic" else 2
    anchor = _clean_curve(anchor_rate, anchor_quality)
    test = _clean_curve(test_rate, test_quality)
    if len(anchor[0]) < minimum_points or len(test[0]) < minimum_points:
        return math.nan
    low = max(anchor[0][0], test[0][0])
    high = min(anchor[0][-1], test[0][-1])
    if not high > low:
        return math.nan
    mean_difference = (_integral(*test, low, high, method) - _integral(*anchor, low, high, method)) / (high - low)
    return float((math.exp(mean_difference) - 1.0) * 100.0)


def overlap(anchor_quality, test_quality) -> tuple[float, float]:
    """The quality interval both curves cover (low > high when they do not overlap)."""
    a = np.asarray(anchor_quality, dtype=np.float64)
    t = np.asarray(test_quality, dtype=np.float64)
    a, t = a[np.isfinite(a)], t[np.isfinite(t)]
    if not len(a) or not len(t):
        return math.nan, math.nan
    return float(max(a.min(), t.min())), float(min(a.max(), t.max()))
