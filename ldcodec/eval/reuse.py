"""Reuse an earlier run's measurements of the classical codecs (``ldcodec eval --reuse DIR``).

JPEG, WebP, AVIF and HEVC give the same bytes for the same image, setting and
library version, so re-measuring them every time ldcodec's weights change only
costs CPU time that training needs. Rows are reused when codec, setting, image
name and size match and the earlier run's library versions (its ``summary.json``)
equal this machine's; ldcodec's own rows are always measured. Timings in reused
rows are the earlier run's. The side-by-side crops still need decoded pixels, so
for the codecs shown in crops the setting closest to the crop rate is measured
again on each image.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ldcodec.eval.reports import RESULT_FIELDS

#: Version keys that do not bear on the classical codecs' output.
IGNORED_VERSIONS = ("ldcodec",)
#: Always measured: ldcodec's curves (any step count), and bpg, whose tool version is not recorded.
NEVER_REUSED = ("ldcodec", "bpg")
_NUMERIC = ("width", "height", "bytes")
_FLOAT = ("bpp", "psnr", "ms_ssim", "lpips", "encode_s", "decode_s")


def _codec_versions(versions: dict) -> dict:
    return {k: v for k, v in versions.items() if k not in IGNORED_VERSIONS}


def load_reusable_rows(folder: Path, versions: dict) -> tuple[dict, str]:
    """(rows keyed by (codec, setting, image), message) from ``folder``'s results.csv and summary.json.

    Returns no rows, and a message saying why, when the files are missing or the versions differ.
    """
    folder = Path(folder)
    results, summary = folder / "results.csv", folder / "summary.json"
    if not results.is_file() or not summary.is_file():
        return {}, f"--reuse {folder}: no results.csv and summary.json there; measuring everything"
    try:
        earlier = json.loads(summary.read_text()).get("versions", {})
    except (OSError, ValueError) as exc:
        return {}, f"--reuse {folder}: unreadable summary.json ({exc}); measuring everything"
    if _codec_versions(earlier) != _codec_versions(versions):
        return {}, (f"--reuse {folder}: library versions differ ({_codec_versions(earlier)} there, "
                    f"{_codec_versions(versions)} here); measuring everything")
    rows = {}
    with open(results, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            if raw.get("codec", "").startswith(NEVER_REUSED) or set(RESULT_FIELDS) - set(raw):
                continue
            row = {k: raw[k] for k in RESULT_FIELDS}
            row.update({k: int(row[k]) for k in _NUMERIC})
            row.update({k: float(row[k]) for k in _FLOAT})
            rows[(row["codec"], row["setting"], row["image"])] = row
    return rows, f"--reuse {folder}: {len(rows)} classical-codec measurements available"


def split_reused(tasks: list, rows: dict, crop_codecs: tuple[str, ...], crop_bpp: float,
                 image_size) -> tuple[list, list]:
    """Split sweep tasks into (tasks to measure, (task, reused row) pairs).

    A task is reused when ``rows`` has its (codec, setting, image) at the same image size.
    For each (image, codec) in ``crop_codecs``, the reused task whose bpp is closest to
    ``crop_bpp`` is measured again instead (its decoded pixels make the crop).
    """
    reused, measure = [], []
    for task in tasks:
        codec, setting, path, _ = task
        row = rows.get((codec.name, codec.label(setting), path.name))
        if row is not None and (row["height"], row["width"]) == image_size(path):
            reused.append((task, row))
        else:
            measure.append(task)
    closest: dict = {}
    for task, row in reused:
        if task[0].name in crop_codecs:
            key = (task[2].name, task[0].name)
            if key not in closest or abs(row["bpp"] - crop_bpp) < abs(closest[key][1]["bpp"] - crop_bpp):
                closest[key] = (task, row)
    again = {id(task) for task, _ in closest.values()}
    return measure + [t for t, _ in reused if id(t) in again], [(t, r) for t, r in reused if id(t) not in again]
