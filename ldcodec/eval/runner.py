"""The evaluation sweep: every codec at every setting on every image, then the reports.

Classical codecs can run in a process pool (``jobs > 1``), each task encoding,
decoding and measuring PSNR/MS-SSIM in the worker; ldcodec runs in the main
process (one model load), and LPIPS is computed in the main process for all
codecs (one AlexNet). Outputs go to ``config.out``; see ``docs/evaluation.md``.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ldcodec.errors import LdcodecError
from ldcodec.eval import reports
from ldcodec.eval.baselines import CODEC_NAMES, LdcodecCodec, make_codecs, model_curve_name
from ldcodec.eval.markdown_report import write_markdown_report
from ldcodec.eval.crops import ClosestToTarget, save_side_by_side
from ldcodec.eval.metrics import bpp, ms_ssim, psnr

#: A sweep report in the results folder that the markdown report takes in as a section.
DIFFUSION_SWEEP_REPORT = "diffusion-sweep.md"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CROP_CODECS = ("ldcodec", "hevc", "jpeg")  # ldcodec stands for all its step variants


class EvalInputError(LdcodecError):
    """The evaluation cannot start: no images, no runnable codec, bad option."""


class EvalCodecError(LdcodecError):
    """A codec failed on one image/setting during the sweep."""


@dataclass
class EvalConfig:
    """What to evaluate and where to write it (the ``ldcodec eval`` options)."""

    image_dir: Path
    out: Path = Path("results")
    codecs: tuple[str, ...] = CODEC_NAMES
    points: int = 10
    jobs: int = 1
    anchors: Path | None = None
    jpeg_444: bool = False
    steps: tuple[int, ...] = (0,)
    lpips: bool = True
    limit: int | None = None
    #: Evaluate the held-out split of a training folder (see ``find_images``).
    held_out: bool = False
    crop_bpp: float = 0.15
    crop_size: int = 256
    #: Other installed models to measure beside the default one (curves ``ldcodec-<model>``, steps 0),
    #: also used as BD-rate anchors.
    compare_models: tuple[str, ...] = ()
    #: Earlier output folder whose classical-codec rows may be reused (:mod:`ldcodec.eval.reuse`).
    reuse: Path | None = None
    #: Markdown report path (default OUT/results.md) and the command line quoted in it.
    report: Path | None = None
    command: str = ""


@dataclass
class EvalOutputs:
    """What a run measured and the files it wrote."""

    rows: list[dict]
    summary: dict
    bd_rates: list[dict]
    skipped: list[str]
    files: list[Path] = field(default_factory=list)


@dataclass
class Measurement:
    row: dict
    decoded: np.ndarray
    order: tuple[int, int, int]


def find_images(directory: str | Path, limit: int | None = None, held_out: bool = False) -> list[Path]:
    """The image files directly in ``directory``, sorted by name, at most ``limit``.

    With ``held_out``, ``directory`` is a training folder and the images are its
    held-out split (searched recursively), the files ``ldcodec train`` never sees.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EvalInputError(f"{directory} is not a directory")
    if held_out:
        from ldcodec.train.data import split_images

        images = sorted(split_images(directory)[1], key=lambda p: p.name)
    else:
        images = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise EvalInputError(f"no {'held-out ' if held_out else ''}images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
    return images[:limit] if limit else images


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as an H×W×3 uint8 RGB array (writable)."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)


def measure(codec, setting: dict, image_path: Path, order: tuple[int, int, int]) -> Measurement:
    """Encode and decode one image at one setting; time both; PSNR and MS-SSIM (LPIPS left NaN)."""
    original = load_rgb(image_path)
    label = codec.label(setting)
    try:
        start = time.perf_counter()
        data = codec.encode(original, setting)
        encoded = time.perf_counter()
        decoded = codec.decode(data)
        decoded_at = time.perf_counter()
    except Exception as exc:
        raise EvalCodecError(f"{codec.name} {label} failed on {image_path.name}: {exc}") from exc
    if decoded.shape != original.shape:
        raise EvalCodecError(f"{codec.name} {label} decoded {image_path.name} to {decoded.shape}, "
                             f"expected {original.shape}")
    height, width = original.shape[:2]
    row = {
        "codec": codec.name, "setting": label, "image": image_path.name, "width": width, "height": height,
        "bytes": len(data), "bpp": bpp(len(data), width, height), "psnr": psnr(original, decoded),
        "ms_ssim": ms_ssim(original, decoded), "lpips": math.nan,
        "encode_s": encoded - start, "decode_s": decoded_at - encoded,
    }
    return Measurement(row, decoded, order)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _in_pool(tasks: list, jobs: int):
    """Yield measurements of ``tasks`` from a process pool, keeping few results in flight."""
    context = multiprocessing.get_context("spawn")  # fork after torch started threads can deadlock
    executor = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker)
    queue, pending = deque(tasks), set()
    try:
        while queue or pending:
            while queue and len(pending) < 2 * jobs:
                pending.add(executor.submit(measure, *queue.popleft()))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        executor.shutdown(wait=not pending, cancel_futures=True)


