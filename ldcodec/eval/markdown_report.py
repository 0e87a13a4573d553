"""``results.md``: the evaluation as a readable page (matched-rate table, BD-rates, plots).

Numbers at matched rates are interpolated on each codec's mean RD curve
(linear in log-bpp), only inside the range the codec's sweep covered.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ldcodec.eval.reports import rd_curves, write_atomically

TARGET_BPPS = (0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0)
METRICS = (("psnr", "PSNR (dB)", "{:.2f}"), ("ms_ssim", "MS-SSIM", "{:.4f}"), ("lpips", "LPIPS", "{:.3f}"))


def interpolate_at(rate: np.ndarray, value: np.ndarray, target: float) -> float:
    """``value`` at ``target`` bpp, linear in log-rate; NaN outside the measured range."""
    if len(rate) == 0 or target < rate.min() or target > rate.max():
        return math.nan
    return float(np.interp(math.log(target), np.log(rate), value))


def _cell(value: float, fmt: str) -> str:
    return "—" if not math.isfinite(value) else fmt.format(value)


def matched_rate_table(summary: dict, metric: str, fmt: str) -> list[str]:
    curves = rd_curves(summary, metric)
    if not curves:
        return []
    lines = ["| codec | " + " | ".join(f"{b} bpp" for b in TARGET_BPPS) + " |",
             "|---|" + "---|" * len(TARGET_BPPS)]
    for codec, (rate, value) in curves.items():
        lines.append(f"| {codec} | " + " | ".join(_cell(interpolate_at(rate, value, b), fmt) for b in TARGET_BPPS) + " |")
    return lines


def rd_points_table(summary: dict) -> list[str]:
    lines = ["| codec | setting | bpp | PSNR | MS-SSIM | LPIPS | encode s | decode s |", "|---|---|---|---|---|---|---|---|"]
    for codec, settings in summary.items():
        for setting, s in sorted(settings.items(), key=lambda kv: kv[1]["bpp"]):
            lines.append(f"| {codec} | {setting} | {_cell(s['bpp'], '{:.4f}')} | {_cell(s['psnr'], '{:.2f}')} | "
                         f"{_cell(s['ms_ssim'], '{:.4f}')} | {_cell(s['lpips'], '{:.4f}')} | "
                         f"{_cell(s['encode_s'], '{:.3f}')} | {_cell(s['decode_s'], '{:.3f}')} |")
    return lines


def bd_rate_lines(bd_rates: list[dict]) -> list[str]:
    lines = ["| codec | anchor | metric | BD-rate (cubic) | BD-rate (pchip) | overlap of the quality axis |",
             "|---|---|---|---|---|---|"]
    for r in bd_rates:
        lines.append(f"| {r['codec']} | {r['anchor']} | {r['metric']} | {_cell(r['bd_rate_cubic_pct'], '{:+.1f} %')} | "
                     f"{_cell(r['bd_rate_pchip_pct'], '{:+.1f} %')} | "
                     f"{_cell(r['overlap_low'], '{:.2f}')} … {_cell(r['overlap_high'], '{:.2f}')} |")
    return lines


def write_markdown_report(path: Path, summary: dict, bd_rates: list[dict], info: dict, figures: list[Path],
                          command: str, crops: list[Path] = (), extra_sections: list[tuple[str, str]] = ()) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Rate–distortion results", "",
             f"{info.get('images')} images from `{info.get('image_dir')}`; LPIPS: {info.get('lpips') or 'not measured'}. "
             "Regenerate with:", "", "```sh", command, "```", ""]
    if info.get("skipped"):
        lines += ["Skipped: " + "; ".join(info["skipped"]), ""]
    if info.get("reused"):
        lines += [f"Reused: {info['reused']['rows']} classical-codec measurements (same codec, setting, image and "
                  f"library versions) from `{info['reused']['from']}`; their timings are that run's. "
                  "ldcodec was measured in this run.", ""]
    for metric, title, fmt in METRICS:
        table = matched_rate_table(summary, metric, fmt)
        if table:
            lines += [f"## {title} at matched rates (mean over images, interpolated)", ""] + table + [""]
    lines += ["## BD-rate (negative = fewer bits for the same quality)", ""] + bd_rate_lines(bd_rates) + [""]
    lines += ["## Plots", ""]
    for fig in figures:
        lines.append(f"![{fig.stem}]({os.path.relpath(fig, path.parent)})")
    if crops:
        lines += ["", f"## Side-by-side crops at ≈{info.get('crop_bpp')} bpp (original | codecs, see crops/)", ""]
        lines += [f"![{c.stem}]({os.path.relpath(c, path.parent)})" for c in list(crops)[:4]]
    for title, text in extra_sections:
        lines += ["", f"## {title}", "", text.strip()]
    lines += ["", "## Every measured setting (means over images)", ""] + rd_points_table(summary) + [""]
    write_atomically(path, "\n".join(lines))
    return path
