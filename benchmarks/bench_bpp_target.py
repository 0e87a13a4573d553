"""How close `encode --bpp B` lands to B on real photos (issue 4: within ±10 %).

    python benchmarks/bench_bpp_target.py [--dir ../shared/data/kodak] [--targets 0.03,0.05,0.1,0.25,0.5,1.0]
                                          [--model ID_OR_PATH]

For every image and target it encodes with ``bpp=target`` and prints, per target, the
achieved bpp (mean, min, max), the worst relative deviation, how many images landed
within ±10 %, and how many were below the model's lowest rate (the encoder warns and
uses quality 0 there, so those miss the target by construction).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

import ldcodec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="../shared/data/kodak")
    parser.add_argument("--targets", default="0.03,0.05,0.1,0.25,0.5,1.0")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--model", default=None, help="model id or .safetensors path (default: the default model)")
    args = parser.parse_args()
    files = sorted(Path(args.dir).glob("*.png"))
    if args.limit:
        files = files[: args.limit]
    if not files:
        raise SystemExit(f"no PNG images in {args.dir}")
    targets = [float(t) for t in args.targets.split(",")]
    codec = ldcodec.load(args.model)
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    print(f"model {codec.model_id}, {len(files)} images from {args.dir}")
    print("| target bpp | achieved mean | min | max | worst deviation | within ±10 % | below the model's range |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for target in targets:
        achieved, floor = [], 0
        for rgb in images:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                blob = codec.encode(rgb, bpp=target)
            floor += any("below the lowest rate" in str(w.message) for w in caught)
            achieved.append(8 * len(blob) / (rgb.shape[0] * rgb.shape[1]))
        dev = np.abs(np.array(achieved) / target - 1)
        print(f"| {target:g} | {np.mean(achieved):.4f} | {min(achieved):.4f} | {max(achieved):.4f} | "
              f"{100 * dev.max():.1f} % | {int((dev <= 0.10).sum())}/{len(images)} | {floor} |", flush=True)


if __name__ == "__main__":
    main()
