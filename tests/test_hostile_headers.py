"""Hostile headers: declared sizes are checked against the limit and against the sections
that must carry them, before anything large is allocated or computed; sections are read
to their end exactly; valid streams (flat images included) always pass."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import constriction
import numpy as np
import pytest
from PIL import Image

from ldcodec.bitstream import container, entropy_coding
from ldcodec.bitstream.container import SectionTag
from ldcodec.bitstream.entropy_coding import (
    decode_hyper_latents,
    decode_latents,
    encode_hyper_latents,
    encode_latents,
)
from ldcodec.codec.entropy_parameters import SCALE_LEVELS, SCALE_TABLE, Y_SYMBOL_MAX, Y_SYMBOL_MIN
from ldcodec.errors import BitstreamError, LdcodecError, LimitExceededError
from tests.conftest import synthetic_image


def _resized(blob: bytes, width: int, height: int) -> bytes:
    """The same sections under a header declaring another size (CRCs valid: a hostile writer)."""
    stream = container.parse(blob, max_pixels=2**40)
    stream.header.width, stream.header.height = width, height
    return container.serialize(stream)


def _with_section(blob: bytes, tag: SectionTag, payload: bytes) -> bytes:
    stream = container.parse(blob)
    stream.sections[tag] = payload
    return container.serialize(stream)


@pytest.fixture(scope="module")
def small_stream(tiny_codec):
    return tiny_codec.encode(synthetic_image(32, 48), quality=0.5)


@pytest.mark.parametrize("size", [(256, 256), (4000, 3000), (6000, 6000)])
def test_big_declared_image_with_small_sections_is_refused_before_any_pixel_work(tiny_codec, small_stream,
                                                                                  monkeypatch, size):
    calls = []
    monkeypatch.setattr(tiny_codec.model, "synthesise", lambda *a, **k: calls.append(1))
    tracemalloc.start()
    try:
        with pytest.raises(BitstreamError, match="too short for the declared image size|does not end where"):
            tiny_codec.decode(_resized(small_stream, *size))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not calls
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB traced for a refused stream"


def test_size_over_the_pixel_limit_is_refused_before_allocation(tiny_codec, small_stream):
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceededError, match="exceeds the limit of"):
            tiny_codec.decode(_resized(small_stream, 65535, 65535))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


@pytest.mark.parametrize("declared", [2**32 - 1, 2**31, 2**32 - 4, None])
def test_section_lengths_cannot_wrap_or_read_past_the_end(small_stream, declared):
    blob = bytearray(small_stream)
    _, _, offset = container.parse_header(bytes(blob))
    first_len = struct.unpack_from("<I", blob, offset + 1)[0]
    declared = len(blob) - offset if declared is None else declared  # one more than what is left
    struct.pack_into("<I", blob, offset + 1, declared)
    assert declared > first_len
    with pytest.raises(BitstreamError, match="truncated stream"):
        container.parse(bytes(blob))


def test_section_count_larger_than_the_stream(small_stream):
    stream = container.parse(small_stream)
    head = container.serialize(stream)
    id_len = head[6]
    count_at = 7 + id_len + container._FIXED_AFTER_ID.size - 1
    blob = bytearray(head)
    blob[count_at] = 255
    blob[count_at + 1 : count_at + 5] = struct.pack("<I", zlib.crc32(bytes(blob[: count_at + 1])))
    with pytest.raises(BitstreamError, match="truncated stream"):
        container.parse(bytes(blob))


def test_empty_sections_are_refused(tiny_codec, small_stream):
    for tag in (SectionTag.HYPER_LATENTS, SectionTag.LATENTS):
        with pytest.raises(BitstreamError, match="section is empty|too short"):
            tiny_codec.decode(_with_section(small_stream, tag, b""))
    with pytest.raises(BitstreamError, match="section is empty|too short"):
        decode_hyper_latents(b"", np.full((3, 129), 1 / 129), (3, 1, 1))
    with pytest.raises(BitstreamError, match="section is empty|too short"):
        decode_latents(b"", np.zeros((2, 1, 1), dtype=np.int64))


def test_padded_sections_are_refused(tiny_codec, small_stream):
    """Two or more words after the last symbol: the decoder never reads them, so they cannot be valid."""
    stream = container.parse(small_stream)
    for tag in (SectionTag.HYPER_LATENTS, SectionTag.LATENTS):
        for pad in (bytes(8), b"\xff" * 8, bytes(range(12))):
            blob = _with_section(small_stream, tag, stream.sections[tag] + pad)
            with pytest.raises(BitstreamError, match="does not end where its symbols do"):
                tiny_codec.decode(blob)


def test_truncated_sections_are_mostly_refused_and_never_crash(tiny_codec):
    """Zero padding past the end is what constriction decodes silently; ``maybe_exhausted`` and the
    size bound catch most truncations (the rest decode to an image of the declared size)."""
    refused = total = 0
    for seed in range(6):
        blob = tiny_codec.encode(synthetic_image(40, 56, seed=seed), quality=0.2 + 0.15 * seed)
        stream = container.parse(blob)
        for tag in (SectionTag.HYPER_LATENTS, SectionTag.LATENTS):
            payload = stream.sections[tag]
            for words in range(1, min(4, len(payload) // 4) + 1):
                total += 1
                try:
                    image = tiny_codec.decode(_with_section(blob, tag, payload[: -4 * words]))
                    assert image.size == (56, 40)
                except LdcodecError:
                    refused += 1
    assert total >= 20
    assert refused >= 0.7 * total, f"only {refused}/{total} truncations refused"


@pytest.mark.parametrize("quality", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("size", [(1, 1), (16, 16), (64, 96), (200, 130)])
def test_valid_streams_pass_the_checks_flat_images_included(tiny_codec, quality, size):
    h, w = size
    images = [np.full((h, w, 3), v, np.uint8) for v in (0, 128, 255)] + [synthetic_image(h, w, seed=3)]
    images.append(np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8))
    for img in images:
        assert tiny_codec.decode(tiny_codec.encode(img, quality=quality)).size == (w, h)


def test_a_large_flat_image_compresses_to_little_and_still_decodes(tiny_codec):
    blob = tiny_codec.encode(np.full((512, 768, 3), 77, np.uint8), quality=0.0)
    assert len(blob) < 4096
    assert tiny_codec.decode(blob).size == (768, 512)


@pytest.mark.parametrize("name", ["quantized-gaussian", "tables-v1"])
def test_latent_size_bound_is_a_lower_bound_for_constriction(name):
    """The bound assumes each symbol costs >= -log2(p_max) bits; check it against the installed
    constriction for every scale level and symbol model, with the cheapest possible message (all zeros)."""
    from ldcodec.bitstream.symbol_models import symbol_models

    models = symbol_models(name)
    bound = entropy_coding.latent_min_bits(models)
    n = 20_000
    for level in range(SCALE_LEVELS):
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(np.full(n, -models.offset, np.int32), models.model(level))
        words = len(enc.get_compressed())
        assert 32 * words >= n * bound[level], level
    if name == "quantized-gaussian":
        assert np.array_equal(bound, entropy_coding._LATENT_MIN_BITS)


def test_hyper_latent_size_bound_is_a_lower_bound_for_constriction():
    n = 20_000
    for peak in (0.3, 0.9, 0.999, 1 - 1e-7):
        row = np.full(129, (1 - peak) / 128)
        row[64] = peak
        row = (row + 1e-9) / (row + 1e-9).sum()
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(np.full(n, 64, np.int32), constriction.stream.model.Categorical(row, perfect=False))
        words = len(enc.get_compressed())
        assert 32 * words >= n * float(entropy_coding._min_bits(np.array([row.max()]), 129)[0]), peak


def test_round_trip_of_coding_functions_with_the_checks():
    rng = np.random.default_rng(3)
    idx = rng.integers(0, SCALE_LEVELS, size=(4, 5, 6))
    symbols = np.round(rng.normal(0, SCALE_TABLE[idx])).clip(Y_SYMBOL_MIN, Y_SYMBOL_MAX).astype(np.int32)
    assert np.array_equal(decode_latents(encode_latents(symbols, idx), idx), symbols)
    table = rng.random((3, 129))
    table /= table.sum(1, keepdims=True)
    z = rng.integers(0, 129, size=(3, 2, 2)).astype(np.int32)
    assert np.array_equal(decode_hyper_latents(encode_hyper_latents(z, table), table, z.shape), z)


def _png_with_ihdr_size(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


@pytest.mark.parametrize("declared", [(100_000, 100_000), (65535, 65535), (33, 17), (0, 0)])
def test_alpha_png_declaring_another_size_is_refused_before_decompression(tiny_codec, declared):
    """A PNG declaring more than 179 Mpixel made Pillow raise DecompressionBombError (fuzzing finding)."""
    rgba = np.dstack([np.zeros((16, 32, 3), np.uint8), np.full((16, 32), 200, np.uint8)])
    blob = _with_section(tiny_codec.encode(rgba), SectionTag.ALPHA, _png_with_ihdr_size(*declared))
    with pytest.raises(BitstreamError, match="alpha plane"):
        tiny_codec.decode(blob)


def test_alpha_in_another_image_format_is_refused(tiny_codec):
    rgba = np.dstack([np.zeros((16, 32, 3), np.uint8), np.full((16, 32), 200, np.uint8)])
    for fmt in ("BMP", "GIF", "TIFF"):
        buf = io.BytesIO()
        Image.new("L", (32, 16)).save(buf, format=fmt)
        with pytest.raises(BitstreamError, match="alpha plane"):
            tiny_codec.decode(_with_section(tiny_codec.encode(rgba), SectionTag.ALPHA, buf.getvalue()))
