"""KeyframeStore: random access, metadata, float fields, crash recovery, corruption, modes, locking.

Uses the tiny random-weights codec: reconstructions are poor, so float fields are
checked for exact range/dtype/shape and a loose error bound (≤ the range); the
bounds measured with the shipped model are in docs/keyframes.md.
"""

from __future__ import annotations

import errno
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from ldcodec.errors import LdcodecError
from ldcodec.store import (
    CorruptFrameError,
    FrameIndexError,
    InvalidFrameError,
    KeyframeStore,
    StoreError,
    StoreLockedError,
    StoreRecoveryWarning,
)
from ldcodec.store import format as fmt
from ldcodec.store.frames import prepare_frame, restore_frame


def _frames(image_factory):
    """Frames of every accepted kind and of different sizes."""
    field = np.add.outer(np.sin(np.linspace(0, 3, 24)), np.cos(np.linspace(0, 2, 40))).astype(np.float32) * 4 - 1
    return [
        image_factory(20, 30, 3, seed=1),                       # uint8 RGB
        image_factory(33, 17, 1, seed=2),                       # uint8 gray H×W
        Image.fromarray(image_factory(16, 16, 3, seed=3)),      # PIL RGB
        field,                                                  # float32 H×W
        np.dstack([image_factory(18, 22, 3, seed=4), np.full((18, 22), 200, np.uint8)]),  # uint8 RGBA
        Image.fromarray(image_factory(25, 19, 1, seed=5), "L"),  # PIL gray
    ]


def _build(path, codec, frames, mode="w", metadata=None):
    # quality 1: the tiny random model's streams depend on the content there (at 0.5 they barely do)
    with KeyframeStore(path, mode, quality=1.0, codec=codec) as store:
        if metadata is not None:
            store.metadata.update(metadata)
        for k, frame in enumerate(frames):
            assert store.append(frame, meta={"k": k, "t": k * 0.25}) == len(store) - 1
    return path


@pytest.fixture
def built(tmp_path, tiny_codec, image_factory):
    frames = _frames(image_factory)
    path = _build(tmp_path / "s.ldks", tiny_codec, frames, metadata={"run": "cavity", "dt": 0.25})
    return path, frames


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


# Random access -------------------------------------------------------------------------------
def test_random_access_matches_the_stored_streams(built, tiny_codec):
    path, frames = built
    with KeyframeStore(path, codec=tiny_codec) as store:
        assert len(store) == len(frames) and store.recovery is None
        assert len({store.stream(i) for i in range(len(store))}) == len(frames)
        for i in [3, 0, 5, 1, 4, 2, -1, -6]:
            blob = store.stream(i)
            # the stream is exactly the encoder's (floats: of the frame mapped to 8 bits with its range)
            assert blob == tiny_codec.encode(prepare_frame(frames[i]).codec_input, quality=1.0)
            got = store[i]
            want = restore_frame(tiny_codec.decode(blob), store.frame_info(i).to_dict())
            assert type(got) is type(want) and _same(got, want)
        # what went in comes out: PIL for PIL, arrays of the same shape and dtype for arrays
        for i, frame in enumerate(frames):
            got = store[i]
            if isinstance(frame, Image.Image):
                assert isinstance(got, Image.Image) and got.size == frame.size and got.mode == frame.mode
                assert _same(got, tiny_codec.decode(store.stream(i)))
            else:
                assert isinstance(got, np.ndarray) and got.shape == frame.shape and got.dtype == frame.dtype
                if frame.dtype == np.uint8:
                    assert _same(got, np.asarray(tiny_codec.decode(store.stream(i))).reshape(frame.shape))


