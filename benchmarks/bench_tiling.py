"""Large-image check of the tiled transforms: peak memory at 4096², tiled vs untiled.

    python benchmarks/bench_tiling.py [--image ../shared/data/kodak/kodim23.png] [--size 4096]

Prints bpp, PSNR, times and peak RSS of a SIZE×SIZE image (the input mirror-padded),
then codes the input untiled and with 256-pixel tiles and compares stream and pixels,
writing a crop across a tile edge to docs/results/tile-seam-crop.png.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from PIL import Image

import ldcodec
from ldcodec.eval.metrics import psnr


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="../shared/data/kodak/kodim23.png")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crop", default="docs/results/tile-seam-crop.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    src = np.asarray(Image.open(args.image).convert("RGB"))

    pad = ((0, max(0, args.size - src.shape[0])), (0, max(0, args.size - src.shape[1])), (0, 0))
    big = np.pad(src, pad, mode="symmetric")[: args.size, : args.size]
    codec = ldcodec.load()
    after_load = peak_rss_mb()
    t0 = time.perf_counter()
    blob = codec.encode(big, quality=0.5)
    t1 = time.perf_counter()
    out = np.asarray(codec.decode(blob))
    t2 = time.perf_counter()
    print(f"{args.size}x{args.size}: {8 * len(blob) / big.shape[0] / big.shape[1]:.4f} bpp, "
          f"PSNR {psnr(big, out):.2f} dB, encode {t1 - t0:.1f} s, decode {t2 - t1:.1f} s "
          f"({args.threads} thread(s)), peak RSS {peak_rss_mb():.0f} MB (after load {after_load:.0f} MB)")
    del big, out

    whole, tiled = ldcodec.load(tile=0), ldcodec.load(tile=16)
    blob = whole.encode(src, quality=0.3)
    a, b = np.asarray(whole.decode(blob)), np.asarray(tiled.decode(blob))
    print(f"untiled vs 256-pixel tiles: same stream {blob == tiled.encode(src, quality=0.3)}, "
          f"PSNR {psnr(src, a):.4f} vs {psnr(src, b):.4f} dB, "
          f"{int((a != b).any(axis=2).sum())} of {a.shape[0] * a.shape[1]} pixels differ")
    Image.fromarray(np.concatenate([a[192:320, 192:320], b[192:320, 192:320]], axis=1)).save(args.crop)
    print(f"wrote {args.crop} (untiled left, tiled right; tile edge at 256)")


if __name__ == "__main__":
    main()
