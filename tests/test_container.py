"""The .ldc container: layout, CRCs, and clean failure on every kind of damage."""

from __future__ import annotations

import struct
import zlib

import pytest

from ldcodec.bitstream import container
from ldcodec.bitstream.container import ColorMode, Header, SectionTag, Stream
from ldcodec.errors import BitstreamError, LimitExceededError, UnsupportedVersionError


def make_stream(width=40, height=30, mode=ColorMode.RGB) -> bytes:
    header = Header(model_id="m1", weights_hash=bytes(range(8)), width=width, height=height, mode=mode,
                    quality_code=Header.quality_to_code(0.25))
    sections = {SectionTag.HYPER_LATENTS: b"\x01\x02\x03\x04", SectionTag.LATENTS: bytes(range(16))}
    if mode.has_alpha:
        sections[SectionTag.ALPHA] = b"alpha!"
    return container.serialize(Stream(header, sections))


def test_round_trip_of_header_and_sections():
    blob = make_stream(mode=ColorMode.RGBA)
    stream = container.parse(blob)
    assert stream.header.model_id == "m1"
    assert stream.header.weights_hash == bytes(range(8))
    assert (stream.header.width, stream.header.height) == (40, 30)
    assert stream.header.mode == ColorMode.RGBA
    assert stream.header.quality == pytest.approx(0.25, abs=1e-4)
    assert stream.sections[SectionTag.LATENTS] == bytes(range(16))
    assert stream.sections[SectionTag.ALPHA] == b"alpha!"


def test_starts_with_magic_and_version():
    blob = make_stream()
    assert blob[:4] == container.MAGIC
    assert blob[4] == container.FORMAT_VERSION


def test_every_truncation_fails_cleanly():
    blob = make_stream()
    for cut in range(len(blob)):
        with pytest.raises(BitstreamError):
            container.parse(blob[:cut])


def test_every_single_byte_flip_is_detected():
    blob = make_stream()
    for i in range(len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 0x5A
        with pytest.raises(BitstreamError):
            container.parse(bytes(damaged))


def test_trailing_garbage_is_rejected():
    with pytest.raises(BitstreamError, match="unexpected bytes"):
        container.parse(make_stream() + b"x")


def test_bad_magic_message():
    with pytest.raises(BitstreamError, match="bad magic"):
        container.parse(b"GIF89a" + make_stream()[6:])


def _with_header_field(blob: bytes, offset: int, value: bytes) -> bytes:
    """Rewrite header bytes and fix the header CRC, as a hostile writer would."""
    stream = container.parse(blob)
    head_len = 4 + 2 + 1 + len(stream.header.model_id) + container._FIXED_AFTER_ID.size
    head = bytearray(blob[:head_len])
    head[offset : offset + len(value)] = value
    return bytes(head) + struct.pack("<I", zlib.crc32(bytes(head))) + blob[head_len + 4 :]


def test_newer_version_is_refused_with_a_message():
    blob = _with_header_field(make_stream(), 4, bytes([container.FORMAT_VERSION + 1]))
    with pytest.raises(UnsupportedVersionError, match="upgrade"):
        container.parse(blob)


def test_declared_size_over_the_pixel_limit_is_refused_before_decoding():
    big = _with_header_field(make_stream(), 4 + 2 + 1 + 2 + 8, struct.pack("<II", 60000, 60000))
    with pytest.raises(LimitExceededError, match="exceeds the limit"):
        container.parse(big)
    with pytest.raises(LimitExceededError):
        container.parse(make_stream(), max_pixels=100)


def test_zero_size_is_refused():
    blob = _with_header_field(make_stream(), 4 + 2 + 1 + 2 + 8, struct.pack("<II", 0, 10))
    with pytest.raises(BitstreamError, match="image size"):
        container.parse(blob)


def test_huge_section_length_does_not_allocate():
    blob = bytearray(make_stream())
    _, _, offset = container.parse_header(bytes(blob))
    blob[offset + 1 : offset + 5] = struct.pack("<I", 0xFFFFFFFF)
    with pytest.raises(BitstreamError, match="truncated"):
        container.parse(bytes(blob))
