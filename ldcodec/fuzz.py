"""Mutation fuzzer for the decoders: ``python -m ldcodec.fuzz [--target ldc|store|all] [--count N]``.

Two targets, both driven by a tiny random-weights model so that each input costs
milliseconds:

* ``ldc``: bit flips, truncations, splices, random headers (with valid CRCs),
  huge declared sizes, payload bytes with recomputed CRCs and hostile alpha PNGs,
  fed to ``ImageCodec.decode``. Every input must end, within a time bound, in
  either an image of the declared size or an ``LdcodecError``.
* ``store``: keyframe stores (``.ldks``) built with the same codec, mutated
  (bit flips, truncations, splices, record / trailer / index / file-header fields
  rewritten with their CRCs fixed, huge declared counts and offsets, hostile
  JSON, mutated ``.ldc`` payloads in otherwise valid stores, reordered records),
  then opened (mode ``"r"``, sometimes ``"a"`` first) and read completely:
  metadata, recovery report, ``info()``, ``verify()``, and for every frame
  ``frame_info``, ``meta``, ``stream`` and the decoded frame. Each call must
  return or raise an ``LdcodecError``.

Anything else (another exception, an input over the time bound, a
``MemoryError`` under the address-space limit the fuzzer sets) is a finding.
The report gives the peak resident memory (``ru_maxrss``) next to the peak of
one legitimate decode at the pixel limit, as evidence that no input allocates
more than the header limit allows. Results: docs/robustness.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import resource
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldcodec.bitstream.container import parse_header
from ldcodec.errors import LdcodecError

#: Pixel limit of the fuzzing codec (the reference decode runs at this size).
FUZZ_MAX_PIXELS = 1_000_000
#: Address space the fuzzer allows itself on top of what setup used (MiB).
DEFAULT_MEMORY_BUDGET_MB = 2048


@dataclass
class FuzzReport:
    target: str = "ldc"
    inputs: int = 0
    decoded: int = 0  #: ldc: inputs that decoded to an image; store: inputs whose store opened
    rejected: int = 0  #: ldc: inputs refused with an LdcodecError; store: stores whose opening was refused
    frames_decoded: int = 0  #: store: frames that decoded
    reads_rejected: int = 0  #: store: per-frame reads (info, meta, stream, decode) refused with an LdcodecError
    slowest_s: float = 0.0  #: most CPU seconds one input took (the time bound applies to CPU time)
    slowest_wall_s: float = 0.0  #: most wall-clock seconds one input took (includes waiting for a busy CPU)
    elapsed_s: float = 0.0
    rss_setup_mib: float = 0.0  #: peak RSS after building the codec and seeds
    rss_peak_mib: float = 0.0  #: peak RSS after fuzzing
    findings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.target == "store":
            what = (f"{self.decoded} opened, {self.rejected} refused at open, {self.frames_decoded} frames decoded, "
                    f"{self.reads_rejected} frame reads refused with LdcodecError")
        else:
            what = f"{self.decoded} decoded, {self.rejected} rejected with LdcodecError"
        return (f"[{self.target}] fuzzed {self.inputs} inputs in {self.elapsed_s:.0f} s: {what}, slowest "
                f"{self.slowest_s:.3f} s CPU ({self.slowest_wall_s:.3f} s wall), peak RSS {self.rss_peak_mib:.0f} MiB "
                f"(after setup {self.rss_setup_mib:.0f} MiB), {len(self.findings)} findings")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _vm_size_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def memory_limit(budget_mb: int | None):
    """Cap the address space at what is mapped now plus ``budget_mb`` (restored on exit).

    An input that tries to allocate more then fails with ``MemoryError``, which the
    fuzzer reports, instead of swapping the machine. No-op where unsupported.
    """
    now = _vm_size_bytes()
    if not budget_mb or now is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = now + budget_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# .ldc streams -----------------------------------------------------------------------------

def _fix_header_crc(blob: bytearray) -> bytearray:
    if len(blob) < 7:
        return blob
    head_len = 7 + blob[6] + 8 + 4 + 4 + 1 + 2 + 1 + 1
    if len(blob) < head_len + 4:
        return blob
    blob[head_len : head_len + 4] = struct.pack("<I", zlib.crc32(bytes(blob[:head_len])))
    return blob


def _mutate_alpha_png(blob: bytes, rng: np.random.Generator) -> bytes:
    """A hostile alpha plane (PNG chunk CRCs and the section CRC recomputed)."""
    from PIL import Image

    from ldcodec.bitstream import container

    try:
        stream = container.parse(blob, max_pixels=2**40)
    except LdcodecError:
        return blob
    if container.SectionTag.ALPHA not in stream.sections:
        return blob
    png = bytearray(stream.sections[container.SectionTag.ALPHA])
    w, h = stream.header.width, stream.header.height
    kind = rng.integers(6)
    if kind == 0 and len(png) >= 33:  # IHDR size: off by one, huge (decompression bomb), zero
        size = rng.choice([0, 1, w + 1, h + 1, 65535, 100_000, 2**31 - 1], size=2)
        png[16:24] = struct.pack(">II", *(int(s) for s in size))
        png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    elif kind == 1 and len(png) >= 33:  # IHDR bit depth / colour type / interlace
        png[24 + rng.integers(5)] = rng.integers(256)
        png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    elif kind == 2:  # random bytes inside a chunk, its CRC fixed
        pos, chunks = 8, []
        while pos + 12 <= len(png):
            length = struct.unpack(">I", png[pos : pos + 4])[0]
            if pos + 12 + length > len(png):
                break
            chunks.append((pos, length))
            pos += 12 + length
        if chunks:
            pos, length = chunks[rng.integers(len(chunks))]
            for _ in range(rng.integers(1, 6)):
                if length:
                    png[pos + 8 + rng.integers(length)] = rng.integers(256)
            crc = zlib.crc32(bytes(png[pos + 4 : pos + 8 + length]))
            png[pos + 8 + length : pos + 12 + length] = struct.pack(">I", crc)
    elif kind == 3:  # a well-formed image of another mode, depth, size or format
        mode = str(rng.choice(["L", "RGB", "1", "I;16", "P", "LA"]))
        size = (int(w + rng.integers(0, 2)), int(h + rng.integers(0, 2)))
        fmt = str(rng.choice(["PNG", "PNG", "BMP", "GIF", "TIFF"]))
        buf = io.BytesIO()
        try:
            Image.new(mode, size).save(buf, format=fmt)
            png = bytearray(buf.getvalue())
        except (OSError, ValueError, KeyError):
            pass
    elif kind == 4:  # truncated PNG
        png = png[: rng.integers(0, max(len(png), 1))]
    else:  # a chunk length made huge
        if len(png) >= 12:
            png[8:12] = struct.pack(">I", int(rng.choice([2**31 - 1, 2**32 - 1, len(png)])))
    stream.sections[container.SectionTag.ALPHA] = bytes(png)
    return container.serialize(stream)


def mutate(seeds: list[bytes], rng: np.random.Generator) -> bytes:
    blob = bytearray(seeds[rng.integers(len(seeds))])
    kind = rng.integers(8)
    if kind == 0:  # bit flips
        for pos in rng.integers(0, len(blob), size=rng.integers(1, 8)):
            blob[pos] ^= 1 << rng.integers(8)
    elif kind == 1:  # truncation
        blob = blob[: rng.integers(0, len(blob))]
    elif kind == 2:  # splice two streams
        other = seeds[rng.integers(len(seeds))]
        cut = rng.integers(0, len(blob))
        blob = blob[:cut] + other[rng.integers(0, len(other)) :]
    elif kind == 3:  # random header fields with a valid CRC
        id_end = 7 + blob[6]
        pos = rng.integers(4, id_end + 8 + 4 + 4 + 1 + 2 + 1 + 1)
        blob[pos] = rng.integers(256)
        blob = _fix_header_crc(blob)
    elif kind == 4:  # huge or odd declared sizes
        id_end = 7 + blob[6] + 8
        blob[id_end : id_end + 8] = struct.pack("<II", *rng.choice([0, 1, 7, 4096, 65535, 2**31, 2**32 - 1], size=2))
        blob = _fix_header_crc(blob)
    elif kind == 5:  # random bytes in the payload, with recomputed section CRCs
        for pos in rng.integers(0, len(blob), size=rng.integers(1, 16)):
            blob[pos] = rng.integers(256)
        blob = _fix_header_crc(blob)
        blob = _fix_section_crcs(blob)
    elif kind == 6:  # hostile alpha plane
        blob = bytearray(_mutate_alpha_png(bytes(blob), rng))
    else:  # random garbage after a valid magic
        blob = bytearray(b"\x89LDC" + rng.integers(0, 256, size=rng.integers(0, 200), dtype=np.uint8).tobytes())
    return bytes(blob)


def _fix_section_crcs(blob: bytearray) -> bytearray:
    """Recompute every section CRC so that mutations reach the entropy decoder."""
    try:
        _, n, pos = parse_header(bytes(blob), max_pixels=2**40)
    except LdcodecError:
        return blob
    for _ in range(n):
        if pos + 5 > len(blob):
            break
        length = struct.unpack("<I", blob[pos + 1 : pos + 5])[0]
        end = pos + 5 + length
        if end + 4 > len(blob):
            break
        blob[end : end + 4] = struct.pack("<I", zlib.crc32(bytes(blob[pos + 5 : end])))
        pos = end + 4
    return blob


def make_codec_and_seeds(workdir: Path):
    import torch

    import ldcodec
    from ldcodec.codec.model import HyperpriorModel, ModelConfig
    from ldcodec.codec.weights import export_weights

    torch.manual_seed(0)
    weights = export_weights(HyperpriorModel(ModelConfig(channels=8, latent_channels=8, gain_levels=2)),
                             workdir / "fuzz.safetensors", model_id="fuzz")
    codec = ldcodec.load(weights, max_pixels=FUZZ_MAX_PIXELS)
    # safetensors writes the header's metadata keys in a per-process order, so the file (and its
    # hash) differs between runs although the tensors do not. Pin the hash the streams carry so
    # that a seed reproduces the same inputs and outcomes in every run.
    codec.weights.sha256 = hashlib.sha256(b"ldcodec fuzzing weights").digest()
    rng = np.random.default_rng(0)
    seeds = []
    for h, w, c in [(8, 8, 3), (17, 33, 3), (40, 24, 1), (23, 19, 4), (1, 1, 3)]:
        img = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
        seeds.append(codec.encode(img[:, :, 0] if c == 1 else img, quality=float(rng.random())))
    return codec, seeds


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _timed(report: FuzzReport, i: int, start: tuple[float, float], time_bound_s: float) -> None:
    """CPU time is what the bound applies to: on a shared machine wall time also counts waiting."""
    cpu, wall = time.process_time() - start[0], time.perf_counter() - start[1]
    report.slowest_s = max(report.slowest_s, cpu)
    report.slowest_wall_s = max(report.slowest_wall_s, wall)
    if cpu > time_bound_s:
        report.findings.append(f"input {i}: took {cpu:.1f} s of CPU ({wall:.1f} s wall)")


def _progress(report: FuzzReport, i: int, progress: bool) -> None:
    if progress and (i + 1) % 1000 == 0:
        print(f"[{report.target}] {i + 1} inputs, {report.decoded} decoded/opened, {report.rejected} rejected, "
              f"{len(report.findings)} findings, peak RSS {peak_rss_mib():.0f} MiB", file=sys.stderr, flush=True)


def fuzz(count: int, seed: int = 0, time_bound_s: float = 10.0, progress: bool = False,
         memory_budget_mb: int | None = DEFAULT_MEMORY_BUDGET_MB) -> FuzzReport:
    """Fuzz ``ImageCodec.decode`` with ``count`` mutated ``.ldc`` streams."""
    import torch

    torch.set_num_threads(1)
    report = FuzzReport(target="ldc")
    begin = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        codec, seeds = make_codec_and_seeds(Path(tmp))
        rng = np.random.default_rng(seed)
        report.rss_setup_mib = peak_rss_mib()
        with memory_limit(memory_budget_mb):
            for i in range(count):
                blob = mutate(seeds, rng)
                start = _clock()
                try:
                    image = codec.decode(blob)
                    report.decoded += 1
                    header, _, _ = parse_header(blob, codec.max_pixels)
                    if image.size != (header.width, header.height):
                        report.findings.append(f"input {i}: decoded size {image.size} != header")
                except LdcodecError:
                    report.rejected += 1
                except Exception:  # noqa: BLE001 - any other exception is a finding
                    report.findings.append(f"input {i}: {traceback.format_exc(limit=3)}")
                _timed(report, i, start, time_bound_s)
                report.inputs += 1
                _progress(report, i, progress)
    report.rss_peak_mib = peak_rss_mib()
    report.elapsed_s = time.time() - begin
    return report


# Keyframe stores --------------------------------------------------------------------------

def make_store_seeds(workdir: Path, codec) -> list[bytes]:
    """Small valid stores: closed, unclosed (no index), empty, appended in two sessions."""
    from PIL import Image

    from ldcodec.store import KeyframeStore

    rng = np.random.default_rng(1)
    path = workdir / "seed.ldks"
    seeds = []
    with KeyframeStore(path, "w", quality=0.5, codec=codec) as store:
        store.metadata["name"] = "fuzz"
        store.append(rng.normal(size=(12, 20)).astype(np.float32), meta={"t": 0.0})
        store.append(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8), meta={"t": 1, "tags": ["a", "b"]})
        store.metadata["step"] = 2
        store.append(Image.fromarray(rng.integers(0, 256, (5, 6, 4), dtype=np.uint8), "RGBA"))
        store.append(rng.integers(0, 256, (16, 16), dtype=np.uint8), quality=0.1)
        unclosed = path.read_bytes()  # every append is fsynced; the index is written by close()
    seeds += [path.read_bytes(), unclosed]
    with KeyframeStore(path, "a", codec=codec) as store:  # a second session: a new index, more metadata
        store.metadata["session"] = 2
        store.append(rng.normal(size=(8, 8, 3)).astype(np.float64), meta={"t": 2.5})
    seeds.append(path.read_bytes())
    empty = workdir / "empty.ldks"
    with KeyframeStore(empty, "w", codec=codec):
        pass
    seeds.append(empty.read_bytes())
    return seeds


@dataclass
class _Record:
    offset: int
    type: int
    seq: int
    json: bytes
    data: bytes


def _store_records(blob: bytes) -> list[_Record]:
    """The data records of a (valid) store, in file order; index records are skipped."""
    from ldcodec.store import format as fmt

    out, pos = [], fmt.FILE_HEADER_SIZE
    while True:
        head = fmt.parse_record_header(blob[pos : pos + fmt.RECORD_HEADER_SIZE])
        if head is None or pos + head.size > len(blob):
            return out
        body = pos + fmt.RECORD_HEADER_SIZE
        if head.type != fmt.RecordType.INDEX:
            out.append(_Record(pos, head.type, head.seq, blob[body : body + head.json_len],
                               blob[body + head.json_len : pos + head.size]))
        pos += head.size


def _build_store(records: list[_Record], closed: bool = True) -> bytes:
    """A store holding ``records`` (CRCs computed), with an index and trailer when ``closed``."""
    from ldcodec.store import format as fmt

    parts, pos, entries, meta_offset = [fmt.file_header()], fmt.FILE_HEADER_SIZE, [], 0
    for r in records:
        raw = _pack_raw_record(r)
        if r.type == fmt.RecordType.FRAME:
            entries.append(fmt.pack_entry(len(entries), pos, len(raw)))
        elif r.type == fmt.RecordType.METADATA:
            meta_offset = pos
        parts.append(raw)
        pos += len(raw)
    if closed:
        parts.append(fmt.pack_record(fmt.RecordType.INDEX, len(entries), b"", b"".join(entries)))
        parts.append(fmt.pack_trailer(pos, meta_offset, len(entries)))
    return b"".join(parts)


def _pack_raw_record(r: _Record) -> bytes:
    """A record of any type byte, with valid CRCs (``pack_record`` only takes known types)."""
    from ldcodec.store import format as fmt

    head = fmt._RECORD_HEADER.pack(fmt.RECORD_MAGIC, r.type & 0xFF, 0, 0, r.seq & 0xFFFFFFFF, len(r.json),
                                   len(r.data), zlib.crc32(r.json), zlib.crc32(r.data))
    return head + struct.pack("<I", zlib.crc32(head)) + r.json + r.data


_INTERESTING_U32 = [0, 1, 2, 3, 4, 5, 31, 32, 33, 255, 4096, 2**16, 2**24, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
_INTERESTING_U64 = _INTERESTING_U32 + [2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
_HOSTILE_VALUES = [None, True, -1, 0, 1, 2**64, 2**1100, -(2**63), 1e308, -1e308, float("inf"), float("nan"), 0.5,
                   "abc", "", [], {}, [0], [-8, -8], [float("inf"), 8], [2**1100, 1], [2**31, 2**31], [1e9, 1e9],
                   [1, 2, 3], ["a", "b"], [1.0, float("inf")], "object", "float128", "V8", "S5", "uint8", "float16",
                   "<M8[s]", "pil", "float", "RGBA", "P", {"a": 1}]
_HOSTILE_DOCUMENTS = [b"[]", b'"x"', b"1", b"null", b"{}", b"{", b"\xff\xfe", b"1e999", b"NaN", b"9" * 5000,
                      b'{"kind": "float"}', b'{"meta": []}', b"[" * 100 + b"]" * 100]


def _pick(rng: np.random.Generator, values: list[int]) -> int:
    """One of ``values`` exactly (``rng.choice`` would go through float64 and round 2^64 - 1 up)."""
    return values[rng.integers(len(values))]


def _hostile_json(raw: bytes, rng: np.random.Generator) -> bytes:
    kind = rng.integers(4)
    if kind == 0:
        return _HOSTILE_DOCUMENTS[rng.integers(len(_HOSTILE_DOCUMENTS))]
    if kind == 1:  # nesting deeper than the JSON parser's recursion limit
        depth = int(rng.choice([999, 5000, 100_000]))
        opener, closer = (b"[", b"]") if rng.random() < 0.5 else (b'{"a":', b"}")
        return opener * depth + b"1" + closer * depth
    try:
        doc = json.loads(raw.decode("utf-8"))
    except ValueError:
        return raw
    if not isinstance(doc, dict):
        return raw
    keys = list(doc) + ["kind", "width", "height", "shape", "dtype", "range", "mode", "quality", "meta"]
    key = keys[rng.integers(len(keys))]
    if kind == 2 and rng.random() < 0.2:  # a value nested deeply, within what the JSON parser accepts
        value: list = []
        for _ in range(int(rng.choice([100, 400, 900]))):
            value = [value]
        doc[key] = value
    elif kind == 2:
        doc[key] = _HOSTILE_VALUES[rng.integers(len(_HOSTILE_VALUES))]
    else:
        doc.pop(key, None)
    try:
        return json.dumps(doc).encode("utf-8")  # NaN/inf allowed here on purpose
    except RecursionError:
        return raw


def mutate_store(seeds: list[bytes], ldc_seeds: list[bytes], rng: np.random.Generator) -> bytes:
    from ldcodec.store import format as fmt

    blob = bytearray(seeds[rng.integers(len(seeds))])
    kind = rng.integers(12)
    if kind == 0:  # bit flips
        for pos in rng.integers(0, len(blob), size=rng.integers(1, 8)):
            blob[pos] ^= 1 << rng.integers(8)
    elif kind == 1:  # truncation
        blob = blob[: rng.integers(0, len(blob))]
    elif kind == 2:  # splice two stores (anywhere, or at record boundaries)
        other = seeds[rng.integers(len(seeds))]
        if rng.random() < 0.5:
            blob = blob[: rng.integers(0, len(blob) + 1)] + other[rng.integers(0, len(other) + 1) :]
        else:
            mine = [r.offset for r in _store_records(bytes(blob))] + [len(blob)]
            theirs = [r.offset for r in _store_records(other)] + [len(other)]
            blob = blob[: mine[rng.integers(len(mine))]] + other[theirs[rng.integers(len(theirs))] :]
    elif kind == 3:  # a record header field rewritten, header CRC fixed
        offsets = [r.offset for r in _store_records(bytes(blob))]
        if offsets:
            at = offsets[rng.integers(len(offsets))]
            # magic 4s | type B | flags B | reserved H | seq I | json_len I | data_len I | json_crc I | data_crc I
            fields = [(4, "<B"), (5, "<B"), (6, "<H"), (8, "<I"), (12, "<I"), (16, "<I"), (20, "<I"), (24, "<I")]
            off, f = fields[rng.integers(len(fields))]
            values = _INTERESTING_U32 + [fmt.MAX_JSON_BYTES, fmt.MAX_JSON_BYTES + 1]
            value = _pick(rng, values) if rng.random() < 0.7 else int(rng.integers(0, 2**32))
            struct.pack_into(f, blob, at + off, value & ((1 << (8 * struct.calcsize(f))) - 1))
            struct.pack_into("<I", blob, at + 28, zlib.crc32(bytes(blob[at : at + 28])))
    elif kind == 4:  # a trailer field rewritten (huge offsets and counts), CRC fixed
        if len(blob) >= fmt.FILE_HEADER_SIZE + fmt.TRAILER_SIZE:
            at = len(blob) - fmt.TRAILER_SIZE
            # magic 4s | version H | flags H | index_offset Q | meta_offset Q | frames I
            off, f = [(4, "<H"), (6, "<H"), (8, "<Q"), (16, "<Q"), (24, "<I")][rng.integers(5)]
            pool = _INTERESTING_U64 if f == "<Q" else _INTERESTING_U32
            value = _pick(rng, pool) if rng.random() < 0.7 else int(rng.integers(0, len(blob) + 64))
            struct.pack_into(f, blob, at + off, value & ((1 << (8 * struct.calcsize(f))) - 1))
            struct.pack_into("<I", blob, at + 28, zlib.crc32(bytes(blob[at : at + 28])))
    elif kind == 5:  # an index entry rewritten, its CRC fixed
        trailer = fmt.parse_trailer(bytes(blob[-fmt.TRAILER_SIZE :]))
        if trailer is not None and trailer.frames:
            i = int(rng.integers(trailer.frames))
            at = trailer.index_offset + fmt.RECORD_HEADER_SIZE + i * fmt.ENTRY_SIZE
            offset, length, _ = struct.unpack_from("<QII", blob, at)
            if rng.random() < 0.5:
                offset = _pick(rng, _INTERESTING_U64) if rng.random() < 0.5 else int(rng.integers(0, len(blob)))
            else:
                length = _pick(rng, _INTERESTING_U32) if rng.random() < 0.5 else int(rng.integers(0, len(blob)))
            struct.pack_into("<QII", blob, at, offset, length, fmt.entry_crc(i, offset, length))
    elif kind == 6:  # the file header rewritten, CRC fixed
        off, f = [(8, "<H"), (10, "<H"), (12, "<I")][rng.integers(3)]
        struct.pack_into(f, blob, off, int(rng.choice([0, 1, 2, 255, 65535])))
        struct.pack_into("<I", blob, 28, zlib.crc32(bytes(blob[:28])))
    elif kind in (7, 8, 9):  # rebuilt valid stores around hostile contents
        records = _store_records(bytes(blob))
        if records:
            r = records[rng.integers(len(records))]
            if kind == 7:  # hostile JSON in a frame or metadata record
                r.json = _hostile_json(r.json, rng)
            elif kind == 8 and r.type == fmt.RecordType.FRAME:  # a mutated .ldc stream
                r.data = mutate([r.data] + ldc_seeds, rng)
            else:  # records duplicated, dropped, reordered or retyped; huge seq
                op = rng.integers(4)
                if op == 0:
                    records.insert(int(rng.integers(len(records) + 1)), _Record(0, r.type, r.seq, r.json, r.data))
                elif op == 1:
                    records.remove(r)
                elif op == 2:
                    rng.shuffle(records)
                else:
                    r.seq = _pick(rng, _INTERESTING_U32)
                    if rng.random() < 0.3:
                        r.type = int(rng.integers(0, 256))
            blob = bytearray(_build_store(records, closed=rng.random() < 0.7))
    elif kind == 10:  # garbage after a valid file header, with a few valid-looking record headers
        blob = bytearray(fmt.file_header() + rng.integers(0, 256, size=rng.integers(0, 400), dtype=np.uint8).tobytes())
        for _ in range(rng.integers(0, 3)):
            rec = _pack_raw_record(_Record(0, int(rng.integers(0, 5)), _pick(rng, _INTERESTING_U32), b"{}", b""))
            pos = int(rng.integers(fmt.FILE_HEADER_SIZE, len(blob) + 1))
            blob[pos:pos] = rec
    else:  # a block of zeros or random bytes written over part of the file (torn / corrupted write)
        start = int(rng.integers(0, len(blob)))
        n = int(rng.integers(1, 256))
        fill = bytes(n) if rng.random() < 0.5 else rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        blob[start : start + n] = fill[: max(0, len(blob) - start)]
    return bytes(blob)


def read_store_completely(path: Path, codec, report: FuzzReport, append_first: bool = False) -> None:
    """Open ``path`` and touch everything a reader can; LdcodecError per call is accepted."""
    from ldcodec.store import KeyframeStore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if append_first:  # a writer opening a damaged store: repairs, rewrites the index at close
            try:
                with KeyframeStore(path, "a", codec=codec):
                    pass
            except LdcodecError:
                pass
        try:
            store = KeyframeStore(path, "r", codec=codec)
        except LdcodecError:
            report.rejected += 1
            return
        report.decoded += 1
        try:
            _ = store.metadata, repr(store), len(store)
            if store.recovery is not None:
                _ = str(store.recovery), store.recovery.to_dict()
            for call in (store.info, store.verify):
                try:
                    call()
                except LdcodecError:
                    report.reads_rejected += 1
            for i in range(len(store)):
                for call in (store.frame_info, store.meta, store.stream, store.__getitem__):
                    try:
                        out = call(i)
                        if call == store.__getitem__:
                            report.frames_decoded += 1
                        elif call == store.frame_info:
                            out.to_dict()
                    except LdcodecError:
                        report.reads_rejected += 1
            try:
                store.refresh()
            except LdcodecError:
                report.reads_rejected += 1
        finally:
            store.close()


def fuzz_store(count: int, seed: int = 0, time_bound_s: float = 10.0, progress: bool = False,
               memory_budget_mb: int | None = DEFAULT_MEMORY_BUDGET_MB) -> FuzzReport:
    """Fuzz the keyframe store reader with ``count`` mutated stores."""
    import torch

    torch.set_num_threads(1)
    report = FuzzReport(target="store")
    begin = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        codec, ldc_seeds = make_codec_and_seeds(workdir)
        seeds = make_store_seeds(workdir, codec)
        rng = np.random.default_rng(seed)
        path = workdir / "fuzzed.ldks"
        report.rss_setup_mib = peak_rss_mib()
        with memory_limit(memory_budget_mb):
            for i in range(count):
                blob = mutate_store(seeds, ldc_seeds, rng)
                path.write_bytes(blob)
                start = _clock()
                try:
                    read_store_completely(path, codec, report, append_first=rng.random() < 0.1)
                except Exception:  # noqa: BLE001 - any other exception is a finding
                    report.findings.append(f"input {i}: {traceback.format_exc(limit=4)}")
                _timed(report, i, start, time_bound_s)
                report.inputs += 1
                _progress(report, i, progress)
    report.rss_peak_mib = peak_rss_mib()
    report.elapsed_s = time.time() - begin
    return report


def _reference_decode() -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        codec, _ = make_codec_and_seeds(Path(tmp))
        yy, xx = np.mgrid[0:1000, 0:1000]
        img = np.stack([(xx * 7 + yy * 3 + 40 * c) % 256 for c in range(3)], -1).astype(np.uint8)
        blob = codec.encode(img, quality=1.0)
        before = peak_rss_mib()
        codec.decode(blob)
    return before, peak_rss_mib()


def reference_peak_rss_mib() -> tuple[float, float]:
    """(peak RSS before, after) one legitimate decode at the fuzzing codec's pixel limit (1000×1000),
    measured in a fresh process so that the fuzzer's own peak does not mask it."""
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", "import ldcodec.fuzz as f; print(*f._reference_decode())"],
                         capture_output=True, text=True, env=env, timeout=600)
    before, after = (float(v) for v in out.stdout.split()[-2:])
    return before, after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["ldc", "store", "all"], default="ldc")
    parser.add_argument("--count", type=int, default=10_000, help="inputs per target [10000]")
    parser.add_argument("--store-count", type=int, default=None,
                        help="store inputs with --target all [count / 5]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-bound", type=float, default=10.0, help="CPU seconds per input [10]")
    parser.add_argument("--memory-budget-mb", type=int, default=DEFAULT_MEMORY_BUDGET_MB,
                        help="address space allowed on top of setup, 0 = no limit [2048]")
    args = parser.parse_args(argv)
    reports = []
    if args.target in ("ldc", "all"):
        reports.append(fuzz(args.count, args.seed, args.time_bound, progress=True,
                            memory_budget_mb=args.memory_budget_mb))
        print(reports[-1].summary(), flush=True)
    if args.target in ("store", "all"):
        n = args.count if args.target == "store" else (args.store_count or max(1, args.count // 5))
        reports.append(fuzz_store(n, args.seed, args.time_bound, progress=True,
                                  memory_budget_mb=args.memory_budget_mb))
        print(reports[-1].summary(), flush=True)
    before, after = reference_peak_rss_mib()
    print(f"reference: one legitimate decode of {FUZZ_MAX_PIXELS} pixels (the fuzzing codec's limit) in a fresh "
          f"process takes the peak RSS from {before:.0f} to {after:.0f} MiB")
    for report in reports:
        for finding in report.findings[:20]:
            print(f"[{report.target}] {finding}")
    return 1 if any(r.findings for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
