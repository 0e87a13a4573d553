"""The ``.ldc`` container: a fixed header and CRC-checked, length-prefixed sections.

Layout (all integers little-endian; see docs/bitstream.md):

    magic        4  b"\\x89LDC"
    version      1  FORMAT_VERSION
    flags        1  reserved, 0
    model id     1+n  length byte, ASCII
    weights hash 8  first 8 bytes of the weights file's SHA-256
    width        4  u32
    height       4  u32
    mode         1  ColorMode
    quality      2  u16, quality·65535
    steps hint   1  reserved for decoder hints, 0
    n sections   1
    header crc   4  CRC32 of all bytes above
    section*     tag u8, length u32, payload, CRC32 of payload (u32)

Parsing never allocates more than the stream's own length and checks every
declared size before use.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field

from ldcodec.errors import BitstreamError, LimitExceededError, UnsupportedVersionError

MAGIC = b"\x89LDC"
FORMAT_VERSION = 1
HASH_BYTES = 8
#: Default limit on width·height a decoder accepts (overridable per call).
#: Decoding holds full-resolution activations (~250 bytes/pixel) until tiling lands,
#: so the default keeps a hostile header below ~10 GB of memory.
DEFAULT_MAX_PIXELS = 40_000_000
MAX_SIDE = 65535


class ColorMode(enum.IntEnum):
    RGB = 0
    GRAY = 1
    RGBA = 2
    GRAY_ALPHA = 3

    @property
    def has_alpha(self) -> bool:
        return self in (ColorMode.RGBA, ColorMode.GRAY_ALPHA)


class SectionTag(enum.IntEnum):
    HYPER_LATENTS = 1
    LATENTS = 2
    ALPHA = 3


@dataclass
class Header:
    model_id: str
    weights_hash: bytes
    width: int
    height: int
    mode: ColorMode
    quality_code: int
    version: int = FORMAT_VERSION
    flags: int = 0

    @property
    def quality(self) -> float:
        return self.quality_code / 65535.0

    @staticmethod
    def quality_to_code(quality: float) -> int:
        return int(round(min(max(float(quality), 0.0), 1.0) * 65535))


@dataclass
class Stream:
    header: Header
    sections: dict[SectionTag, bytes] = field(default_factory=dict)


_FIXED_AFTER_ID = struct.Struct("<8sIIBHBB")


def serialize(stream: Stream) -> bytes:
    h = stream.header
    model_id = h.model_id.encode("ascii")
    if not 0 < len(model_id) < 256:
        raise ValueError("model id must be 1..255 ASCII characters")
    if len(h.weights_hash) != HASH_BYTES:
        raise ValueError("weights hash must be 8 bytes")
    head = (
        MAGIC
        + struct.pack("<BB", h.version, h.flags)
        + bytes([len(model_id)])
        + model_id
        + _FIXED_AFTER_ID.pack(h.weights_hash, h.width, h.height, int(h.mode), h.quality_code, 0, len(stream.sections))
    )
    parts = [head, struct.pack("<I", zlib.crc32(head))]
    for tag, payload in stream.sections.items():
        parts.append(struct.pack("<BI", int(tag), len(payload)))
        parts.append(payload)
        parts.append(struct.pack("<I", zlib.crc32(payload)))
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BitstreamError(f"truncated stream: {what} needs {n} bytes at offset {self.pos}, "
                                 f"only {len(self.data) - self.pos} left")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out


def parse_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Header, int, int]:
    """Parse and validate the header. Returns (header, section count, offset of the first section)."""
    r = _Reader(data)
    if len(data) < len(MAGIC) or r.take(len(MAGIC), "magic") != MAGIC:
        raise BitstreamError("not an ldcodec stream (bad magic)")
    version, flags = struct.unpack("<BB", r.take(2, "version"))
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"stream format version {version} is not supported (this ldcodec reads version {FORMAT_VERSION}); "
            "upgrade ldcodec" if version > FORMAT_VERSION else f"unknown stream format version {version}"
        )
    id_len = r.take(1, "model id length")[0]
    if id_len == 0:
        raise BitstreamError("corrupt header: empty model id")
    raw_id = r.take(id_len, "model id")
    weights_hash, width, height, mode, quality_code, _hint, n_sections = _FIXED_AFTER_ID.unpack(
        r.take(_FIXED_AFTER_ID.size, "header")
    )
    header_end = r.pos
    (crc,) = struct.unpack("<I", r.take(4, "header CRC"))
    if zlib.crc32(data[:header_end]) != crc:
        raise BitstreamError("corrupt header: CRC mismatch")
    try:
        model_id = raw_id.decode("ascii")
    except UnicodeDecodeError:
        raise BitstreamError("corrupt header: model id is not ASCII") from None
    if flags != 0:
        raise UnsupportedVersionError(f"stream uses feature flags {flags:#x} this ldcodec does not know; "
                                      "upgrade ldcodec")
    if width == 0 or height == 0 or width > MAX_SIDE or height > MAX_SIDE:
        raise BitstreamError(f"corrupt header: image size {width}x{height}")
    if width * height > max_pixels:
        raise LimitExceededError(f"image of {width}x{height} = {width * height} pixels exceeds the limit of "
                                 f"{max_pixels} pixels (raise it with --max-pixels)")
    try:
        color_mode = ColorMode(mode)
    except ValueError:
        raise BitstreamError(f"corrupt header: unknown colour mode {mode}") from None
    header = Header(model_id=model_id, weights_hash=weights_hash, width=width, height=height,
                    mode=color_mode, quality_code=quality_code, version=version, flags=flags)
    return header, n_sections, r.pos


def parse(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Stream:
    """Parse a complete stream, checking every CRC; raises :class:`BitstreamError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError("stream must be bytes")
    data = bytes(data)
    header, n_sections, offset = parse_header(data, max_pixels)
    r = _Reader(data)
    r.pos = offset
    sections: dict[SectionTag, bytes] = {}
    for i in range(n_sections):
        tag, length = struct.unpack("<BI", r.take(5, f"section {i} header"))
        try:
            tag = SectionTag(tag)
        except ValueError:
            raise BitstreamError(f"corrupt stream: unknown section tag {tag}") from None
        if tag in sections:
            raise BitstreamError(f"corrupt stream: duplicate section {tag.name}")
        payload = r.take(length, f"section {tag.name}")
        (crc,) = struct.unpack("<I", r.take(4, f"section {tag.name} CRC"))
        if zlib.crc32(payload) != crc:
            raise BitstreamError(f"corrupt stream: CRC mismatch in section {tag.name}")
        sections[tag] = payload
    if r.pos != len(data):
        raise BitstreamError(f"corrupt stream: {len(data) - r.pos} unexpected bytes after the last section")
    for needed in (SectionTag.HYPER_LATENTS, SectionTag.LATENTS):
        if needed not in sections:
            raise BitstreamError(f"corrupt stream: missing section {needed.name}")
    if header.mode.has_alpha and SectionTag.ALPHA not in sections:
        raise BitstreamError("corrupt stream: missing alpha section")
    return Stream(header=header, sections=sections)
