"""The evaluation's table outputs: per-image results, per-setting means, BD-rates.

Every file is written to a temporary name and renamed into place, so an
interrupted run never leaves a half-written CSV or JSON behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

from ldcodec.eval.bd_rate import METHODS, bd_rate, lpips_quality, overlap

RESULT_FIELDS = ("codec", "setting", "image", "width", "height", "bytes", "bpp",
                 "psnr", "ms_ssim", "lpips", "encode_s", "decode_s")
MEAN_FIELDS = ("bytes", "bpp", "psnr", "ms_ssim", "lpips", "encode_s", "decode_s")
BD_RATE_FIELDS = ("codec", "anchor", "metric", "quality_axis", "overlap_low", "overlap_high",
                  *(f"bd_rate_{method}_pct" for method in METHODS))
BD_RATE_ANCHORS = ("jpeg", "webp", "hevc")


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(round(value, 6))
    return str(value)


def _csv_text(fields, rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    writer.writerows([_format(row.get(field, "")) for field in fields] for row in rows)
    return buffer.getvalue()


def write_results_csv(path: Path, rows: list[dict]) -> None:
    """One row per (codec, setting, image) with the columns of :data:`RESULT_FIELDS`."""
    write_atomically(path, _csv_text(RESULT_FIELDS, rows))


def _mean(values) -> float:
    with warnings.catch_warnings():  # all-NaN columns (e.g. --no-lpips) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.asarray(values, dtype=np.float64))) if len(values) else math.nan


def summarize(rows: list[dict]) -> dict:
    """Means over images per codec and setting: ``{codec: {setting: {field: mean, "images": n}}}``.

    Codecs and settings keep the order they first appear in ``rows``. Metrics
    undefined for an image (NaN) are left out of its mean.
    """
    groups: dict[str, dict[str, list[dict]]] = {}
    for row in rows:
        groups.setdefault(row["codec"], {}).setdefault(row["setting"], []).append(row)
    return {
        codec: {setting: {"images": len(group), **{f: _mean([r[f] for r in group]) for f in MEAN_FIELDS}}
                for setting, group in settings.items()}
        for codec, settings in groups.items()
    }


def rd_curves(summary: dict, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per codec: mean bpp and mean ``metric`` of each setting, sorted by bpp, NaNs dropped."""
    curves = {}
    for codec, settings in summary.items():
        points = sorted((s["bpp"], s[metric]) for s in settings.values()
                        if np.isfinite(s["bpp"]) and np.isfinite(s[metric]))
        if points:
            curves[codec] = (np.array([p[0] for p in points]), np.array([p[1] for p in points]))
    return curves


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null means "not measured" (or inf PSNR: lossless)
    return value


def write_summary_json(path: Path, summary: dict, info: dict) -> None:
    """``summary.json``: ``info`` (inputs, versions, skipped codecs) and the per-setting means."""
    write_atomically(path, json.dumps(_json_safe({**info, "codecs": summary}), indent=2) + "\n")


def bd_rate_table(summary: dict, anchors=BD_RATE_ANCHORS) -> list[dict]:
    """BD-rate rows of every codec against each anchor codec present, on PSNR and on LPIPS."""
    axes = {"psnr": ("psnr_db", lambda v: v), "lpips": ("-10log10(lpips)", lpips_quality)}
    rows = []
    for metric, (axis_name, to_quality) in axes.items():
        curves = rd_curves(summary, metric)
        for anchor in anchors:
            if anchor not in curves:
                continue
            anchor_rate, anchor_value = curves[anchor]
            for codec, (rate, value) in curves.items():
                if codec == anchor:
                    continue
                low, high = overlap(to_quality(anchor_value), to_quality(value))
                rows.append({
                    "codec": codec, "anchor": anchor, "metric": metric, "quality_axis": axis_name,
                    "overlap_low": low, "overlap_high": high,
                    **{f"bd_rate_{method}_pct": bd_rate(anchor_rate, to_quality(anchor_value), rate,
                                                         to_quality(value), method=method) for method in METHODS},
                })
    return rows


def write_bd_rate_csv(path: Path, rows: list[dict]) -> None:
    """``bd_rate.csv`` with the columns of :data:`BD_RATE_FIELDS`."""
    write_atomically(path, _csv_text(BD_RATE_FIELDS, rows))