def _versions() -> dict:
    import PIL
    from PIL import features

    import ldcodec

    versions = {"ldcodec": ldcodec.__version__, "pillow": PIL.__version__,
                **{lib: features.version(lib) for lib in ("jpg", "webp", "avif")}}
    try:
        import pillow_heif

        versions["pillow_heif"] = pillow_heif.__version__
        versions["libheif"] = pillow_heif.libheif_info().get("libheif")
        versions["hevc_encoder"] = pillow_heif.libheif_info().get("HEIF")
    except ImportError:
        pass
    return versions


def _crop_codecs(codec_names: list[str]) -> list[str]:
    chosen = [n for n in codec_names if n.startswith("ldcodec")]
    return chosen + [n for n in CROP_CODECS[1:] if n in codec_names]


def run_evaluation(config: EvalConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                   progress: bool = True) -> EvalOutputs:
    """Run the sweep described by ``config`` and write every output under ``config.out``.

    On Ctrl-C, the measurements made so far are written to ``results.csv``
    before the KeyboardInterrupt propagates.
    """
    from tqdm import tqdm

    images = find_images(config.image_dir, config.limit, config.held_out)
    codecs, skipped = make_codecs(list(config.codecs), jpeg_444=config.jpeg_444, steps=config.steps,
                                  compare_models=config.compare_models)
    for message in skipped:
        log(f"skipping {message}")
    if not codecs:
        raise EvalInputError("none of the requested codecs can run on this machine")
    lpips_metric = None
    if config.lpips:
        from ldcodec.eval.metrics import LpipsMetric

        lpips_metric = LpipsMetric()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    tasks = [(codec, setting, path, (c, s, i))
             for i, path in enumerate(images)
             for c, codec in enumerate(codecs)
             for s, setting in enumerate(codec.settings(config.points))]
    reused: list = []
    if config.reuse is not None:
        tasks, reused = _reuse(config, tasks, [c.name for c in codecs], log)
    in_process = [t for t in tasks if config.jobs == 1 or isinstance(t[0], LdcodecCodec)]
    pooled = [t for t in tasks if config.jobs > 1 and not isinstance(t[0], LdcodecCodec)]
    originals = lru_cache(maxsize=4 * config.jobs + 4)(load_rgb)
    crops = ClosestToTarget(config.crop_bpp, config.crop_size)
    measured: list[Measurement] = [Measurement(dict(row), None, task[3]) for task, row in reused]

    def rows() -> list[dict]:
        return [m.row for m in sorted(measured, key=lambda m: m.order)]

    try:
        with tqdm(total=len(tasks) + len(reused), initial=len(reused), desc="eval", unit="code", disable=not progress, dynamic_ncols=True) as bar:
            sources = [(measure(*t) for t in in_process)]
            if pooled:
                sources.append(_in_pool(pooled, config.jobs))
            for source in sources:
                for m in source:
                    if lpips_metric is not None:
                        m.row["lpips"] = lpips_metric(originals(images[m.order[2]]), m.decoded)
                    crops.offer(m.row["image"], m.row["codec"], m.row["bpp"], m.row["psnr"], m.row["setting"],
                                m.decoded)
                    m.decoded = None
                    measured.append(m)
                    bar.set_postfix_str(f"{m.row['codec']} {m.row['setting']}", refresh=False)
                    bar.update()
    except KeyboardInterrupt:
        reports.write_results_csv(out / "results.csv", rows())
        log(f"interrupted: {len(measured)} of {len(tasks)} measurements written to {out / 'results.csv'}")
        raise

    outputs = EvalOutputs(rows=rows(), summary={}, bd_rates=[], skipped=skipped)
    outputs.summary = reports.summarize(outputs.rows)
    reports.write_results_csv(out / "results.csv", outputs.rows)
    info = {"image_dir": str(config.image_dir), "images": len(images), "points": config.points,
            "reused": {"from": str(config.reuse), "rows": len(reused)} if config.reuse is not None else None,
            "crop_bpp": config.crop_bpp, "lpips": "alex v0.1" if config.lpips else None,
            "skipped": skipped, "versions": _versions()}
    reports.write_summary_json(out / "summary.json", outputs.summary, info)
    outputs.files += [out / "results.csv", out / "summary.json"]

    outputs.bd_rates = reports.bd_rate_table(
        outputs.summary, reports.BD_RATE_ANCHORS + tuple(model_curve_name(m) for m in config.compare_models))
    reports.write_bd_rate_csv(out / "bd_rate.csv", outputs.bd_rates)
    outputs.files.append(out / "bd_rate.csv")

    figures = _write_plots(out, outputs.summary, config.anchors)
    crop_files = _write_crops(out / "crops", images, crops, [c.name for c in codecs], originals, config.crop_size)
    outputs.files += figures + crop_files
    report = Path(config.report) if config.report else out / "results.md"
    sweep = out / DIFFUSION_SWEEP_REPORT  # written by benchmarks/bench_diffusion_sweep.py
    extra = [("Diffusion decoder sweep (same streams, every decoder)", sweep.read_text())] if sweep.is_file() else []
    outputs.files.append(write_markdown_report(report, outputs.summary, outputs.bd_rates, info, figures,
                                               config.command or "ldcodec eval ...", crops=crop_files,
                                               extra_sections=extra))
    return outputs