def test_slices_iteration_and_index_errors(built, tiny_codec):
    path, frames = built
    with KeyframeStore(path, codec=tiny_codec) as store:
        singles = [store[i] for i in range(len(store))]
        for sl in [slice(1, 4), slice(None, None, 2), slice(-2, None), slice(4, 1, -1), slice(10, 20)]:
            got = store[sl]
            assert isinstance(got, list) and len(got) == len(range(*sl.indices(len(frames))))
            assert all(_same(a, b) for a, b in zip(got, singles[sl]))
        assert all(_same(a, b) for a, b in zip(store, singles))
        assert store[np.int64(2)] is not None
        for bad in (6, -7, 100):
            with pytest.raises(FrameIndexError) as exc:
                store[bad]
            assert isinstance(exc.value, IndexError) and isinstance(exc.value, StoreError)
        with pytest.raises(TypeError):
            store["1"]


def test_meta_frame_info_and_store_info(built, tiny_codec):
    path, frames = built
    with KeyframeStore(path) as store:  # no codec needed to describe frames
        assert store.metadata == {"run": "cavity", "dt": 0.25}
        for i, frame in enumerate(frames):
            assert store.meta(i) == {"k": i, "t": i * 0.25}
            fi = store.frame_info(i)
            h, w = (frame.size[1], frame.size[0]) if isinstance(frame, Image.Image) else frame.shape[:2]
            assert (fi.index, fi.width, fi.height, fi.quality) == (i, w, h, 1.0)
            assert fi.bytes == len(store.stream(i)) and fi.bpp == pytest.approx(8 * fi.bytes / (w * h))
        fi = store.frame_info(3)
        assert (fi.kind, fi.dtype, fi.shape) == ("float", "float32", [24, 40])
        assert fi.range == [float(frames[3].min()), float(frames[3].max())]  # exact float64 values
        info = store.info()
        assert info.frames == 6 and info.corrupt_frames == [] and info.file_bytes == os.path.getsize(path)
        assert info.stream_bytes == sum(len(store.stream(i)) for i in range(6))
        assert info.mean_bpp == pytest.approx(8 * info.stream_bytes / info.pixels)
        assert store._codec is None  # nothing above decoded a frame


# Float fields ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,shape", [(np.float32, (37, 29)), (np.float64, (20, 24, 3)), (np.float32, (16, 16, 1)),
                                         (np.float16, (19, 23))])
def test_float_fields_keep_range_dtype_and_shape(tmp_path, tiny_codec, dtype, shape):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0: shape[0], 0: shape[1]]
    base = 4 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 3.0
    x = (np.repeat(base[..., None], shape[2], 2) if len(shape) == 3 else base) + rng.normal(0, 0.1, shape)
    x = x.astype(dtype)
    lo, hi = float(x.min()), float(x.max())
    with KeyframeStore(tmp_path / "f.ldks", "w", codec=tiny_codec) as store:
        store.append(x)
    with KeyframeStore(tmp_path / "f.ldks", codec=tiny_codec) as store:
        y = store[0]
        assert y.dtype == x.dtype and y.shape == x.shape
        assert store.frame_info(0).range == [lo, hi]
        assert float(y.min()) >= lo and float(y.max()) <= hi
        assert np.abs(y.astype(np.float64) - x.astype(np.float64)).max() <= hi - lo


def test_constant_float_field_comes_back_exactly(tmp_path, tiny_codec):
    with KeyframeStore(tmp_path / "c.ldks", "w", codec=tiny_codec) as store:
        store.append(np.full((12, 20), -2.75, np.float32))
        y = store[0]
    assert y.dtype == np.float32 and np.all(y == np.float32(-2.75))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_fields_are_refused(tmp_path, tiny_codec, bad):
    x = np.zeros((8, 8), np.float32)
    x[3, 4] = bad
    with KeyframeStore(tmp_path / "n.ldks", "w", codec=tiny_codec) as store:
        with pytest.raises(InvalidFrameError, match="NaN or infinite"):
            store.append(x)
        assert len(store) == 0


@pytest.mark.parametrize("frame", [np.zeros((8, 8), np.int32), np.zeros((8, 8, 2), np.uint8), np.zeros((4,), np.uint8),
                                   np.zeros((8, 8, 4), np.float32), np.zeros((0, 8), np.uint8), "frame.png", [1, 2]])
