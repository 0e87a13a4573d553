"""A short run of the keyframe-store fuzzer, and one regression test per fuzzing finding.

The long run is ``python -m ldcodec.fuzz --target all --count 100000 --store-count 20000``
(figures in docs/robustness.md).
"""

from __future__ import annotations

import struct
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest

from ldcodec.errors import LdcodecError
from ldcodec.fuzz import _build_store, _store_records, fuzz_store, memory_limit
from ldcodec.store import CorruptFrameError, KeyframeStore, StoreError
from ldcodec.store import format as fmt

pytestmark = pytest.mark.fuzz


def test_mutated_stores_end_in_frames_or_ldcodec_errors():
    report = fuzz_store(count=400, seed=1)
    assert report.inputs == 400
    assert report.frames_decoded > 0  # mutations that leave frames intact still read back
    assert report.rejected + report.reads_rejected > 0
    assert not report.findings, "\n".join(report.findings[:5])


def test_store_errors_are_ldcodec_errors():
    assert issubclass(StoreError, LdcodecError) and issubclass(CorruptFrameError, LdcodecError)


@pytest.fixture
def store_bytes(tmp_path, tiny_codec):
    path = tmp_path / "s.ldks"
    with KeyframeStore(path, "w", codec=tiny_codec) as store:
        store.metadata["name"] = "x"
        store.append(np.zeros((8, 8), np.float32), meta={"t": 0})
        store.append(np.full((6, 10, 3), 9, np.uint8), meta={"t": 1})
    return path.read_bytes()