def _reuse(config: EvalConfig, tasks: list, codec_names: list[str], log) -> tuple[list, list]:
    """(tasks still to measure, (task, earlier row) pairs) for ``--reuse``."""
    from ldcodec.eval.reuse import load_reusable_rows, split_reused

    rows, message = load_reusable_rows(config.reuse, _versions())
    log(message)
    if config.lpips:  # rows measured without LPIPS cannot stand in for rows with it
        rows = {k: r for k, r in rows.items() if not math.isnan(r["lpips"])}

    def image_size(path: Path) -> tuple[int, int]:
        with Image.open(path) as image:
            return image.height, image.width

    crop_names = tuple(_crop_codecs(codec_names) or codec_names)
    measure_tasks, reused = split_reused(tasks, rows, crop_names, config.crop_bpp, image_size)
    log(f"--reuse: {len(reused)} measurements reused, {len(measure_tasks)} to measure")
    return measure_tasks, reused


def _write_plots(out: Path, summary: dict, anchors: Path | None) -> list[Path]:
    from ldcodec.eval.rd_plots import plot_rd, read_published_points

    published = read_published_points(anchors) if anchors else None
    written = []
    for metric, filename in (("psnr", "rd_psnr.png"), ("ms_ssim", "rd_msssim.png"), ("lpips", "rd_lpips.png")):
        curves = reports.rd_curves(summary, metric)
        if curves:
            plot_rd(curves, metric, out / filename, published=published)
            written.append(out / filename)
    return written


def _write_crops(folder: Path, images: list[Path], crops: ClosestToTarget, codec_names: list[str],
                 originals: Callable[[Path], np.ndarray], size: int) -> list[Path]:
    chosen = _crop_codecs(codec_names) or codec_names
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        panels = crops.panels(path.name, chosen)
        if panels:
            target = folder / f"{path.stem}.png"
            save_side_by_side(target, originals(path), panels, size)
            written.append(target)
    return written