def test_unsupported_frames_are_refused(tmp_path, tiny_codec, frame):
    with KeyframeStore(tmp_path / "u.ldks", "w", codec=tiny_codec) as store:
        with pytest.raises(InvalidFrameError):
            store.append(frame)


def test_meta_must_be_json(tmp_path, tiny_codec, image_factory):
    path = tmp_path / "m.ldks"
    with KeyframeStore(path, "w", codec=tiny_codec) as store:
        store.append(image_factory(8, 8), meta={"step": np.int64(3), "x": np.float32(0.5)})  # numpy scalars ok
        size = os.path.getsize(path)
        for bad in ({"x": float("nan")}, {"x": object()}, [1, 2]):
            with pytest.raises(StoreError):
                store.append(image_factory(8, 8), meta=bad)
        assert os.path.getsize(path) == size and len(store) == 1
        assert store.meta(0) == {"step": 3, "x": 0.5}


# Modes, metadata, locking ----------------------------------------------------------------------
def test_reopen_and_append_continues_indexes_and_keeps_metadata(built, tiny_codec, image_factory):
    path, frames = built
    with KeyframeStore(path, "a", codec=tiny_codec) as store:
        assert len(store) == 6 and store.metadata["run"] == "cavity"
        store.metadata["note"] = "second session"
        assert store.append(image_factory(10, 12), meta={"k": 6}) == 6
    with KeyframeStore(path, codec=tiny_codec) as store:
        assert len(store) == 7 and store.recovery is None
        assert store.metadata == {"run": "cavity", "dt": 0.25, "note": "second session"}
        assert store.meta(6) == {"k": 6} and store[6].shape == (10, 12, 3)
        assert store.stream(2) == tiny_codec.encode(frames[2], quality=1.0)
    # an "a" session that changes nothing leaves the file byte for byte as it was
    before = path.read_bytes()
    with KeyframeStore(path, "a", codec=tiny_codec):
        pass
    assert path.read_bytes() == before


def test_metadata_only_change_is_persisted(built):
    path, _ = built
    with KeyframeStore(path, "a") as store:
        store.metadata = {"replaced": True}
    with KeyframeStore(path) as store:
        assert store.metadata == {"replaced": True} and len(store) == 6


def test_read_only_mode_refuses_writes(built, image_factory):
    path, _ = built
    before = path.read_bytes()
    with KeyframeStore(path, "r") as store:
        with pytest.raises(StoreError, match="read-only"):
            store.append(image_factory(8, 8))
        with pytest.raises(StoreError):
            store.metadata = {"x": 1}
        store.metadata["x"] = 1  # a copy: not saved
    with KeyframeStore(path, "r") as store:
        assert "x" not in store.metadata
    assert path.read_bytes() == before


def test_w_truncates(built, tiny_codec, image_factory):
    path, _ = built
    with KeyframeStore(path, "w", codec=tiny_codec) as store:
        assert len(store) == 0 and store.metadata == {}
        store.append(image_factory(9, 9))
    with KeyframeStore(path) as store:
        assert len(store) == 1 and store.metadata == {}


def test_bad_paths_and_arguments(tmp_path, tiny_codec):
    with pytest.raises(StoreError, match="no such store"):
        KeyframeStore(tmp_path / "missing.ldks")
    assert not (tmp_path / "missing.ldks").exists()
    png = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(png)
    before = png.read_bytes()
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match="not a keyframe store"):
            KeyframeStore(png, mode)
    assert png.read_bytes() == before
    with pytest.raises(StoreError):
        KeyframeStore(tmp_path, "r")
    with pytest.raises(StoreError, match="mode"):
        KeyframeStore(tmp_path / "x.ldks", "rw")
    with pytest.raises(StoreError, match="quality"):
        KeyframeStore(tmp_path / "x.ldks", "w", quality=1.5)
    store = KeyframeStore(tmp_path / "y.ldks", "w", codec=tiny_codec)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store[0]
    assert issubclass(StoreError, LdcodecError)


