"""A short run of the decoder fuzzer (the long run is ``python -m ldcodec.fuzz --count 100000``)."""

from ldcodec.fuzz import fuzz


def test_mutated_streams_end_in_an_image_or_an_ldcodec_error():
    report = fuzz(count=400, seed=1)
    assert report.inputs == 400
    assert report.rejected > 0
    assert not report.findings, "\n".join(report.findings[:5])
