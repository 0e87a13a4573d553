"""A short run of the decoder fuzzer (the long run: docs/robustness.md)."""

import pytest

from ldcodec.fuzz import fuzz

pytestmark = pytest.mark.fuzz


def test_mutated_streams_end_in_an_image_or_an_ldcodec_error():
    report = fuzz(count=2000, seed=1)
    assert report.inputs == 2000
    assert report.decoded > 0
    assert report.rejected > 0
    assert not report.findings, "\n".join(report.findings[:5])