def test_single_writer_and_concurrent_reader(tmp_path, tiny_codec, image_factory):
    path = tmp_path / "c.ldks"
    writer = KeyframeStore(path, "w", codec=tiny_codec)
    try:
        with pytest.raises(StoreLockedError):
            KeyframeStore(path, "a")
        with pytest.raises(StoreLockedError):
            KeyframeStore(path, "w")
        writer.append(image_factory(8, 8, seed=1))
        writer.append(image_factory(8, 8, seed=2))
        with KeyframeStore(path, "r", codec=tiny_codec) as reader:  # no index yet: scans, finds both
            assert len(reader) == 2 and reader.recovery is not None and reader.recovery.clean
            writer.append(image_factory(8, 8, seed=3))
            assert len(reader) == 2  # a snapshot of the frames committed when it opened
            assert _same(reader[1], writer[1])
            assert reader.refresh() == 3 and _same(reader[2], writer[2])
    finally:
        writer.close()
    with KeyframeStore(path, "a") as again:
        assert len(again) == 3


# Crash safety -----------------------------------------------------------------------------------
def _crash_image(path, codec, image_factory, n_before=2):
    """Bytes of a store whose writer was killed right after its last append returned, and the
    offset where that last frame's record starts."""
    with KeyframeStore(path, "w", codec=codec) as store:
        store.metadata["name"] = "crash"
        for k in range(n_before):
            store.append(image_factory(12 + k, 16, seed=k), meta={"k": k})
    store = KeyframeStore(path, "a", codec=codec)
    start = os.path.getsize(path) - fmt.RECORD_HEADER_SIZE - n_before * fmt.ENTRY_SIZE - fmt.TRAILER_SIZE
    store.append(image_factory(15, 11, seed=9), meta={"k": n_before})
    data = path.read_bytes()  # what a crash now would leave: no index, no trailer
    store.close()
    return data, start


def test_truncation_at_every_byte_of_the_last_record(tmp_path, tiny_codec, image_factory):
    path = tmp_path / "t.ldks"
    data, start = _crash_image(path, tiny_codec, image_factory)
    with KeyframeStore(path) as store:
        want = [store.stream(i) for i in range(3)]
    cut_file = tmp_path / "cut.ldks"
    for cut in range(start, len(data) + 1):
        cut_file.write_bytes(data[:cut])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store = KeyframeStore(cut_file, "r")
        with store:
            complete = cut == len(data)
            assert len(store) == (3 if complete else 2), cut
            assert [store.stream(i) for i in range(len(store))] == want[: len(store)]
            assert store.metadata == {"name": "crash"}
            rec = store.recovery
            assert rec is not None and rec.frames == len(store)
            assert rec.dropped_bytes == (0 if complete else cut - start)
            assert (rec.dropped_offset == start) == (not complete and cut > start)
            assert not rec.lost_frames
            assert any(issubclass(w.category, StoreRecoveryWarning) for w in caught) == (start < cut < len(data))
    assert cut_file.read_bytes() == data  # mode "r" never modifies the file


