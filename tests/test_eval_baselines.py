"""Each classical codec round-trips an image with its own decoder; the ldcodec adapter works."""

import numpy as np
import pytest

from ldcodec.eval.baselines import CodecUnavailableError, LdcodecCodec, make_codec, make_codecs
from ldcodec.eval.metrics import psnr

CLASSICAL = ["jpeg", "jpeg444", "webp", "avif", "hevc", "bpg"]


def _codec_or_skip(name):
    try:
        return make_codec(name)
    except CodecUnavailableError as exc:
        pytest.skip(f"{name} unavailable here: {exc}")


@pytest.mark.parametrize("name", CLASSICAL)
def test_round_trip_and_rate_grows_with_quality(name, image_factory):
    codec = _codec_or_skip(name)
    image = image_factory(48, 64)
    settings = codec.settings(3)
    assert 1 <= len(settings) <= 3
    sizes = []
    for setting in (settings[0], settings[-1]):
        data = codec.encode(image, setting)
        decoded = codec.decode(data)
        assert decoded.shape == image.shape and decoded.dtype == np.uint8
        sizes.append(len(data))
    assert sizes[0] < sizes[1]
    assert psnr(image, decoded) > 25
    assert "=" in codec.label(settings[0])


def test_jpeg_444_keeps_more_chroma():
    assert make_codec("jpeg", jpeg_444=True).name == "jpeg444"
    assert make_codec("jpeg").save_options({"quality": 50})["subsampling"] == 2
    assert make_codec("jpeg444").save_options({"quality": 50})["subsampling"] == 0


def test_settings_are_distinct_and_cover_the_range():
    jpeg = make_codec("jpeg")
    qualities = [s["quality"] for s in jpeg.settings(10)]
    assert qualities == sorted(set(qualities)) and qualities[0] == 3 and qualities[-1] == 55


def test_make_codecs_reports_what_it_skips(monkeypatch):
    monkeypatch.setenv("PATH", "")  # no bpgenc
    codecs, skipped = make_codecs(["jpeg", "bpg", "nope"], jpeg_444=True)
    assert [c.name for c in codecs] == ["jpeg", "jpeg444"]
    assert any(s.startswith("bpg:") for s in skipped) and any("unknown codec" in s for s in skipped)


def test_ldcodec_adapter(tiny_codec, image_factory):
    adapter = LdcodecCodec(steps=0)
    adapter._codec = tiny_codec
    image = image_factory(64, 96)
    setting = adapter.settings(2)[0]
    assert adapter.label(setting) == "quality=0"
    assert LdcodecCodec(steps=4).label({"quality": 0.4, "steps": 4}) == "quality=0.4,steps=4"
    assert LdcodecCodec(steps=4).name == "ldcodec-steps4"
    decoded = adapter.decode(adapter.encode(image, setting))
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    assert "_codec" in adapter.__getstate__() and adapter.__getstate__()["_codec"] is None
