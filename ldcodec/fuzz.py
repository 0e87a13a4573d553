"""Mutation fuzzer for the decoder: ``python -m ldcodec.fuzz [--count N] [--seed S]``.

Feeds bit flips, truncations, splices, random headers (with valid CRCs) and
huge declared sizes to ``ImageCodec.decode``. Every input must end, within a
time bound, in either an image of the declared size or an ``LdcodecError``;
anything else is a finding. Uses a tiny random-weights model so that each
input costs milliseconds.
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldcodec.bitstream.container import parse_header
from ldcodec.errors import LdcodecError


@dataclass
class FuzzReport:
    inputs: int = 0
    decoded: int = 0
    rejected: int = 0
    slowest_s: float = 0.0
    findings: list[str] = field(default_factory=list)


def _fix_header_crc(blob: bytearray) -> bytearray:
    if len(blob) < 7:
        return blob
    head_len = 7 + blob[6] + 8 + 4 + 4 + 1 + 2 + 1 + 1
    if len(blob) < head_len + 4:
        return blob
    blob[head_len : head_len + 4] = struct.pack("<I", zlib.crc32(bytes(blob[:head_len])))
    return blob


def mutate(seeds: list[bytes], rng: np.random.Generator) -> bytes:
    blob = bytearray(seeds[rng.integers(len(seeds))])
    kind = rng.integers(7)
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
    codec = ldcodec.load(weights, max_pixels=1_000_000)
    rng = np.random.default_rng(0)
    seeds = []
    for h, w, c in [(8, 8, 3), (17, 33, 3), (40, 24, 1), (23, 19, 4), (1, 1, 3)]:
        img = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
        seeds.append(codec.encode(img[:, :, 0] if c == 1 else img, quality=float(rng.random())))
    return codec, seeds


def fuzz(count: int, seed: int = 0, time_bound_s: float = 10.0, progress: bool = False) -> FuzzReport:
    import torch

    torch.set_num_threads(1)
    report = FuzzReport()
    with tempfile.TemporaryDirectory() as tmp:
        codec, seeds = make_codec_and_seeds(Path(tmp))
        rng = np.random.default_rng(seed)
        for i in range(count):
            blob = mutate(seeds, rng)
            start = time.perf_counter()
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
            elapsed = time.perf_counter() - start
            report.slowest_s = max(report.slowest_s, elapsed)
            if elapsed > time_bound_s:
                report.findings.append(f"input {i}: took {elapsed:.1f} s")
            report.inputs += 1
            if progress and (i + 1) % 1000 == 0:
                print(f"{i + 1} inputs, {report.decoded} decoded, {report.rejected} rejected, "
                      f"{len(report.findings)} findings", file=sys.stderr, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.time()
    report = fuzz(args.count, args.seed, progress=True)
    print(f"fuzzed {report.inputs} inputs in {time.time() - start:.0f} s: {report.decoded} decoded, "
          f"{report.rejected} rejected with LdcodecError, slowest {report.slowest_s:.3f} s, "
          f"{len(report.findings)} findings")
    for finding in report.findings[:20]:
        print(finding)
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
