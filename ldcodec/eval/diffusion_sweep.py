"""The diffusion decoder's sweep: the same streams decoded with every K, sampler and start.

Each image is encoded once per quality; every decoder variant then decodes those
very bytes, so bpp is identical across a row and only the decoder differs. Two
ablations separate what the parts contribute:

* ``base-g_s``: the trained denoiser, but the base synthesis (no fine-tuned g_s);
* ``tuned-g_s only``: no diffusion at all, ŷ straight into the fine-tuned g_s.

They are measurement-only decodes (not offered by the codec's API), built from the
codec's own pieces so that they match a real decode except for the part left out.
Results: one row per (variant, quality) with mean bpp, PSNR, MS-SSIM, LPIPS, the
synthesis grid (:func:`ldcodec.eval.metrics.grid_rms`) and the median decode time,
written as CSV and as a markdown table.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldcodec.eval.metrics import LpipsMetric, grid_rms, ms_ssim, psnr


@dataclass(frozen=True)
class Variant:
    """One way to decode: diffusion steps, sampler, start, and which synthesis runs after."""

    steps: int
    sampler: str = "dpmpp"
    start: str = "matched"
    #: "shipped" (what ``decode`` does), "base" (base g_s after diffusion), "tuned-only" (no diffusion).
    synthesis: str = "shipped"

    @property
    def name(self) -> str:
        if self.synthesis == "tuned-only":
            return "tuned g_s only (K=0 latents)"
        if self.steps == 0:
            return "K=0 (distortion-optimal)"
        text = f"K={self.steps} {self.sampler} {self.start}"
        return text + (" + base g_s" if self.synthesis == "base" else "")


def default_variants() -> list[Variant]:
    """The K = 0, 1, 2, 4, 8 sweep (DPM-Solver++, matched), DDIM and the pure-noise start at K = 4, ablations."""
    variants = [Variant(k) for k in (0, 1, 2, 4, 8)]
    variants += [Variant(4, "ddim"), Variant(4, "dpmpp", "noise"), Variant(4, "ddim", "noise")]
    variants += [Variant(4, synthesis="base"), Variant(0, synthesis="tuned-only")]
    return variants


def main_variants() -> list[Variant]:
    """The two curves ``ldcodec eval`` reports (K = 0 and K = 4): enough to compare diffusion decoders."""
    return [Variant(0), Variant(4)]


#: ``--variants`` names of the sweep benchmark.
VARIANT_SETS = {"all": default_variants, "main": main_variants}


def decode_variant(codec, blob: bytes, variant: Variant, seed: int = 0) -> np.ndarray:
    """``codec.decode`` for shipped variants; the ablations swap the synthesis (measurement only)."""
    if variant.synthesis == "shipped":
        return np.asarray(codec.decode(blob, steps=variant.steps, seed=seed, sampler=variant.sampler,
                                       start=variant.start).convert("RGB"))
    codec._diffusion_denoiser()  # loads the fine-tuned synthesis too
    tuned = codec._diffusion_synthesis
    if variant.synthesis == "tuned-only" and tuned is None:
        raise ValueError("the diffusion decoder has no fine-tuned synthesis")
    codec._diffusion_synthesis = None if variant.synthesis == "base" else tuned
    if variant.synthesis == "tuned-only":  # keep the latents as decoded, use the tuned g_s
        codec._diffuse = lambda d, y, *args: y  # an instance attribute shadowing the method
    try:
        steps = variant.steps if variant.synthesis == "base" else 1
        return np.asarray(codec.decode(blob, steps=steps, seed=seed, sampler=variant.sampler,
                                       start=variant.start).convert("RGB"))
    finally:
        codec._diffusion_synthesis = tuned
        codec.__dict__.pop("_diffuse", None)


def run_sweep(codec, images: list[np.ndarray], qualities: list[float], variants: list[Variant], lpips: bool = True,
              seed: int = 0, log=print) -> list[dict]:
    """Mean metrics per (variant, quality) over ``images`` (H×W×3 uint8)."""
    metric = LpipsMetric() if lpips else None
    per = {}
    for i, rgb in enumerate(images):
        for q in qualities:
            blob = codec.encode(rgb, quality=q)
            bpp = 8 * len(blob) / (rgb.shape[0] * rgb.shape[1])
            for v in variants:
                t0 = time.perf_counter()
                out = decode_variant(codec, blob, v, seed)
                seconds = time.perf_counter() - t0
                row = per.setdefault((v, q), {key: [] for key in ("bpp", "psnr", "ms_ssim", "lpips", "grid",
                                                                  "seconds")})
                row["bpp"].append(bpp)
                row["psnr"].append(psnr(rgb, out))
                row["ms_ssim"].append(ms_ssim(rgb, out))
                row["lpips"].append(metric(rgb, out) if metric else math.nan)
                row["grid"].append(grid_rms(rgb, out))
                row["seconds"].append(seconds)
        log(f"image {i + 1}/{len(images)} done")
    rows = []
    for (v, q), m in per.items():
        rows.append({"variant": v.name, "steps": v.steps, "sampler": v.sampler, "start": v.start,
                     "synthesis": v.synthesis, "quality": q, "bpp": float(np.mean(m["bpp"])),
                     "psnr": float(np.mean(m["psnr"])), "ms_ssim": float(np.mean(m["ms_ssim"])),
                     "lpips": float(np.mean(m["lpips"])), "grid_rms": float(np.mean(m["grid"])),
                     "decode_s": statistics.median(m["seconds"]),
                     "images": len(m["bpp"])})
    return rows


def write_csv(rows: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: list[dict]) -> list[str]:
    """One table per quality; LPIPS change relative to K=0 on the same streams."""
    lines = []
    for q in sorted({r["quality"] for r in rows}):
        group = [r for r in rows if r["quality"] == q]
        ref = next((r for r in group if r["steps"] == 0 and r["synthesis"] == "shipped"), None)
        lines += [f"**quality {q:g}** (mean {group[0]['bpp']:.3f} bpp, {group[0]['images']} images)", "",
                  ("| decoder | PSNR (dB) | MS-SSIM | LPIPS | LPIPS vs K=0 | PSNR vs K=0 | grid (levels) "
                   "| decode (s, median) |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            dl = f"{100 * (r['lpips'] / ref['lpips'] - 1):+.1f} %" if ref and ref["lpips"] > 0 else "—"
            dp = f"{r['psnr'] - ref['psnr']:+.2f}" if ref else "—"
            lines.append(f"| {r['variant']} | {r['psnr']:.2f} | {r['ms_ssim']:.4f} | {r['lpips']:.4f} | {dl} | {dp} | "
                         f"{r['grid_rms']:.2f} | {r['decode_s']:.3f} |")
        lines.append("")
    return lines