def test_reopen_in_append_mode_after_a_torn_append(tmp_path, tiny_codec, image_factory):
    path = tmp_path / "t.ldks"
    data, start = _crash_image(path, tiny_codec, image_factory)
    for cut in sorted({start + 1, start + fmt.RECORD_HEADER_SIZE - 1, start + fmt.RECORD_HEADER_SIZE + 5,
                       (start + len(data)) // 2, len(data) - 1}):
        path.write_bytes(data[:cut])
        with pytest.warns(StoreRecoveryWarning, match="dropped an incomplete record"):
            store = KeyframeStore(path, "a", codec=tiny_codec)
        with store:
            assert len(store) == 2 and store.recovery.dropped_bytes == cut - start
            assert store.append(image_factory(7, 9), meta={"k": "new"}) == 2
        with KeyframeStore(path, codec=tiny_codec) as store:
            assert store.recovery is None and len(store) == 3  # index rewritten at close
            assert store.meta(2) == {"k": "new"} and store[2].shape == (7, 9, 3)
            assert store.meta(1) == {"k": 1} and store.metadata == {"name": "crash"}


def test_crash_while_writing_the_index_loses_no_frame(built, tiny_codec):
    path, _ = built
    data = path.read_bytes()
    with KeyframeStore(path) as store:
        want = [store.stream(i) for i in range(len(store))]
    index_start = len(data) - fmt.TRAILER_SIZE - fmt.RECORD_HEADER_SIZE - len(want) * fmt.ENTRY_SIZE
    for cut in range(index_start, len(data)):
        path.write_bytes(data[:cut])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StoreRecoveryWarning)
            with KeyframeStore(path) as store:
                assert [store.stream(i) for i in range(len(store))] == want, cut
                assert store.metadata == {"run": "cavity", "dt": 0.25}
                assert not store.recovery.lost_frames


def test_metadata_set_before_a_crash_is_recovered(tmp_path, tiny_codec, image_factory):
    path = tmp_path / "m.ldks"
    store = KeyframeStore(path, "w", codec=tiny_codec)
    store.metadata["sim"] = {"nx": 64}
    store.append(image_factory(8, 8))
    crashed = path.read_bytes()
    store.close()
    path.write_bytes(crashed)
    with KeyframeStore(path) as reopened:
        assert reopened.metadata == {"sim": {"nx": 64}} and len(reopened) == 1


def test_interrupted_creation(tmp_path, tiny_codec, image_factory):
    path = tmp_path / "new.ldks"
    path.write_bytes(fmt.file_header()[:11])
    with pytest.warns(StoreRecoveryWarning):
        store = KeyframeStore(path, "r")
    assert len(store) == 0
    store.close()
    with pytest.warns(StoreRecoveryWarning):
        store = KeyframeStore(path, "a", codec=tiny_codec)
    with store:
        store.append(image_factory(8, 8))
    with KeyframeStore(path) as store:
        assert len(store) == 1


def test_full_disk_during_append_leaves_the_store_usable(tmp_path, tiny_codec, image_factory, monkeypatch):
    path = tmp_path / "d.ldks"
    with KeyframeStore(path, "w", codec=tiny_codec) as store:
        store.append(image_factory(8, 8, seed=0))
        real_pwrite = os.pwrite

        def full(fd, data, offset):
            real_pwrite(fd, bytes(data)[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "pwrite", full)
        with pytest.raises(StoreError, match="No space left.*intact"):
            store.append(image_factory(9, 9, seed=1))
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        assert len(store) == 1
        assert store.append(image_factory(10, 10, seed=2)) == 1
    with KeyframeStore(path, codec=tiny_codec) as store:
        assert store.recovery is None and len(store) == 2 and store[1].shape == (10, 10, 3)


# Corruption -----------------------------------------------------------------------------------
@pytest.mark.parametrize("with_index", [True, False])
def test_flipped_byte_anywhere_in_a_middle_record(tmp_path, tiny_codec, image_factory, with_index):
    path = tmp_path / "x.ldks"
    frames = [image_factory(10 + k, 12, seed=k) for k in range(5)]
    if with_index:
        _build(path, tiny_codec, frames)
    else:  # the writer never closed: no index, opened by scanning
        store = KeyframeStore(path, "w", codec=tiny_codec)
        for f in frames:
            store.append(f)
        data = path.read_bytes()
        store.close()
        path.write_bytes(data)
    good = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreRecoveryWarning)
        with KeyframeStore(path) as store:
            want = [store.stream(i) for i in range(5)]
            offset, length = store._entry(2)
    bad_file = tmp_path / "bad.ldks"
    for pos in range(offset, offset + length):
        corrupt = bytearray(good)
        corrupt[pos] ^= 0x20
        bad_file.write_bytes(bytes(corrupt))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store = KeyframeStore(bad_file)
        with store:
            assert len(store) == 5, pos
            for j in (0, 1, 3, 4):
                assert store.stream(j) == want[j]
            with pytest.raises(CorruptFrameError, match="frame 2 ") as exc:
                store.stream(2)
            assert exc.value.index == 2
            assert store.verify() == [2]
            if not with_index and pos < offset + fmt.RECORD_HEADER_SIZE:
                assert store.recovery.lost_frames == [2]  # a bad header is reported at open
                assert any(issubclass(w.category, StoreRecoveryWarning) and "frame(s) 2 unreadable" in str(w.message)
                           for w in caught)
    # reading the corrupt frame through the codec raises too, naming it; the others decode
    bad_file.write_bytes(good[: offset + length - 3] + bytes([good[offset + length - 3] ^ 1]) + good[offset + length - 2:])
    with KeyframeStore(bad_file, codec=tiny_codec) as store:
        with pytest.raises(CorruptFrameError, match="frame 2 "):
            store[2]
        assert store[3].shape == (13, 12, 3)
        assert store.info().corrupt_frames == []  # info reads headers and JSON only
        assert store.verify() == [2]


def test_corrupt_index_falls_back_to_scanning(built):
    path, _ = built
    data = bytearray(path.read_bytes())
    with KeyframeStore(path) as store:
        want = [store.stream(i) for i in range(len(store))]
    data[len(data) - fmt.TRAILER_SIZE - 5] ^= 0xFF  # inside the last index entry
    path.write_bytes(bytes(data))
    with KeyframeStore(path) as store:  # the lazy reader notices the bad entry when it needs it
        assert [store.stream(i) for i in range(5)] == want[:5]
        with pytest.raises(CorruptFrameError, match="index entry"):
            store.stream(5)
    with KeyframeStore(path, "a") as store:  # a writer loads the whole index, sees the damage, scans
        assert store.recovery is not None and "index" in store.recovery.reason
        assert [store.stream(i) for i in range(6)] == want
    with KeyframeStore(path) as store:  # and rewrote a good index at close
        assert store.recovery is None and [store.stream(i) for i in range(6)] == want


def test_open_and_read_one_frame_reads_a_constant_number_of_bytes(tmp_path, tiny_codec, image_factory):
    blobs = [tiny_codec.encode(image_factory(16, 16, seed=k)) for k in range(4)]
    read = {}
    for n in (10, 160):
        path = tmp_path / f"n{n}.ldks"
        with KeyframeStore(path, "w", codec=tiny_codec) as store:
            for k in range(n):
                store.append_stream(blobs[k % 4], meta={"k": f"{k:06d}"})
        with KeyframeStore(path) as store:
            assert store.stream(n // 2) == blobs[(n // 2) % 4] and store.meta(n // 2) == {"k": f"{n // 2:06d}"}
            read[n] = store.bytes_read
    assert read[10] == read[160] < 1024


def test_reader_keeps_its_snapshot_while_a_writer_replaces_the_index(tmp_path, tiny_codec, image_factory):
    path = tmp_path / "r.ldks"
    frames = [image_factory(8 + k, 10, seed=k) for k in range(6)]
    _build(path, tiny_codec, frames)
    reader = KeyframeStore(path, "r")  # through the trailer; index entries are read lazily
    want = {0: reader.stream(0)}
    with KeyframeStore(path, "a", codec=tiny_codec) as writer:
        for k in range(4):  # these records overwrite where the old index was
            writer.append(image_factory(30, 30, seed=10 + k))
        with warnings.catch_warnings():
            warnings.simplefilter("error", StoreRecoveryWarning)
            for i in (5, 3, 1):
                assert reader.stream(i) == writer.stream(i)
            assert len(reader) == 6 and reader.recovery is None
            assert reader._entries is not None  # it did notice the replaced index and re-read (by scanning)
    assert reader.stream(4) == KeyframeStore(path).stream(4) and reader.stream(0) == want[0]
    assert reader.refresh() == 10
    reader.close()
