"""Byte layout of a keyframe store (``.ldks``); see docs/keyframes.md.

All integers are little-endian. A store is::

    file header      32 bytes
    record*          32-byte record header, JSON, data   (append-only)
    index record     a record of type INDEX: one 16-byte entry per frame
    trailer          32 bytes, at the very end: points at the index record

Data records (frames, store metadata) are only ever appended. The index record
and trailer are written when a writer closes, and removed (truncated away) by
the next writer before it appends; a store without a valid trailer is read by
scanning the record headers.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

FILE_MAGIC = b"\x89LDK\r\n\x1a\n"
FILE_VERSION = 1
_FILE_HEADER = struct.Struct("<8sHH16s")  # + CRC32
FILE_HEADER_SIZE = _FILE_HEADER.size + 4  # 32

RECORD_MAGIC = b"LDKR"
_RECORD_HEADER = struct.Struct("<4sBBHIIIII")  # + CRC32
RECORD_HEADER_SIZE = _RECORD_HEADER.size + 4  # 32

TRAILER_MAGIC = b"LDKT"
_TRAILER = struct.Struct("<4sHHQQI")  # + CRC32
TRAILER_SIZE = _TRAILER.size + 4  # 32

_ENTRY = struct.Struct("<QII")
ENTRY_SIZE = _ENTRY.size  # 16

#: Largest JSON part of one record, and largest record (index entries hold a u32 length).
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_RECORD_BYTES = 0xFFFFFFFF


class RecordType(enum.IntEnum):
    FRAME = 1  #: JSON = frame description + user meta, data = one complete .ldc stream
    METADATA = 2  #: JSON = the whole store metadata (the latest one wins), no data
    INDEX = 3  #: no JSON, data = ENTRY_SIZE bytes per frame


def file_header() -> bytes:
    head = _FILE_HEADER.pack(FILE_MAGIC, FILE_VERSION, 0, bytes(16))
    return head + struct.pack("<I", zlib.crc32(head))


class HeaderProblem(Exception):
    """Internal: the file header is missing, damaged or of another version."""


def check_file_header(data: bytes) -> None:
    if len(data) < FILE_HEADER_SIZE:
        raise HeaderProblem("truncated file header")
    magic, version, flags, _reserved = _FILE_HEADER.unpack_from(data)
    if magic != FILE_MAGIC:
        raise HeaderProblem("not a keyframe store (bad magic)")
    (crc,) = struct.unpack_from("<I", data, _FILE_HEADER.size)
    if zlib.crc32(data[: _FILE_HEADER.size]) != crc:
        raise HeaderProblem("corrupt file header (CRC mismatch)")
    if version != FILE_VERSION:
        raise HeaderProblem(f"store format version {version} is not supported (this ldcodec reads version "
                            f"{FILE_VERSION}){'; upgrade ldcodec' if version > FILE_VERSION else ''}")
    if flags != 0:
        raise HeaderProblem(f"store uses feature flags {flags:#x} this ldcodec does not know")


@dataclass(frozen=True)
class RecordHeader:
    type: int
    seq: int  #: frame index (FRAME), frames before it (METADATA), frame count (INDEX)
    json_len: int
    data_len: int
    json_crc: int
    data_crc: int

    @property
    def size(self) -> int:
        """Length of the whole record, header included."""
        return RECORD_HEADER_SIZE + self.json_len + self.data_len


def pack_record(rtype: RecordType, seq: int, json_bytes: bytes = b"", data: bytes = b"") -> bytes:
    if len(json_bytes) > MAX_JSON_BYTES or RECORD_HEADER_SIZE + len(json_bytes) + len(data) > MAX_RECORD_BYTES:
        raise ValueError("record too large")
    head = _RECORD_HEADER.pack(RECORD_MAGIC, int(rtype), 0, 0, seq, len(json_bytes), len(data),
                               zlib.crc32(json_bytes), zlib.crc32(data))
    return b"".join((head, struct.pack("<I", zlib.crc32(head)), json_bytes, data))


def parse_record_header(data: bytes) -> RecordHeader | None:
    """The header at the start of ``data``, or None if it is short, has a bad magic or a bad CRC."""
    if len(data) < RECORD_HEADER_SIZE:
        return None
    magic, rtype, flags, _res, seq, json_len, data_len, json_crc, data_crc = _RECORD_HEADER.unpack_from(data)
    if magic != RECORD_MAGIC:
        return None
    (crc,) = struct.unpack_from("<I", data, _RECORD_HEADER.size)
    if zlib.crc32(data[: _RECORD_HEADER.size]) != crc or json_len > MAX_JSON_BYTES:
        return None
    return RecordHeader(rtype, seq, json_len, data_len, json_crc, data_crc)


def pack_trailer(index_offset: int, meta_offset: int, frames: int) -> bytes:
    head = _TRAILER.pack(TRAILER_MAGIC, FILE_VERSION, 0, index_offset, meta_offset, frames)
    return head + struct.pack("<I", zlib.crc32(head))


@dataclass(frozen=True)
class Trailer:
    index_offset: int
    meta_offset: int  #: offset of the latest METADATA record, 0 if none
    frames: int


def parse_trailer(data: bytes) -> Trailer | None:
    if len(data) != TRAILER_SIZE:
        return None
    magic, version, flags, index_offset, meta_offset, frames = _TRAILER.unpack_from(data)
    (crc,) = struct.unpack_from("<I", data, _TRAILER.size)
    if magic != TRAILER_MAGIC or zlib.crc32(data[: _TRAILER.size]) != crc or version != FILE_VERSION or flags:
        return None
    return Trailer(index_offset, meta_offset, frames)


def entry_crc(index: int, offset: int, length: int) -> int:
    return zlib.crc32(struct.pack("<QQI", index, offset, length))


def pack_entry(index: int, offset: int, length: int) -> bytes:
    return _ENTRY.pack(offset, length, entry_crc(index, offset, length))


def parse_entry(index: int, data: bytes, at: int = 0) -> tuple[int, int] | None:
    offset, length, crc = _ENTRY.unpack_from(data, at)
    if crc != entry_crc(index, offset, length):
        return None
    return offset, length
