"""KeyframeStore: a sequence of compressed frames in one append-only file.

    >>> import numpy as np, ldcodec
    >>> with ldcodec.KeyframeStore("run.ldks", "w", quality=0.5) as store:
    ...     store.metadata["simulation"] = "cavity flow"
    ...     store.append(np.zeros((64, 64), np.float32), meta={"t": 0.0})
    >>> with ldcodec.KeyframeStore("run.ldks") as store:
    ...     field = store[0]; print(len(store), store.meta(0))

The byte layout is in :mod:`ldcodec.store.format` and docs/keyframes.md. Every
append is written at the end of the file and fsynced before ``append`` returns;
the frame index (and a trailer pointing at it) is written by ``close``. Opening
reads the trailer and the index lazily, so ``store[i]`` costs two small reads
plus the frame's record whatever the number of frames. A store whose trailer is
missing (a writer crashed or is still writing) is opened by scanning the
32-byte record headers; a torn final record is dropped and reported in
:attr:`KeyframeStore.recovery`.
"""

from __future__ import annotations

import errno
import json
import operator
import os
import stat
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ldcodec.store import format as fmt
from ldcodec.store.errors import (
    CorruptFrameError,
    FrameIndexError,
    InvalidFrameError,
    StoreError,
    StoreLockedError,
    StoreRecoveryWarning,
)
from ldcodec.store.frames import prepare_frame, restore_frame

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

_MODES = ("r", "a", "w")
_RESYNC_CHUNK = 1 << 20
#: Largest single ``pread``: a read never allocates more than this beyond the bytes the file holds,
#: whatever length a (corrupt) index entry or record header declares.
_READ_CHUNK = 16 << 20
#: Offsets a file can have (``os.pread`` takes a signed 64-bit offset).
_MAX_OFFSET = (1 << 63) - 1


@dataclass
class RecoveryReport:
    """What opening a store without a valid index found (``store.recovery``)."""

    reason: str  #: why the index was not used (e.g. "no index: the last writer did not close the store")
    frames: int = 0  #: frames recovered (lost ones included, they keep their index)
    dropped_bytes: int = 0  #: bytes at the end that do not form a complete record (an interrupted append)
    dropped_offset: int | None = None  #: where those bytes start
    lost_frames: list[int] = field(default_factory=list)  #: indexes whose record is unreadable
    skipped_bytes: int = 0  #: corrupt bytes skipped between complete records

    @property
    def clean(self) -> bool:
        return not (self.dropped_bytes or self.lost_frames or self.skipped_bytes)

    def __str__(self) -> str:
        parts = [f"{self.reason}; recovered {self.frames} frame(s) by scanning"]
        if self.dropped_bytes:
            parts.append(f"dropped an incomplete record of {self.dropped_bytes} byte(s) at offset {self.dropped_offset}")
        if self.skipped_bytes:
            parts.append(f"skipped {self.skipped_bytes} corrupt byte(s)")
        if self.lost_frames:
            parts.append(f"frame(s) {_ranges(self.lost_frames)} unreadable")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FrameInfo:
    """One frame's description, read from its record without decoding (``store.frame_info(i)``)."""

    index: int
    width: int
    height: int
    kind: str  #: "pil", "uint8" or "float"
    bytes: int  #: size of the .ldc stream
    bpp: float  #: 8 · bytes / (width · height)
    quality: float
    meta: dict
    mode: str | None = None  #: PIL mode ("pil" frames)
    dtype: str | None = None  #: array dtype ("uint8" and "float" frames)
    shape: list[int] | None = None  #: array shape
    range: list[float] | None = None  #: [min, max] ("float" frames)

    def to_dict(self) -> dict:
        # Shallow on purpose: asdict() deep-copies ``meta`` recursively, which raised RecursionError for
        # meta nested a few hundred levels deep (a fuzzing finding, see docs/robustness.md).
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class StoreInfo:
    path: str
    frames: int
    corrupt_frames: list[int]
    file_bytes: int
    stream_bytes: int  #: sum of the .ldc streams of the readable frames
    pixels: int
    mean_bpp: float  #: 8 · stream_bytes / pixels (pixel-weighted mean)

    def to_dict(self) -> dict:
        return asdict(self)


