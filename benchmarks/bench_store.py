"""Keyframe store benchmark: build a store of many small frames, then time opening it and reading
one frame in the middle, counting the bytes read.

    OMP_NUM_THREADS=1 python benchmarks/bench_store.py                 # 10,000 frames of 16×16
    python benchmarks/bench_store.py --frames 1000 --model hp-v1        # shipped weights
    python benchmarks/bench_store.py --fidelity                         # float-field / Kodak errors, shipped model

Bytes read are counted twice: by the store itself (``store.bytes_read``, every pread it
issues) and by the kernel (``rchar`` in /proc/self/io: all bytes this process read through
read-like system calls). Page-cache state is not controlled (that needs root), so times are
warm-cache times; the byte counts do not depend on the cache.

By default the store is filled with ``append_stream`` from a pool of pre-encoded frames, so
the build measures the store (one fsync per append), not the encoder; ``--encode`` encodes
every frame with ``append`` instead.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def rchar() -> int | None:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def tiny_model(folder: Path) -> Path:
    import torch

    from ldcodec.codec.model import HyperpriorModel, ModelConfig
    from ldcodec.codec.weights import export_weights

    torch.manual_seed(0)
    model = HyperpriorModel(ModelConfig(channels=16, latent_channels=24, gain_levels=4))
    return export_weights(model, folder / "tiny-bench.safetensors", model_id="tiny-bench")


def frame(k: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    rgb = [128 + 100 * np.sin(xx / (3.0 + k % 7) + c + k) * np.cos(yy / (4.0 + k % 5) - c) for c in range(3)]
    return np.clip(np.stack(rgb, -1), 0, 255).astype(np.uint8)


def smooth_field(n: int = 256, lo: float = -3.5, hi: float = 12.0) -> np.ndarray:
    """A smooth synthetic float32 field (sinusoids + Gaussians) spanning exactly [lo, hi]."""
    yy, xx = np.mgrid[0:n, 0:n] / n
    f = (3 * np.sin(2 * np.pi * 3 * xx) * np.cos(2 * np.pi * 2 * yy)
         + 6 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.6) ** 2) / 0.02)
         - 4 * np.exp(-((xx - 0.7) ** 2 + (yy - 0.3) ** 2) / 0.01)
         + 1.5 * np.sin(2 * np.pi * (5 * xx + 3 * yy)))
    return (lo + (f - f.min()) / (f.max() - f.min()) * (hi - lo)).astype(np.float32)


def fidelity(model: str | None, qualities: list[float], kodak: Path) -> None:
    """Errors of a float field and a Kodak image through a store (shipped model unless --model)."""
    import ldcodec
    from ldcodec.eval.metrics import psnr
    from ldcodec.store import KeyframeStore
    from PIL import Image

    codec = ldcodec.load(model) if model else ldcodec.load()
    field = smooth_field()
    lo, hi = float(field.min()), float(field.max())
    span = hi - lo
    u8 = np.rint((field.astype(np.float64) - lo) / span * 255)
    floor = lo + u8 / 255 * span - field
    print(f"model {codec.model_id} (weights {codec.weights.sha256[:8].hex()}); float32 field 256x256 in [{lo}, {hi}]")
    print(f"  8-bit mapping alone: max |err| {100 * np.abs(floor).max() / span:.3f}% of range, "
          f"RMS {100 * np.sqrt((floor ** 2).mean()) / span:.3f}%")
    with tempfile.TemporaryDirectory() as d:
        with KeyframeStore(Path(d) / "f.ldks", "w", codec=codec) as store:
            for q in qualities:
                store.append(field, quality=q)
            if kodak.exists():
                store.append(Image.open(kodak).convert("RGB"), meta={"source": kodak.name}, quality=0.5)
        with KeyframeStore(Path(d) / "f.ldks", codec=codec) as store:
            for i, q in enumerate(qualities):
                y = store[i]
                assert y.dtype == np.float32 and y.min() >= lo and y.max() <= hi
                err = y.astype(np.float64) - field
                rms = np.sqrt((err ** 2).mean())
                a = np.abs(err) * (100 / span)
                print(f"  quality {q:.2f}: {store.frame_info(i).bpp:.3f} bpp; |err| in % of range: max {a.max():.2f}, "
                      f"max without an 8-pixel border {a[8:-8, 8:-8].max():.2f}, 99th percentile "
                      f"{np.percentile(a, 99):.2f}, RMS {100 * rms / span:.3f} (range PSNR {20 * np.log10(span / rms):.2f} dB); "
                      f"decoded range [{y.min():.4f}, {y.max():.4f}]")
            if kodak.exists():
                i = len(qualities)
                got = store[i]
                same = np.array_equal(np.asarray(got), np.asarray(codec.decode(store.stream(i))))
                ref = np.asarray(Image.open(kodak).convert("RGB"))
                print(f"{kodak.name} (uint8 RGB {ref.shape[1]}x{ref.shape[0]}), quality 0.50: "
                      f"{store.frame_info(i).bpp:.4f} bpp, PSNR {psnr(ref, np.asarray(got)):.2f} dB "
                      f"(store frame == codec.decode(stream): {same})")
            else:
                print(f"{kodak}: not found, Kodak figure skipped")


def timed_open_read(path: Path, index: int, codec, decode: bool):
    from ldcodec.store import KeyframeStore

    r0 = rchar()
    t0 = time.perf_counter()
    with KeyframeStore(path, "r", codec=codec) as store:
        item = store[index] if decode else store.stream(index)
        t1 = time.perf_counter()
        n_store = store.bytes_read
    r1 = rchar()
    return t1 - t0, n_store, (r1 - r0) if r0 is not None and r1 is not None else None, item


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=16, help="frame side in pixels")
    ap.add_argument("--pool", type=int, default=64, help="distinct pre-encoded frames (without --encode)")
    ap.add_argument("--encode", action="store_true", help="encode every frame (slow) instead of a pool")
    ap.add_argument("--model", default=None, help="model id or .safetensors [a tiny random model]")
    ap.add_argument("--dir", default=None, help="folder for the store [a temporary folder]")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--fidelity", action="store_true",
                    help="instead: errors of a float field and a Kodak image through a store (shipped model)")
    ap.add_argument("--qualities", default="0.25,0.5,0.75,1.0", help="with --fidelity: qualities for the field")
    ap.add_argument("--kodak", default=str(Path(__file__).resolve().parents[2] / "shared/data/kodak/kodim23.png"))
    args = ap.parse_args()
    if args.fidelity:
        fidelity(args.model, [float(q) for q in args.qualities.split(",")], Path(args.kodak))
        return

    import warnings

    import ldcodec
    from ldcodec.store import KeyframeStore, StoreRecoveryWarning

    warnings.simplefilter("ignore", FutureWarning)
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    folder = Path(args.dir) if args.dir else tmp
    folder.mkdir(parents=True, exist_ok=True)
    try:
        codec = ldcodec.load(args.model) if args.model else ldcodec.load(tiny_model(tmp))
        path = folder / "bench.ldks"
        n, mid = args.frames, args.frames // 2

        pool = [] if args.encode else [codec.encode(frame(k, args.size)) for k in range(args.pool)]
        t0 = time.perf_counter()
        with KeyframeStore(path, "w", codec=codec) as store:
            store.metadata["bench"] = {"frames": n, "size": args.size}
            for k in range(n):
                meta = {"t": k * 0.01, "step": k}
                if args.encode:
                    store.append(frame(k, args.size), meta=meta)
                else:
                    store.append_stream(pool[k % len(pool)], meta=meta)
            t_build = time.perf_counter() - t0
            t_close0 = time.perf_counter()
        t_close = time.perf_counter() - t_close0
        size = path.stat().st_size
        print(f"store: {n} frames of {args.size}x{args.size}, {size} bytes ({size / n:.1f} bytes/frame), "
              f"model {codec.model_id}")
        print(f"build: {t_build:.2f} s = {n / t_build:.0f} appends/s (each fsynced"
              f"{', each encoded' if args.encode else ', pre-encoded streams'}); close (index) {t_close * 1e3:.1f} ms")

        for decode in (False, True):
            times, n_store, n_kernel = [], None, None
            for _ in range(args.repeat):
                t, n_store, n_kernel, _ = timed_open_read(path, mid, codec, decode)
                times.append(t)
            what = "open + store[%d] (decoded)" % mid if decode else "open + store.stream(%d)" % mid
            print(f"{what}: median {statistics.median(times) * 1e3:.3f} ms over {args.repeat}, "
                  f"bytes read {n_store} (store) / {n_kernel} (kernel rchar) of {size} = "
                  f"{100.0 * n_store / size:.4f}% of the file")

        with KeyframeStore(path, "r", codec=codec) as store:
            rng = random.Random(0)
            picks = [rng.randrange(n) for _ in range(1000)]
            t0 = time.perf_counter()
            for i in picks:
                store.stream(i)
            t_rand = time.perf_counter() - t0
            t0 = time.perf_counter()
            info = store.info()
            t_info = time.perf_counter() - t0
        print(f"random access: {1000 / t_rand:.0f} stream reads/s in an open store; "
              f"info() over all frames {t_info * 1e3:.0f} ms (mean {info.mean_bpp:.3f} bpp)")

        # The recovery path: the same data without index and trailer (a writer that never closed).
        with KeyframeStore(path, "a") as store:
            data_end = store._end
        scan = folder / "bench-noindex.ldks"
        with open(path, "rb") as src, open(scan, "wb") as dst:
            dst.write(src.read(data_end))
        r0 = rchar()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StoreRecoveryWarning)
            with KeyframeStore(scan, "r") as store:
                store.stream(mid)
                t_scan = time.perf_counter() - t0
                scanned, frames = store.bytes_read, len(store)
        r1 = rchar()
        print(f"without index (recovery scan): open + stream({mid}) {t_scan * 1e3:.0f} ms, {frames} frames found, "
              f"bytes read {scanned} (store) / {(r1 - r0) if r0 is not None else None} (kernel) of {data_end}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.dir:
            for name in ("bench.ldks", "bench-noindex.ldks"):
                (folder / name).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
