"""Rate–distortion plots (matplotlib, headless), optionally with published points overlaid.

The published points come from a CSV with the columns
``codec,source,bpp,psnr_rgb,ms_ssim_rgb,lpips_alex`` (empty where a source
does not report a metric), e.g. ``../shared/anchors/kodak_rd_published.csv``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

# metric -> (anchor CSV column, axis label, transform applied to values before plotting)
PLOTTED_METRICS = {
    "psnr": ("psnr_rgb", "PSNR RGB (dB)", lambda v: v),
    "ms_ssim": ("ms_ssim_rgb", "MS-SSIM (dB) = −10·log10(1 − MS-SSIM)",
                lambda v: -10.0 * np.log10(np.maximum(1.0 - np.asarray(v, dtype=np.float64), 1e-10))),
    "lpips": ("lpips_alex", "LPIPS AlexNet v0.1 (lower is better)", lambda v: v),
}


def read_published_points(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Published RD points grouped by curve ("codec [source]"): ``{curve: {"bpp": ..., metric: ...}}``.

    Missing values are NaN.
    """
    curves: dict[str, dict[str, list[float]]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            name = f"{row['codec']} [{row['source'].split('/')[0].split(' ')[0]}]"
            curve = curves.setdefault(name, {"bpp": [], **{m: [] for m in PLOTTED_METRICS}})
            curve["bpp"].append(float(row["bpp"]))
            for metric, (column, _, _) in PLOTTED_METRICS.items():
                text = (row.get(column) or "").strip()
                curve[metric].append(float(text) if text else math.nan)
    return {name: {k: np.asarray(v, dtype=np.float64) for k, v in curve.items()} for name, curve in curves.items()}


def plot_rd(curves: dict[str, tuple[np.ndarray, np.ndarray]], metric: str, path: str | Path,
            published: dict[str, dict[str, np.ndarray]] | None = None, title: str = "") -> None:
    """Plot measured ``curves`` ({codec: (bpp, values)}) of ``metric`` to ``path`` (PNG).

    Published curves are drawn dashed, only within the measured bpp range so
    they do not stretch the axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, label, transform = PLOTTED_METRICS[metric]
    figure, axes = plt.subplots(figsize=(11, 6), dpi=110)
    max_bpp = max((float(np.max(bpp)) for bpp, _ in curves.values()), default=1.0) * 1.1
    measured_colors = plt.get_cmap("tab10").colors
    for index, (codec, (bpp, values)) in enumerate(curves.items()):
        axes.plot(bpp, transform(values), marker="o", markersize=4, linewidth=2,
                  color=measured_colors[index % len(measured_colors)], label=codec, zorder=3)
    published_colors = plt.get_cmap("Dark2").colors + plt.get_cmap("Set1").colors
    published_markers = "x+*^vsdp"
    for index, (name, points) in enumerate((published or {}).items()):
        keep = np.isfinite(points[metric]) & (points["bpp"] <= max_bpp)
        if not keep.any():
            continue
        order = np.argsort(points["bpp"][keep])
        axes.plot(points["bpp"][keep][order], transform(points[metric][keep][order]), linestyle="--",
                  marker=published_markers[index % len(published_markers)], markersize=4, linewidth=0.9, alpha=0.8,
                  color=published_colors[index % len(published_colors)], label=f"{name} (published)")
    axes.set_xlim(0, max_bpp)
    axes.set_xlabel("bits per pixel (whole file)")
    axes.set_ylabel(label)
    axes.set_title(title or f"Rate–distortion: {metric}")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.tight_layout()
    partial = Path(path).with_name(f".{Path(path).name}.partial.png")
    figure.savefig(partial)
    plt.close(figure)
    partial.replace(path)