def _ranges(indexes: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(indexes):
        if start is None:
            start = v
        if i + 1 == len(indexes) or indexes[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def _json_default(obj):
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy scalars
        return obj.item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _to_json(obj, what: str) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=_json_default).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise StoreError(f"{what} must be JSON-serialisable (no NaN/inf, not nested too deeply): {exc}") from None


def _parse_json_object(raw: bytes) -> dict | None:
    """A record's JSON as a dict, or None when it is not valid UTF-8 JSON holding an object.

    RecursionError: JSON nested deeper than Python's recursion limit (a fuzzing finding,
    see docs/robustness.md) is unreadable, not a crash.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


class KeyframeStore:
    """A sequence of frames compressed with ldcodec, stored in one file.

    ``mode``: ``"r"`` read only; ``"a"`` read and append (created if missing);
    ``"w"`` create or truncate, then append. Writers take an exclusive advisory
    lock (``fcntl.flock``) on the file: a second writer gets :class:`StoreLockedError`.
    ``quality`` is the default for :meth:`append`; ``codec`` is used to encode
    and decode (``ldcodec.load()`` on first use when None).
    """

    def __init__(self, path, mode: str = "r", quality: float = 0.5, codec=None):
        if mode not in _MODES:
            raise StoreError(f"mode must be 'r', 'a' or 'w', got {mode!r}")
        if not (0.0 <= float(quality) <= 1.0):
            raise StoreError(f"quality must be in [0, 1], got {quality}")
        self.path = Path(os.fspath(path))
        self.mode = mode
        self.quality = float(quality)
        self._codec = codec
        self._codec_given = codec is not None
        self._stream_codecs = None  # decoders by model, when no codec was given
        self._fd: int | None = None
        self.bytes_read = 0  #: bytes this object has read from the file (for benchmarks)
        self.recovery: RecoveryReport | None = None  #: set when the store was opened by scanning
        self._metadata: dict = {}
        self._saved_meta_json = _to_json({}, "metadata")
        self._meta_offset = 0
        self._entries: list[tuple[int, int]] | None = None  # None: read lazily from the index record
        self._lazy: dict[int, tuple[int, int] | None] = {}
        self._index_data_offset = 0
        self._frames = 0
        self._end = fmt.FILE_HEADER_SIZE  # end of the last complete data record
        self._has_trailer = False  # the file ends with a valid index + trailer describing _end
        self._open()

    # Opening ------------------------------------------------------------------------------
    def _open(self) -> None:
        path = self.path
        try:
            if self.mode == "r":
                self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            else:
                existed = path.exists()
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
                self._lock()
                if not existed:
                    _fsync_dir(path)
        except FileNotFoundError:
            raise StoreError(f"{path}: no such store") from None
        except IsADirectoryError:
            raise StoreError(f"{path}: is a directory") from None
        except OSError as exc:
            self._release()
            raise StoreError(f"{path}: cannot open ({exc.strerror or exc})") from None
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{path}: is not a regular file")
            size = st.st_size
            if self.mode == "w" or (self.mode == "a" and size == 0):
                self._initialise()
            else:
                self._load(size)
        except BaseException:
            self._release()
            raise

    def _lock(self) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self._release()
                raise StoreLockedError(f"{self.path}: store is open for writing by another process or object") from None
            raise

    def _initialise(self) -> None:
        os.ftruncate(self._fd, 0)
        self._pwrite_all(fmt.file_header(), 0)
        os.fsync(self._fd)
        self._entries = []
        self._frames = 0
        self._end = fmt.FILE_HEADER_SIZE
        self._has_trailer = False

    def _load(self, size: int) -> None:
        head = self._pread(0, fmt.FILE_HEADER_SIZE)
        try:
            fmt.check_file_header(head)
        except fmt.HeaderProblem as exc:
            fresh = fmt.file_header()
            if size < fmt.FILE_HEADER_SIZE and head == fresh[: len(head)]:
                # Creation was interrupted: an empty store.
                self.recovery = RecoveryReport("the store's creation was interrupted", 0, size, 0)
                if self.mode == "a":
                    self._initialise()
                else:
                    self._entries, self._frames, self._end = [], 0, size
                self._warn_recovery()
                return
            raise StoreError(f"{self.path}: {exc}") from None
        reason = self._load_from_trailer(size)
        if reason is not None:
            self._scan(os.fstat(self._fd).st_size, reason)  # (re-stat: a writer may be appending)

    def _load_from_trailer(self, size: int) -> str | None:
        """Open through the trailer and index. Returns None on success, else why not."""
        if size < fmt.FILE_HEADER_SIZE + fmt.RECORD_HEADER_SIZE + fmt.TRAILER_SIZE:
            return "no index: the last writer did not close the store"
        tail = self._pread(size - fmt.TRAILER_SIZE, fmt.TRAILER_SIZE)
        trailer = fmt.parse_trailer(tail)
        if trailer is None:
            if tail[:4] == fmt.TRAILER_MAGIC:
                return "index trailer is corrupt"
            return "no index: the last writer did not close the store"
        n = trailer.frames
        index_size = fmt.RECORD_HEADER_SIZE + n * fmt.ENTRY_SIZE
        if trailer.index_offset < fmt.FILE_HEADER_SIZE or trailer.index_offset + index_size + fmt.TRAILER_SIZE != size:
            return "index trailer does not match the file size"
        head = fmt.parse_record_header(self._pread(trailer.index_offset, fmt.RECORD_HEADER_SIZE))
        if (head is None or head.type != fmt.RecordType.INDEX or head.seq != n or head.json_len != 0
                or head.data_len != n * fmt.ENTRY_SIZE):
            return "index record is corrupt"
        metadata, meta_json = {}, self._saved_meta_json
        if trailer.meta_offset:
            got = self._read_metadata_record(trailer.meta_offset)
            if got is None:
                return "store metadata record is corrupt"
            metadata, meta_json = got
        index_data_offset = trailer.index_offset + fmt.RECORD_HEADER_SIZE
        entries = None
        if self.mode == "a":  # a writer rewrites the index at close: load it all now
            raw = self._pread(index_data_offset, n * fmt.ENTRY_SIZE)
            if zlib.crc32(raw) != head.data_crc:
                return "index is corrupt (CRC mismatch)"
            entries = []
            for i in range(n):
                e = fmt.parse_entry(i, raw, i * fmt.ENTRY_SIZE)
                if e is None:
                    return "index is corrupt"
                entries.append(e)
        self._entries, self._frames = entries, n
        self._index_data_offset = index_data_offset
        self._metadata, self._saved_meta_json, self._meta_offset = metadata, meta_json, trailer.meta_offset
        self._end = trailer.index_offset
        self._has_trailer = True
        return None

    def _read_metadata_record(self, offset: int):
        head = fmt.parse_record_header(self._pread(offset, fmt.RECORD_HEADER_SIZE))
        if head is None or head.type != fmt.RecordType.METADATA:
            return None
        raw = self._pread(offset + fmt.RECORD_HEADER_SIZE, head.json_len)
        if len(raw) != head.json_len or zlib.crc32(raw) != head.json_crc:
            return None
        meta = _parse_json_object(raw)
        return None if meta is None else (meta, raw)

    def _scan(self, size: int, reason: str) -> None:
        """Rebuild the index from the record headers (the trailer is missing or invalid)."""
        report = RecoveryReport(reason)
        entries: list[tuple[int, int]] = []
        pos = fmt.FILE_HEADER_SIZE
        bad_region: tuple[int, int] | None = None
        while pos < size:
            raw_head = self._pread(pos, fmt.RECORD_HEADER_SIZE)
            head = fmt.parse_record_header(raw_head)
            if head is None and size - pos == fmt.TRAILER_SIZE and fmt.parse_trailer(raw_head) is not None:
                break  # a stale (valid but unusable) trailer: the end of the records
            if head is not None and head.type == fmt.RecordType.FRAME and not _plausible_seq(head.seq, pos):
                head = None  # claims more frames before it than the bytes before it can hold: corrupt
            if head is None:
                nxt = self._resync(pos + 1, size)
                if nxt is None:
                    report.dropped_bytes, report.dropped_offset = size - pos, pos
                    break
                report.skipped_bytes += nxt - pos
                bad_region = (pos, nxt - pos)
                pos = nxt
                continue
            end = pos + head.size
            if end > size:  # torn: the append was interrupted
                report.dropped_bytes, report.dropped_offset = size - pos, pos
                break
            if head.type == fmt.RecordType.METADATA:
                got = self._read_metadata_record(pos)
                if got is not None:
                    self._metadata, self._saved_meta_json = got
                    self._meta_offset = pos
                elif end == size:
                    report.dropped_bytes, report.dropped_offset = size - pos, pos
                    break
                else:
                    report.skipped_bytes += head.size
            elif head.type == fmt.RecordType.FRAME:
                if end == size and not self._record_crc_ok(pos, head):
                    # The last record: a torn write cannot be told from a corrupt one. Drop it.
                    report.dropped_bytes, report.dropped_offset = size - pos, pos
                    break
                if head.seq < len(entries):
                    report.skipped_bytes += head.size  # stale duplicate
                else:
                    while len(entries) < head.seq:  # frames whose records were in a corrupt region
                        report.lost_frames.append(len(entries))
                        entries.append(bad_region or (pos, 0))
                    entries.append((pos, head.size))
            # INDEX records (left by an interrupted close) and unknown types are skipped.
            bad_region = None
            pos = end
        report.frames = len(entries)
        self._entries, self._frames = entries, len(entries)
        self._end = report.dropped_offset if report.dropped_bytes else min(pos, size)
        self._has_trailer = False
        self.recovery = report
        self._warn_recovery()

    def _warn_recovery(self) -> None:
        if self.recovery is not None and not self.recovery.clean:
            warnings.warn(f"{self.path}: {self.recovery}", StoreRecoveryWarning, stacklevel=2)

    def _record_crc_ok(self, pos: int, head: fmt.RecordHeader) -> bool:
        raw = self._pread(pos + fmt.RECORD_HEADER_SIZE, head.json_len + head.data_len)
        return (len(raw) == head.json_len + head.data_len
                and zlib.crc32(raw[: head.json_len]) == head.json_crc
                and zlib.crc32(raw[head.json_len:]) == head.data_crc)

    def _resync(self, start: int, size: int) -> int | None:
        """Offset of the next valid record header at or after ``start``, or None."""
        pos = start
        while pos < size:
            chunk = self._pread(pos, min(_RESYNC_CHUNK, size - pos))
            at = chunk.find(fmt.RECORD_MAGIC)
            while at >= 0:
                if fmt.parse_record_header(self._pread(pos + at, fmt.RECORD_HEADER_SIZE)) is not None:
                    return pos + at
                at = chunk.find(fmt.RECORD_MAGIC, at + 1)
            if pos + len(chunk) >= size:
                return None
            pos += len(chunk) - (len(fmt.RECORD_MAGIC) - 1)
        return None

    # Low-level I/O ------------------------------------------------------------------------
    def _pread(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer at the end of the file). Offsets and lengths come
        from the file itself, so neither is trusted: an offset past what a file can have reads
        nothing, and reads go in chunks so a huge declared length allocates only what is there."""
        chunks, got = [], 0
        if offset < 0 or offset + n > _MAX_OFFSET:
            return b""
        while got < n:
            try:
                b = os.pread(self._fd, min(n - got, _READ_CHUNK), offset + got)
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
            if not b:
                break
            chunks.append(b)
            got += len(b)
        self.bytes_read += got
        return b"".join(chunks)

    def _pwrite_all(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def _release(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)  # also releases the flock
            finally:
                self._fd = None

    def _check_open(self) -> None:
        if self._fd is None:
            raise StoreError(f"{self.path}: store is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.mode == "r":
            raise StoreError(f"{self.path}: store is open read-only (mode 'r'); open it with mode 'a' to append")

    # Index --------------------------------------------------------------------------------
    def _entry(self, i: int) -> tuple[int, int]:
        if self._entries is not None:
            return self._entries[i]
        entry = self._lazy.get(i)
        if entry is None:
            entry = self._read_lazy_entry(i)
            if entry is None:
                # A writer that appended since we opened has replaced the index we are reading from;
                # the records themselves never move. Re-read the index once, keeping our snapshot.
                self._reload_index()
                if self._entries is not None:
                    return self._entries[i]
                entry = self._read_lazy_entry(i)
            if entry is None:
                raise CorruptFrameError(f"{self.path}: frame {i}: its index entry is corrupt", i)
            self._lazy[i] = entry
        return entry

    def _read_lazy_entry(self, i: int) -> tuple[int, int] | None:
        raw = self._pread(self._index_data_offset + i * fmt.ENTRY_SIZE, fmt.ENTRY_SIZE)
        return fmt.parse_entry(i, raw) if len(raw) == fmt.ENTRY_SIZE else None

    def _reload_index(self) -> None:
        """Mode "r": re-read index (or scan) without changing what this reader shows."""
        frames, recovery = self._frames, self.recovery
        saved = (self._metadata, self._saved_meta_json, self._meta_offset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StoreRecoveryWarning)
            try:
                self._load(os.fstat(self._fd).st_size)
            except StoreError:
                pass
        if self._frames < frames:  # the file was truncated (mode "w") under us: nothing to keep
            self._entries = None
        self._frames, self.recovery = frames, recovery
        self._metadata, self._saved_meta_json, self._meta_offset = saved

    def _norm_index(self, i) -> int:
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"frame indexes must be integers or slices, not {type(i).__name__}") from None
        n = self._frames
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise FrameIndexError(f"{self.path}: frame index out of range (store has {n} frame(s))")
        return i

    def _read_record(self, i: int, with_data: bool) -> tuple[fmt.RecordHeader, dict, bytes]:
        offset, length = self._entry(i)
        if length < fmt.RECORD_HEADER_SIZE:
            raise CorruptFrameError(f"{self.path}: frame {i} is corrupt (its record was not found)", i)
        first = self._pread(offset, length if with_data else min(length, fmt.RECORD_HEADER_SIZE + 4096))
        head = fmt.parse_record_header(first)
        if head is None or head.type != fmt.RecordType.FRAME or head.seq != i or head.size != length:
            raise CorruptFrameError(f"{self.path}: frame {i} is corrupt (bad record header at offset {offset})", i)
        need = fmt.RECORD_HEADER_SIZE + (head.json_len + head.data_len if with_data else head.json_len)
        if len(first) < need:
            first += self._pread(offset + len(first), need - len(first))
        if len(first) < need:
            raise CorruptFrameError(f"{self.path}: frame {i} is truncated", i)
        raw_json = first[fmt.RECORD_HEADER_SIZE: fmt.RECORD_HEADER_SIZE + head.json_len]
        if zlib.crc32(raw_json) != head.json_crc:
            raise CorruptFrameError(f"{self.path}: frame {i} is corrupt (CRC mismatch in its metadata)", i)
        data = b""
        if with_data:
            data = first[fmt.RECORD_HEADER_SIZE + head.json_len: need]
            if zlib.crc32(data) != head.data_crc:
                raise CorruptFrameError(f"{self.path}: frame {i} is corrupt (CRC mismatch in its stream)", i)
        desc = _parse_json_object(raw_json)
        if desc is None:
            raise CorruptFrameError(f"{self.path}: frame {i} is corrupt (unreadable metadata)", i)
        return head, desc, data

    # Reading ------------------------------------------------------------------------------
    @property
    def codec(self):
        """The codec used to encode and decode (loaded on first use)."""
        if self._codec is None:
            import ldcodec

            self._codec = ldcodec.load()
        return self._codec

    @codec.setter
    def codec(self, codec) -> None:
        self._codec = codec
        self._codec_given = codec is not None

    def __len__(self) -> int:
        return self._frames

    def __getitem__(self, key):
        self._check_open()
        if isinstance(key, slice):
            return [self._decode(i) for i in range(*key.indices(self._frames))]
        return self._decode(self._norm_index(key))

    def __iter__(self):
        for i in range(self._frames):
            yield self[i]

    def _decoder_for(self, blob: bytes):
        """The given codec; without one, the installed model each frame's stream names."""
        if self._codec_given:
            return self._codec
        if self._stream_codecs is None:
            import ldcodec
            from ldcodec.codec.stream_models import StreamCodecs

            loaded = {self._codec.model_id: self._codec} if self._codec is not None else {}
            self._stream_codecs = StreamCodecs(ldcodec.load, loaded=loaded)
        return self._stream_codecs.for_stream(blob)

    def _decode(self, i: int):
        _, desc, blob = self._read_record(i, with_data=True)
        try:
            return restore_frame(self._decoder_for(blob).decode(blob), desc)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: e.g. shape [1e999]
            raise CorruptFrameError(f"{self.path}: frame {i}: inconsistent record ({exc})", i) from None

    def stream(self, i: int) -> bytes:
        """The frame's ``.ldc`` stream, CRC-checked, not decoded."""
        self._check_open()
        return self._read_record(self._norm_index(i), with_data=True)[2]

    def meta(self, i: int) -> dict:
        """The ``meta`` dict given to :meth:`append` for frame ``i`` (``{}`` when none)."""
        self._check_open()
        return self._read_record(self._norm_index(i), with_data=False)[1].get("meta", {})

    def frame_info(self, i: int) -> FrameInfo:
        """Size, kind, rate and meta of frame ``i``; reads the record's header and JSON only."""
        self._check_open()
        i = self._norm_index(i)
        head, d, _ = self._read_record(i, with_data=False)
        try:
            w, h = int(d["width"]), int(d["height"])
            return FrameInfo(index=i, width=w, height=h, kind=d["kind"], bytes=head.data_len,
                             bpp=8.0 * head.data_len / (w * h), quality=float(d.get("quality", float("nan"))),
                             meta=d.get("meta", {}), mode=d.get("mode"), dtype=d.get("dtype"),
                             shape=d.get("shape"), range=d.get("range"))
        except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:  # e.g. width 2**1100
            raise CorruptFrameError(f"{self.path}: frame {i}: inconsistent record ({exc})", i) from None

    def info(self) -> StoreInfo:
        """Totals over all frames (reads every record header, not the streams)."""
        self._check_open()
        corrupt, stream_bytes, pixels = [], 0, 0
        for i in range(self._frames):
            try:
                fi = self.frame_info(i)
            except CorruptFrameError:
                corrupt.append(i)
                continue
            stream_bytes += fi.bytes
            pixels += fi.width * fi.height
        return StoreInfo(path=str(self.path), frames=self._frames, corrupt_frames=corrupt,
                         file_bytes=os.fstat(self._fd).st_size, stream_bytes=stream_bytes, pixels=pixels,
                         mean_bpp=8.0 * stream_bytes / pixels if pixels else 0.0)

    def verify(self) -> list[int]:
        """Check every frame's CRCs (reads the whole file); returns the indexes of corrupt frames."""
        self._check_open()
        bad = []
        for i in range(self._frames):
            try:
                self._read_record(i, with_data=True)
            except CorruptFrameError:
                bad.append(i)
        return bad

    # Store metadata -----------------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        """Store-level metadata (a JSON-able dict). In modes "a"/"w" the live dict: changes are
        saved with the next append and at close. In mode "r" a copy."""
        if self.mode == "r":
            return json.loads(self._saved_meta_json.decode("utf-8"))
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict) -> None:
        self._check_writable()
        if not isinstance(value, dict):
            raise StoreError("store metadata must be a dict")
        _to_json(value, "store metadata")
        self._metadata = value

    def _pending_metadata(self) -> bytes | None:
        if not isinstance(self._metadata, dict):
            raise StoreError("store metadata must be a dict")
        raw = _to_json(self._metadata, "store metadata")
        return None if raw == self._saved_meta_json else raw

    # Writing ------------------------------------------------------------------------------
    def append(self, frame, meta: dict | None = None, quality: float | None = None) -> int:
        """Encode ``frame`` and append it; returns its index. Durable (fsynced) on return.

        ``frame``: PIL image, uint8 array (H×W, H×W×1, H×W×3, H×W×4) or float array
        (H×W, H×W×1, H×W×3; finite values). ``meta``: a JSON-able dict kept with the frame.
        """
        self._check_writable()
        prepared = prepare_frame(frame)
        q = self.quality if quality is None else float(quality)
        blob = self.codec.encode(prepared.codec_input, quality=q)
        desc = {**prepared.description, "width": prepared.width, "height": prepared.height,
                "quality": round(q, 6)}
        return self._append_record(blob, desc, meta)

    def append_stream(self, blob: bytes, meta: dict | None = None) -> int:
        """Append an already encoded ``.ldc`` stream (checked, not decoded); it reads back as a PIL image."""
        self._check_writable()
        from ldcodec.codec.image_codec import stream_info

        info = stream_info(bytes(blob))
        mode = {"RGB": "RGB", "GRAY": "L", "RGBA": "RGBA", "GRAY_ALPHA": "LA"}[info.mode]
        desc = {"kind": "pil", "mode": mode, "width": info.width, "height": info.height, "quality": info.quality}
        return self._append_record(bytes(blob), desc, meta)

    def _append_record(self, blob: bytes, desc: dict, meta: dict | None) -> int:
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise InvalidFrameError(f"frame meta must be a dict, got {type(meta).__name__}")
        index = self._frames
        raw_json = _to_json({**desc, "meta": meta}, "frame meta")
        pending = self._pending_metadata()
        parts, meta_at = [], None
        if pending is not None:
            meta_at = self._end
            parts.append(fmt.pack_record(fmt.RecordType.METADATA, index, pending))
        frame_at = self._end + sum(len(p) for p in parts)
        try:
            record = fmt.pack_record(fmt.RecordType.FRAME, index, raw_json, blob)
        except ValueError:
            raise InvalidFrameError(f"frame {index} is too large for a store record") from None
        parts.append(record)
        self._write_data(b"".join(parts), f"frame {index}")
        self._entries.append((frame_at, len(record)))
        self._frames += 1
        if pending is not None:
            self._saved_meta_json, self._meta_offset = pending, meta_at
        return index

    def _write_data(self, data: bytes, what: str) -> None:
        """Append ``data`` at the end of the data records, fsynced; on failure leave the file as it was."""
        start = self._end
        try:
            if self._has_trailer or os.fstat(self._fd).st_size != start:
                os.ftruncate(self._fd, start)  # drop the old index/trailer (or a torn tail) first
                os.fsync(self._fd)
                self._has_trailer = False
            self._pwrite_all(data, start)
            os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            raise StoreError(f"{self.path}: cannot write {what} ({exc.strerror or exc}); "
                             "the frames before it are intact") from None
        self._end = start + len(data)

    def close(self) -> None:
        """Save pending store metadata, write the index and trailer, release the lock. Idempotent."""
        if self._fd is None:
            return
        error = None
        try:
            if self.mode != "r":
                try:
                    pending = self._pending_metadata()
                except StoreError as exc:
                    pending, error = None, exc
                if pending is not None:
                    at = self._end
                    self._write_data(fmt.pack_record(fmt.RecordType.METADATA, self._frames, pending),
                                     "store metadata")
                    self._saved_meta_json, self._meta_offset = pending, at
                if not self._has_trailer:
                    self._write_index()
        finally:
            self._release()
        if error is not None:
            raise error

    def _write_index(self) -> None:
        entries = b"".join(fmt.pack_entry(i, off, length) for i, (off, length) in enumerate(self._entries))
        block = (fmt.pack_record(fmt.RecordType.INDEX, self._frames, b"", entries)
                 + fmt.pack_trailer(self._end, self._meta_offset, self._frames))
        try:
            if os.fstat(self._fd).st_size != self._end:
                os.ftruncate(self._fd, self._end)
            self._pwrite_all(block, self._end)
            os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._end)
            except OSError:
                pass
            raise StoreError(f"{self.path}: cannot write the index ({exc.strerror or exc}); all frames are "
                             "intact and the next open will rebuild it") from None
        self._has_trailer = True

    def refresh(self) -> int:
        """Mode "r": re-read the file to see frames appended since it was opened. Returns len(self)."""
        self._check_open()
        if self.mode != "r":
            return self._frames
        self.recovery, self._entries, self._lazy = None, None, {}
        self._load(os.fstat(self._fd).st_size)
        return self._frames

    def __enter__(self) -> KeyframeStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"mode {self.mode!r}"
        return f"KeyframeStore({str(self.path)!r}, {state}, {self._frames} frame(s))"


def _plausible_seq(seq: int, offset: int) -> bool:
    """Frame ``seq`` starting at ``offset``: the ``seq`` frames before it take at least one record
    header each. Without this check a record header with a valid CRC and a huge ``seq`` made
    the scan allocate an entry for every "lost" frame (a fuzzing finding, see docs/robustness.md)."""
    return seq <= (offset - fmt.FILE_HEADER_SIZE) // fmt.RECORD_HEADER_SIZE


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