def _open_and_read_all(path, codec):
    """What the fuzzer does: open, then every call on every frame may only raise LdcodecError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with KeyframeStore(path, codec=codec) as store:
            _ = store.metadata, store.info(), store.verify()
            outcomes = []
            for i in range(len(store)):
                for call in (store.frame_info, store.meta, store.stream, store.__getitem__):
                    try:
                        call(i)
                        outcomes.append("ok")
                    except LdcodecError as exc:
                        outcomes.append(type(exc).__name__)
            return len(store), outcomes


@pytest.mark.parametrize("doc", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
                                 b"[1, 2]", b'"text"', b"null"])
def test_frame_json_nested_too_deeply_or_not_an_object_is_a_corrupt_frame(tmp_path, tiny_codec, store_bytes, doc):
    """Findings: deep nesting raised RecursionError, a non-object raised AttributeError."""
    records = _store_records(store_bytes)
    frame = next(r for r in records if r.type == fmt.RecordType.FRAME)
    frame.json = doc
    path = tmp_path / "hostile.ldks"
    path.write_bytes(_build_store(records))
    frames, outcomes = _open_and_read_all(path, tiny_codec)
    assert frames == 2
    assert outcomes[:4] == ["CorruptFrameError"] * 4 and outcomes[4:] == ["ok"] * 4


def test_store_metadata_nested_too_deeply_is_skipped(tmp_path, tiny_codec, store_bytes):
    records = _store_records(store_bytes)
    meta = next(r for r in records if r.type == fmt.RecordType.METADATA)
    meta.json = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "hostile.ldks"
    path.write_bytes(_build_store(records))
    frames, outcomes = _open_and_read_all(path, tiny_codec)
    assert frames == 2 and outcomes == ["ok"] * 8


def test_huge_frame_index_in_a_valid_record_header_does_not_allocate(tmp_path, tiny_codec, store_bytes):
    """Finding: a record header (CRC fixed) with seq = 2^32 - 1 made the scan allocate ~4e9 index entries."""
    records = _store_records(store_bytes)
    frames = [r for r in records if r.type == fmt.RecordType.FRAME]
    frames[-1].seq = 2**32 - 1
    path = tmp_path / "hostile.ldks"
    path.write_bytes(_build_store(records, closed=False))  # no index: the reader scans
    tracemalloc.start()
    try:
        with memory_limit(1024):  # a regression fails with MemoryError instead of exhausting the machine
            count, outcomes = _open_and_read_all(path, tiny_codec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 1 and outcomes == ["ok"] * 4  # the implausible record is skipped as corrupt
    assert peak < 64 * 2**20


def _rewrite_trailer(blob: bytes, **fields) -> bytes:
    magic, version, flags, index_offset, meta_offset, frames = fmt._TRAILER.unpack_from(blob, len(blob) - 32)
    values = {"index_offset": index_offset, "meta_offset": meta_offset, "frames": frames}
    values.update(fields)
    head = fmt._TRAILER.pack(magic, version, flags, values["index_offset"], values["meta_offset"], values["frames"])
    return blob[:-32] + head + struct.pack("<I", zlib.crc32(head))


@pytest.mark.parametrize("meta_offset", [2**63, 2**64 - 1, 2**40])
def test_trailer_offsets_beyond_any_file_are_read_as_nothing(tmp_path, tiny_codec, store_bytes, meta_offset):
    """Finding: a trailer (CRC fixed) pointing at offset >= 2^63 raised OverflowError from os.pread."""
    path = tmp_path / "hostile.ldks"
    path.write_bytes(_rewrite_trailer(store_bytes, meta_offset=meta_offset))
    frames, outcomes = _open_and_read_all(path, tiny_codec)  # falls back to scanning the records
    assert frames == 2 and outcomes == ["ok"] * 8


@pytest.mark.parametrize("offset,length", [(2**64 - 1, 100), (2**63, 100), (32, 2**32 - 1), (32, 2**31)])
def test_index_entry_with_huge_offset_or_length(tmp_path, tiny_codec, store_bytes, offset, length):
    """Findings: OverflowError for offsets >= 2^63; a 4 GiB length was allocated by os.pread up front."""
    blob = bytearray(store_bytes)
    trailer = fmt.parse_trailer(bytes(blob[-32:]))
    at = trailer.index_offset + fmt.RECORD_HEADER_SIZE  # entry 0
    struct.pack_into("<QII", blob, at, offset, length, fmt.entry_crc(0, offset, length))
    path = tmp_path / "hostile.ldks"
    path.write_bytes(bytes(blob))
    tracemalloc.start()
    try:
        with memory_limit(1024):
            frames, outcomes = _open_and_read_all(path, tiny_codec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frames == 2
    assert outcomes[:4] == ["CorruptFrameError"] * 4 and outcomes[4:] == ["ok"] * 4
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB traced"


@pytest.mark.parametrize("dtype", ["object", "V8", "S5", "<M8[s]", "uint8"])
def test_float_frame_with_a_non_float_dtype_is_a_corrupt_frame(tmp_path, tiny_codec, store_bytes, dtype):
    import json

    records = _store_records(store_bytes)
    frame = next(r for r in records if r.type == fmt.RecordType.FRAME)
    doc = json.loads(frame.json)
    assert doc["kind"] == "float"
    doc["dtype"] = dtype
    frame.json = json.dumps(doc).encode()
    path = tmp_path / "hostile.ldks"
    path.write_bytes(_build_store(records))
    with KeyframeStore(path, codec=tiny_codec) as store:
        with pytest.raises(CorruptFrameError, match="frame 0"):
            store[0]
        assert store[1].shape == (6, 10, 3)


def _with_frame_json(store_bytes: bytes, **fields) -> bytes:
    import json

    records = _store_records(store_bytes)
    frame = next(r for r in records if r.type == fmt.RecordType.FRAME)
    doc = json.loads(frame.json)
    doc.update(fields)
    frame.json = json.dumps(doc).encode()
    return _build_store(records)


@pytest.mark.parametrize("fields", [{"width": 2**1100}, {"quality": 2**1100}, {"shape": [1e999, 8]},
                                    {"range": [2**1100, 1.0]}])
def test_numbers_too_large_for_a_float_are_a_corrupt_frame(tmp_path, tiny_codec, store_bytes, fields):
    """Findings of the long run: OverflowError from frame_info (bpp, quality) and from restoring a frame."""
    path = tmp_path / "hostile.ldks"
    path.write_bytes(_with_frame_json(store_bytes, **fields))
    frames, outcomes = _open_and_read_all(path, tiny_codec)
    assert frames == 2 and outcomes[4:] == ["ok"] * 4
    assert "CorruptFrameError" in outcomes[:4]


def test_deeply_nested_meta_is_returned_and_described(tmp_path, tiny_codec, store_bytes):
    """Finding: FrameInfo.to_dict() (via dataclasses.asdict) raised RecursionError for meta nested ~500 deep."""
    import json

    deep = json.loads("[" * 600 + "]" * 600)
    path = tmp_path / "deep.ldks"
    path.write_bytes(_with_frame_json(store_bytes, meta=deep))
    with KeyframeStore(path, codec=tiny_codec) as store:
        assert store.meta(0) == deep
        assert store.frame_info(0).to_dict()["meta"] == deep
