"""How much of the steps-4 LPIPS the synthesis grid buys: each decode scored as is and with its grid removed.

    python benchmarks/bench_grid_oracle.py [--dir ../shared/data/kodak] [--quality 0.3] [--limit 8] \
        [--diffusion PATH] [--steps 4]

The grid is the part of the error that is the same in every 16×16 cell (``ldcodec.eval.grid_artifact``).
Removing it needs the original, so this is an oracle, a measurement only: it says how much LPIPS (and
PSNR) the pattern is worth to a decoder, not what a decoder without it would score. Prints one row per
image and the means.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import ldcodec
from ldcodec.eval.grid_artifact import mean_error_cell
from ldcodec.eval.metrics import LpipsMetric, grid_rms, psnr


def without_grid(reference: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """``decoded`` minus the periodic component of its error, over the whole cells (uint8)."""
    cell = mean_error_cell(reference, decoded)
    h, w = reference.shape[0] // cell.shape[0] * cell.shape[0], reference.shape[1] // cell.shape[1] * cell.shape[1]
    out = decoded.astype(np.float64)
    out[:h, :w] -= np.tile(cell, (h // cell.shape[0], w // cell.shape[1], 1))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="../shared/data/kodak")
    parser.add_argument("--quality", type=float, default=0.3)
    parser.add_argument("--limit", type=int, default=8, help="first N images only (0: all)")
    parser.add_argument("--diffusion", default=None, help="diffusion weights file (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    files = sorted(Path(args.dir).glob("*.png"))[: args.limit or None]
    if not files:
        raise SystemExit(f"no PNG images in {args.dir}")
    codec = ldcodec.load(diffusion=args.diffusion)
    metric = LpipsMetric()
    print(f"{codec.diffusion_path.name}, quality {args.quality}, steps {args.steps}, seed 0\n")
    print("| image | bpp | grid (levels) | LPIPS | LPIPS, grid removed | PSNR (dB) | PSNR, grid removed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for f in files:
        reference = np.asarray(Image.open(f).convert("RGB"))
        blob = codec.encode(reference, quality=args.quality)
        decoded = np.asarray(codec.decode(blob, steps=args.steps))
        clean = without_grid(reference, decoded)
        row = (8 * len(blob) / reference.shape[0] / reference.shape[1], grid_rms(reference, decoded),
               metric(reference, decoded), metric(reference, clean), psnr(reference, decoded), psnr(reference, clean))
        rows.append(row)
        print(f"| {f.name} | {row[0]:.3f} | {row[1]:.2f} | {row[2]:.4f} | {row[3]:.4f} | {row[4]:.2f} | {row[5]:.2f} |")
    mean = np.mean(rows, axis=0)
    print(f"| mean | {mean[0]:.3f} | {mean[1]:.2f} | {mean[2]:.4f} | {mean[3]:.4f} | {mean[4]:.2f} | {mean[5]:.2f} |")


if __name__ == "__main__":
    main()
