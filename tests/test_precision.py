"""precision="auto" picks bf16 only where it is native; every precision decodes every stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ldcodec
from ldcodec.codec import precision as precision_module
from ldcodec.codec.precision import resolve_precision


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpu_flags(monkeypatch, native):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"


def test_auto_is_bf16_on_cuda(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")


def test_codec_resolves_auto_and_streams_cross_precisions(tiny_weights, image_factory):
    image = image_factory(48, 64)
    codecs = {p: ldcodec.load(tiny_weights, precision=p) for p in ("auto", "fp32", "bf16")}
    assert codecs["auto"].precision == resolve_precision("auto", "cpu")
    assert codecs["fp32"].precision == "fp32" and codecs["bf16"].precision == "bf16"
    for source in ("fp32", "bf16"):
        blob = codecs[source].encode(image, quality=0.5)
        decoded = {p: np.asarray(c.decode(blob), dtype=np.int16) for p, c in codecs.items()}
        latents = {p: c.decode_latents(blob)[1] for p, c in codecs.items()}
        # Entropy decoding is precision-independent: the same symbols whatever decodes them.
        assert all(np.array_equal(latents["fp32"], v) for v in latents.values())
        # bf16 synthesis is a rounding of the fp32 one, not another image.
        assert np.abs(decoded["bf16"] - decoded["fp32"]).mean() < 2.0
