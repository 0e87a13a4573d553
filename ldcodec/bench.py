"""Speed and memory benchmark: ldcodec against HEVC 4:4:4 and JPEG, on the same image, in the same run.

``ldcodec bench`` is a thin wrapper over :func:`run_benchmark` and :func:`format_report`.
What is measured, and how (docs/performance.md has the figures of the reference machine):

* **Test image.** For each size W×H, the bundled ``ldcodec/assets/sample.png``
  (512×384, a photo), or ``--image PATH``, is centre-cropped where it is larger than
  the size and mirror-tiled (``numpy.pad(mode="symmetric")``, no seams) where it is
  smaller; it is never resampled, so the detail per pixel stays that of a photo and
  the rate stays representative. Deterministic: the same size gives the same pixels.
* **One fresh process per size** (``python -m ldcodec.bench --child``): it loads the
  model, makes the image, encodes and decodes once (warm-up), then ``repeat`` more
  times, timing each call; it reports the median and minimum. Peak resident memory
  is ``getrusage(RUSAGE_SELF).ru_maxrss`` of that process read right after the
  ldcodec runs (before any baseline runs), so it is ldcodec's own peak for that size,
  interpreter, torch and model included; ``rss_loaded_mb`` is the peak before the
  first encode (the fixed cost), on CUDA also the peak GPU memory allocated by torch.
* **Baselines, in the same process, on the same pixels, after ldcodec.** HEVC intra
  4:4:4 (x265 through pillow-heif, libheif's defaults: preset slow) at the integer
  quality whose bpp is closest to ldcodec's (bisection; on images over 1.5 Mpixel
  first on a 1024×1024 centre crop, then a few full-size encodes near that quality),
  with x265 and libde265 limited to the same number of threads as torch; JPEG
  (libjpeg via Pillow, 4:2:0, single-threaded) at the Pillow quality whose bpp is
  closest to ldcodec's. The search encodes are not timed; they serve as warm-up.
  Ratios are ldcodec's median time over the baseline's median time.
* **Diffusion steps.** ``steps`` > 0 rows time the diffusion decoder; a model without
  one gets ``n/a (no diffusion decoder)`` for them.
* **Throughput.** :func:`ldcodec.batch.run_batch` (the path ``ldcodec encode DIR -o OUT
  --jobs N`` takes) on ``throughput_images`` PNG files of one size, for each
  ``jobs`` value, in a fresh process: images per second over the whole call
  (worker start-up and model loading included), encode and decode.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ldcodec.errors import LdcodecError

SAMPLE = Path(__file__).resolve().parent / "assets" / "sample.png"
DEFAULT_SIZES = ((256, 256), (768, 512), (1920, 1080), (4096, 4096))
NO_DIFFUSION = "n/a (no diffusion decoder)"
HEVC_QUALITIES = (0, 100)
JPEG_QUALITIES = (1, 95)
SEARCH_CROP_ABOVE = 1_500_000  # pixels: HEVC bpp search starts on a centre crop above this
SEARCH_CROP = 1024


class BenchError(LdcodecError):
    """The benchmark cannot run as asked."""


@dataclass
class BenchConfig:
    """What ``ldcodec bench`` runs (its options)."""

    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    steps: tuple[int, ...] = (0, 4)
    repeat: int = 3
    quality: float = 0.5
    model: str | None = None
    device: str = "cpu"
    precision: str = "auto"
    threads: int | None = None
    image: str | None = None
    baselines: bool = True
    jobs: tuple[int, ...] = (1,)
    throughput_size: tuple[int, int] | None = None  #: default: the first of ``sizes``
    throughput_images: int = 16  #: 0: no throughput measurement
    command: str = ""


# Sizes and the test image -------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """``"768x512"`` → (768, 512)."""
    try:
        w, h = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise BenchError(f"{text!r} is not a size like 768x512") from None
    if not (1 <= w <= 65535 and 1 <= h <= 65535):
        raise BenchError(f"{text}: sides must be 1..65535")
    return w, h


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    sizes = tuple(dict.fromkeys(parse_size(s.strip()) for s in text.split(",") if s.strip()))
    if not sizes:
        raise BenchError("no sizes given")
    return sizes


def size_label(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _fit_axis(arr: np.ndarray, target: int, axis: int) -> np.ndarray:
    n = arr.shape[axis]
    if target <= n:  # centre crop
        start = (n - target) // 2
        return np.take(arr, range(start, start + target), axis=axis)
    before = (target - n) // 2  # the source in the middle, mirrored copies around it
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (before, target - n - before)
    return np.pad(arr, pad, mode="symmetric")


def bench_image(width: int, height: int, source: str | Path | None = None, variant: int = 0) -> np.ndarray:
    """The deterministic H×W×3 uint8 test image (see the module docstring).

    ``variant`` (0–7) first flips/transposes the source, for sets of distinct images.
    """
    from ldcodec.codec.image_io import open_image

    rgb = np.asarray(open_image(source or SAMPLE).convert("RGB"))
    variant %= 8
    if variant & 4:
        rgb = rgb.transpose(1, 0, 2)
    if variant & 2:
        rgb = rgb[::-1]
    if variant & 1:
        rgb = rgb[:, ::-1]
    rgb = _fit_axis(_fit_axis(rgb, height, 0), width, 1)
    return np.ascontiguousarray(rgb)


def describe_image(source: str | Path | None) -> str:
    from PIL import Image

    path = Path(source) if source else SAMPLE
    try:
        with Image.open(path) as im:
            dims = f"{im.size[0]}x{im.size[1]}"
    except OSError:
        dims = "?"
    name = "bundled ldcodec/assets/sample.png" if not source else str(path)
    return f"{name} ({dims}), centre-cropped or mirror-tiled to each size, never resampled"


# Measuring (in the child process) ----------------------------------------------------------
def _maxrss_mb(who=resource.RUSAGE_SELF) -> float:
    peak = resource.getrusage(who).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _timings(runs: list[float]) -> dict:
    return {"median_s": statistics.median(runs), "min_s": min(runs), "runs_s": runs}


def _time_calls(fn, repeat: int) -> tuple[dict, object]:
    runs, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return _timings(runs), out


def closest_quality(bpp_at: Callable[[int], float], target: float, lo: int, hi: int,
                    start: int | None = None) -> int:
    """The integer quality in [lo, hi] whose bpp is closest to ``target``.

    ``bpp_at`` must be (about) non-decreasing in quality; cache it, it is called
    with the same quality more than once. Without ``start``: bisection; with it:
    a walk from ``start`` to the quality where the rate crosses the target.
    """
    if start is None:
        if bpp_at(hi) <= target:
            return hi
        if bpp_at(lo) >= target:
            return lo
        a, b = lo, hi  # bpp(a) < target < bpp(b)
        while b - a > 1:
            m = (a + b) // 2
            if bpp_at(m) >= target:
                b = m
            else:
                a = m
    else:
        q = min(max(start, lo), hi)
        if bpp_at(q) >= target:
            while q > lo and bpp_at(q - 1) >= target:
                q -= 1
            a, b = max(lo, q - 1), q
        else:
            while q < hi and bpp_at(q + 1) < target:
                q += 1
            a, b = q, min(hi, q + 1)
    return min((a, b), key=lambda q: (abs(bpp_at(q) - target), q))


def _matched_baseline(codec, rgb: np.ndarray, target_bpp: float, qualities: tuple[int, int], repeat: int) -> dict:
    from ldcodec.eval.metrics import psnr

    h, w = rgb.shape[:2]
    cache: dict[tuple[int, int], bytes] = {}

    def encoded(q: int, image: np.ndarray) -> bytes:
        key = (q, image.shape[0] * 65536 + image.shape[1])
        if key not in cache:
            cache[key] = codec.encode(image, {"quality": q})
        return cache[key]

    start = None
    if w * h > SEARCH_CROP_ABOVE and min(w, h) > SEARCH_CROP:
        crop = _fit_axis(_fit_axis(rgb, SEARCH_CROP, 0), SEARCH_CROP, 1)
        start = closest_quality(lambda q: 8 * len(encoded(q, crop)) / crop.shape[0] / crop.shape[1],
                                target_bpp, *qualities)
    q = closest_quality(lambda q: 8 * len(encoded(q, rgb)) / (w * h), target_bpp, *qualities, start=start)
    search_encodes = len(cache)
    data = encoded(q, rgb)
    decoded = codec.decode(data)  # warm-up of the decoder (the encoder had the search)
    setting = {"quality": q}
    enc, data = _time_calls(lambda: codec.encode(rgb, setting), repeat)
    dec, decoded = _time_calls(lambda: codec.decode(data), repeat)
    return {"quality": q, "bytes": len(data), "bpp": 8 * len(data) / (w * h), "psnr": psnr(rgb, decoded),
            "encode": enc, "decode": dec, "search_encodes": search_encodes}


def _baselines(rgb: np.ndarray, target_bpp: float, threads: int, repeat: int) -> dict:
    from ldcodec.eval.baselines import CodecUnavailableError, make_codec

    out = {}
    for name, qualities in (("hevc", HEVC_QUALITIES), ("jpeg", JPEG_QUALITIES)):
        try:
            codec = make_codec(name)
            if name == "hevc":
                import pillow_heif

                codec.threads = threads
                pillow_heif.options.DECODE_THREADS = threads
            out[name] = _matched_baseline(codec, rgb, target_bpp, qualities, repeat)
        except CodecUnavailableError as exc:
            out[name] = {"error": f"n/a ({exc})"}
        except Exception as exc:  # noqa: BLE001 - a baseline failing must not lose ldcodec's figures
            out[name] = {"error": f"failed: {type(exc).__name__}: {exc}"}
    return out


def _codec_options(spec: dict):
    """The codec a size or throughput child builds, from its spec (one place for both)."""
    from ldcodec.batch import CodecOptions

    return CodecOptions(model=spec.get("model"), device=spec["device"], precision=spec.get("precision", "auto"),
                        threads=spec.get("threads"))


def _load_codec(spec: dict):
    import torch

    codec = _codec_options(spec).load()
    return codec, torch.get_num_threads()


def measure_size(spec: dict) -> dict:
    """One size, in this process (the child's work): see the module docstring."""
    import torch

    from ldcodec.eval.metrics import psnr

    t_start = time.perf_counter()
    codec, threads = _load_codec(spec)
    device = str(codec.device)
    w, h = spec["width"], spec["height"]
    rgb = bench_image(w, h, spec.get("image"))
    cuda = codec.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_loaded = _maxrss_mb()
    repeat, quality = spec["repeat"], spec["quality"]

    blob = codec.encode(rgb, quality=quality)  # warm-up
    codec.decode(blob)
    enc, blob = _time_calls(lambda: codec.encode(rgb, quality=quality), repeat)
    decodes = []
    for steps in spec["steps"]:
        if steps > 0 and not codec.has_diffusion_decoder:
            decodes.append({"steps": steps, "status": NO_DIFFUSION})
            continue
        if steps > 0:
            codec.decode(blob, steps=steps)  # warm-up of this path
        dec, image = _time_calls(lambda: codec.decode(blob, steps=steps), repeat)
        decodes.append({"steps": steps, "status": "ok", **dec,
                        "psnr": psnr(rgb, np.asarray(image.convert("RGB")))})
    peak = _maxrss_mb()
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    bpp = 8 * len(blob) / (w * h)
    result = {
        "size": size_label((w, h)), "width": w, "height": h, "ok": True,
        "model": codec.model_id, "weights": codec.weights.sha256[:8].hex(), "device": device,
        "precision": codec.precision,
        "gpu": torch.cuda.get_device_name(codec.device) if cuda else None, "threads": threads,
        "ldcodec": {"quality": quality, "bytes": len(blob), "bpp": bpp, "encode": enc, "decode": decodes},
        "memory": {"peak_rss_mb": peak, "rss_loaded_mb": rss_loaded, "gpu_peak_mb": gpu_peak},
    }
    if spec.get("baselines", True):
        result.update(_baselines(rgb, bpp, threads, repeat))
        result["ratios"] = _ratios(result)
    result["seconds"] = time.perf_counter() - t_start
    return result


def _ratios(result: dict) -> dict:
    ratios = {}
    dec0 = next((d for d in result["ldcodec"]["decode"] if d["steps"] == 0 and d["status"] == "ok"), None)
    for name in ("hevc", "jpeg"):
        base = result.get(name, {})
        if "encode" not in base:
            continue
        ratios[f"encode_vs_{name}"] = result["ldcodec"]["encode"]["median_s"] / base["encode"]["median_s"]
        if dec0 is not None:
            ratios[f"decode_vs_{name}"] = dec0["median_s"] / base["decode"]["median_s"]
    return ratios


def _finite(value: float) -> float | None:
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def measure_throughput(spec: dict) -> dict:
    """Batch encode then decode of ``images`` files of one size with ``jobs`` workers, in this process."""
    from PIL import Image

    import torch  # noqa: F401 - imported before the timing, as the ldcodec command has it

    from ldcodec.batch import expand_inputs, plan_outputs, run_batch

    w, h = spec["width"], spec["height"]
    options = _codec_options(spec)
    with tempfile.TemporaryDirectory(prefix="ldcodec-bench-") as tmp:
        src, streams, decoded = Path(tmp, "in"), Path(tmp, "ldc"), Path(tmp, "out")
        for folder in (src, streams, decoded):
            folder.mkdir()
        for k in range(spec["images"]):
            Image.fromarray(bench_image(w, h, spec.get("image"), variant=k)).save(src / f"img{k:04d}.png",
                                                                                compress_level=1)
        out = {"size": size_label((w, h)), "images": spec["images"], "jobs": spec["jobs"], "ok": True}
        for task, folder, target, params in (("encode", src, streams, {"quality": spec["quality"]}),
                                             ("decode", streams, decoded, {"steps": 0})):
            files, _ = expand_inputs([folder], task)
            items, _ = plan_outputs(files, target, ".ldc" if task == "encode" else ".png")
            report = run_batch(task, items, options, params, jobs=spec["jobs"], progress=False, log=lambda m: None)
            if report.failed:
                raise BenchError(f"batch {task} failed: {report.failed[0].error}")
            if report.threads is None:  # one job, in this process: torch's own default
                out["threads"] = torch.get_num_threads()
            else:
                out["threads"] = report.threads
            out[task] = {"wall_s": report.wall_seconds, "images_per_s": _finite(report.images_per_second),
                         "steady_images_per_s": _finite(report.steady_images_per_second),
                         "median_item_s": statistics.median(r.seconds for r in report.results)}
    out["peak_rss_mb"] = _maxrss_mb()
    out["worker_peak_rss_mb"] = _maxrss_mb(resource.RUSAGE_CHILDREN) if spec["jobs"] > 1 else None
    return out


def _child_main(argv: list[str]) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    spec = json.loads(argv[0])
    result = measure_size(spec) if spec["kind"] == "size" else measure_throughput(spec)
    Path(argv[1]).write_text(json.dumps(result))
    return 0


def _run_child(spec: dict) -> dict:
    """Run one measurement in a fresh interpreter; a failure becomes ``{"ok": False, "error": ...}``."""
    with tempfile.TemporaryDirectory(prefix="ldcodec-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        proc = subprocess.run([sys.executable, "-m", "ldcodec.bench", "--child", json.dumps(spec), str(result_path)],
                              capture_output=True, text=True)
        if proc.returncode == 0 and result_path.exists():
            return json.loads(result_path.read_text())
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    if proc.returncode < 0:
        why = f"killed by signal {-proc.returncode}" + (" (out of memory?)" if proc.returncode == -9 else "")
    else:
        why = lines[-1] if lines else f"exit code {proc.returncode}"
    return {"ok": False, "error": why}


# Orchestration -----------------------------------------------------------------------------
def _machine() -> dict:
    from ldcodec.batch import available_cores

    cpu = platform.processor() or platform.machine()
    memory_gb = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
            memory_gb = round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    return {"cpu": cpu, "cores": available_cores(), "memory_gb": memory_gb, "os": platform.platform(),
            "python": platform.python_version()}


def _versions() -> dict:
    import PIL
    from PIL import features

    import ldcodec

    versions = {"ldcodec": ldcodec.__version__, "pillow": PIL.__version__, "libjpeg": features.version("jpg")}
    try:
        from importlib.metadata import version

        versions["torch"] = version("torch")
    except Exception:  # noqa: BLE001
        pass
    try:
        import pillow_heif

        info = pillow_heif.libheif_info()
        versions.update(pillow_heif=pillow_heif.__version__, libheif=info.get("libheif"),
                        hevc_encoder=info.get("HEIF"), hevc_decoder=info.get("decoders", {}).get("libde265"))
    except ImportError:
        pass
    return versions


def run_benchmark(config: BenchConfig, log: Callable[[str], None] = lambda m: None) -> dict:
    """Every size in its own process, then the throughput runs; the JSON document of ``--json``."""
    from ldcodec.batch import resolve_device

    if config.repeat < 1:
        raise BenchError("repeat must be at least 1")
    device = resolve_device(config.device)
    common = {"model": str(config.model) if config.model else None, "device": device,
              "precision": config.precision, "threads": config.threads,
              "image": str(config.image) if config.image else None, "quality": config.quality}
    if config.image:
        bench_image(1, 1, config.image)  # an unreadable --image fails here, once, with a clear message
    doc = {
        "benchmark": "ldcodec bench", "command": config.command, "machine": _machine(), "versions": _versions(),
        "settings": {
            "sizes": [size_label(s) for s in config.sizes], "steps": list(config.steps), "repeat": config.repeat,
            "warmup": 1, "quality": config.quality, "model": common["model"] or "shipped default",
            "device": device, "precision": config.precision, "threads": config.threads,
            "image": describe_image(config.image),
            "timing": "median and min of `repeat` runs after one warm-up, each size in a fresh process",
            "memory": "peak RSS (getrusage ru_maxrss) of that process after the ldcodec runs, before the baselines",
            "hevc": "HEIF/HEVC intra 4:4:4, x265 via pillow-heif (libheif defaults), quality matched to "
                    "ldcodec's bpp, same thread count as torch",
            "jpeg": "libjpeg via Pillow, 4:2:0, quality matched to ldcodec's bpp, single-threaded",
            "baselines": config.baselines,
        },
        "sizes": [], "throughput": [],
    }
    for size in config.sizes:
        log(f"bench: {size_label(size)} ...")
        spec = {"kind": "size", "width": size[0], "height": size[1], "repeat": config.repeat,
                "steps": list(config.steps), "baselines": config.baselines, **common}
        row = _run_child(spec)
        row.setdefault("size", size_label(size))
        doc["sizes"].append(row)
        log(f"bench: {size_label(size)} " + ("done in %.1f s" % row["seconds"] if row.get("ok") else row["error"]))
    if config.throughput_images > 0:
        size = config.throughput_size or config.sizes[0]
        for jobs in config.jobs:
            log(f"bench: throughput, {config.throughput_images} images of {size_label(size)}, {jobs} jobs ...")
            spec = {"kind": "throughput", "width": size[0], "height": size[1], "images": config.throughput_images,
                    "jobs": jobs, **common}
            row = _run_child(spec)
            row.setdefault("size", size_label(size))
            row.setdefault("jobs", jobs)
            row.setdefault("images", config.throughput_images)
            doc["throughput"].append(row)
    doc["ok"] = all(r.get("ok") for r in doc["sizes"] + doc["throughput"])
    return doc


# Text report -------------------------------------------------------------------------------
def _t(seconds: float | None) -> str:
    """A duration with its unit: 12.3 s, 45.6 ms, 789 µs."""
    if seconds is None:
        return "–"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _med_min(t: dict | None) -> str:
    return "–" if not t else f"{_t(t['median_s'])} ({_t(t['min_s'])})"


def _baseline_cells(row: dict, name: str) -> list[str]:
    base = row.get(name)
    if base is None:
        return ["–", "–", "–"]
    if "error" in base:
        return [base["error"], "–", "–"]
    return [f"q{base['quality']}: {base['bpp']:.3f}", _med_min(base["encode"]), _med_min(base["decode"])]


def format_report(doc: dict) -> str:
    """Markdown tables (the format of docs/performance.md) with a header of settings."""
    st, m = doc["settings"], doc["machine"]
    first = next((r for r in doc["sizes"] if r.get("ok")), {})
    lines = [
        f"ldcodec bench: model {first.get('model', st['model'])} (weights {first.get('weights', '?')}), "
        f"device {first.get('device', st['device'])}{' (' + first['gpu'] + ')' if first.get('gpu') else ''}, "
        f"precision {first.get('precision', st.get('precision', '?'))}, "
        f"{first.get('threads', '?')} torch threads, quality {st['quality']}; times: median (min) of "
        f"{st['repeat']} run{'s' if st['repeat'] != 1 else ''} after 1 warm-up",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; python {m['python']}, "
        f"torch {doc['versions'].get('torch', '?')}",
        f"image: {st['image']}",
        f"HEVC: {st['hevc']}; JPEG: {st['jpeg']}",
        "",
        "| size | steps | ldcodec bpp | encode | decode | peak RSS MB (after load) | HEVC q: bpp | HEVC encode "
        "| HEVC decode | JPEG q: bpp | JPEG encode | JPEG decode | encode ×HEVC | decode ×HEVC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc["sizes"]:
        if not row.get("ok"):
            lines.append(f"| {row['size']} | | failed: {row.get('error', '?')} |" + " |" * 11)
            continue
        ld, ratios = row["ldcodec"], row.get("ratios", {})
        for i, dec in enumerate(ld["decode"]):
            ok = dec["status"] == "ok"
            cells = [row["size"], str(dec["steps"])]
            if i == 0:
                mem = f"{row['memory']['peak_rss_mb']:.0f} ({row['memory']['rss_loaded_mb']:.0f})"
                if row["memory"].get("gpu_peak_mb") is not None:
                    mem += f" (GPU {row['memory']['gpu_peak_mb']:.0f})"
                cells += [f"{ld['bpp']:.3f}", _med_min(ld["encode"]), _med_min(dec) if ok else dec["status"], mem]
                cells += _baseline_cells(row, "hevc") + _baseline_cells(row, "jpeg")
                cells += [f"{ratios['encode_vs_hevc']:.2f}" if "encode_vs_hevc" in ratios else "–",
                          f"{ratios['decode_vs_hevc']:.2f}" if ok and "decode_vs_hevc" in ratios else "–"]
            else:  # other step counts: only the decode differs
                cells += ["", "", _med_min(dec) if ok else dec["status"], ""] + [""] * 6
                hevc_dec = row.get("hevc", {}).get("decode")
                cells += ["", f"{dec['median_s'] / hevc_dec['median_s']:.2f}" if ok and hevc_dec else "–"]
            lines.append("| " + " | ".join(cells) + " |")
    if doc["throughput"]:
        lines += ["", "Batch throughput of `ldcodec encode/decode DIR -o OUT --jobs N`, images/s: over the whole "
                      "call (worker start-up and model loading included), and steady (first file started to last "
                      "finished):", "",
                  "| size | images | jobs × threads | encode images/s (steady) | decode images/s (steady) "
                  "| median time per image (enc / dec) | peak RSS MB (largest process) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in doc["throughput"]:
            if not row.get("ok"):
                lines.append(f"| {row['size']} | {row['images']} | {row['jobs']} | failed: {row.get('error', '?')} "
                             "| | | |")
                continue
            worker = row["worker_peak_rss_mb"] if row["worker_peak_rss_mb"] is not None else row["peak_rss_mb"]
            lines.append(f"| {row['size']} | {row['images']} | {row['jobs']} × {row['threads'] or 'default'} | "
                         f"{_rate(row['encode']['images_per_s'])} ({_rate(row['encode']['steady_images_per_s'])}) | "
                         f"{_rate(row['decode']['images_per_s'])} ({_rate(row['decode']['steady_images_per_s'])}) | "
                         f"{_t(row['encode']['median_item_s'])} / {_t(row['decode']['median_item_s'])} | "
                         f"{worker:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.exit(_child_main(sys.argv[2:]))
    print("usage: ldcodec bench --help (python -m ldcodec.bench is for its worker processes)", file=sys.stderr)
    sys.exit(2)
