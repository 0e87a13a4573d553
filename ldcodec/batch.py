"""Encoding and decoding many files at once, in worker processes.

``ldcodec encode DIR_OR_FILES... -o OUTDIR`` and ``ldcodec decode`` likewise are thin
wrappers over :func:`expand_inputs`, :func:`plan_outputs` and :func:`run_batch`:

* a folder stands for its image files (``encode``: the extensions in
  :data:`IMAGE_EXTENSIONS`; ``decode``: ``.ldc``), not recursively, sorted by name;
  other files in it are skipped and counted; files named explicitly are always tried;
* outputs are ``OUTDIR/<stem>.ldc`` (encode) or ``OUTDIR/<stem>.<format>`` (decode),
  written atomically; an output that would overwrite an input, or that two inputs
  would both write, is a failure of that file;
* ``jobs`` worker processes (``spawn``: safe with torch and CUDA), each loading the
  model once, with ``threads`` torch threads each (default: cores // jobs, so the
  workers do not oversubscribe the CPU); ``jobs=1`` runs in the calling process;
* one file failing (unreadable, not an image, corrupt stream...) is reported and the
  others still complete; a worker that dies takes only its unfinished files with it.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ldcodec.errors import LdcodecError, NoDiffusionDecoderError

#: What a folder expands to for ``encode`` (the common formats Pillow reads).
IMAGE_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi", ".jp2", ".j2k", ".avif", ".psd",
})
#: What a folder expands to for ``decode``.
STREAM_EXTENSIONS = frozenset({".ldc"})

TASKS = ("encode", "decode")


class BatchError(LdcodecError):
    """A batch cannot start or go on (bad output folder, a model that does not load...)."""


def available_cores() -> int:
    """CPU cores this process may run on (affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(jobs: int) -> int:
    """Torch threads per worker so that ``jobs * threads <= cores``."""
    return max(1, available_cores() // max(1, jobs))


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``auto`` (CUDA when available) to a torch device name."""
    device = (device or "cpu").lower()
    if device == "cpu":
        return "cpu"
    if device not in ("cuda", "auto") and not device.startswith("cuda:"):
        raise LdcodecError(f"unknown device {device!r}; use cpu, cuda or auto")
    import torch

    if torch.cuda.is_available():
        return "cuda" if device == "auto" else device
    if device == "auto":
        return "cpu"
    raise LdcodecError(f"device {device}: CUDA is not available on this machine")


@dataclass(frozen=True)
class CodecOptions:
    """How each worker builds its codec (picklable: sent to the worker processes)."""

    model: str | None = None
    device: str = "cpu"
    precision: str = "auto"
    max_pixels: int | None = None
    threads: int | None = None

    def load(self):
        import torch

        import ldcodec

        if self.threads:
            torch.set_num_threads(self.threads)
        kwargs = {"precision": self.precision, "device": self.device}
        if self.max_pixels:
            kwargs["max_pixels"] = self.max_pixels
        if self.model:
            kwargs["model"] = str(self.model)
        return ldcodec.load(**kwargs)


@dataclass(frozen=True)
class BatchItem:
    source: Path
    target: Path


@dataclass
class ItemResult:
    """The outcome of one file: ``ok`` with ``info`` (bytes, bpp, size...), or ``error``."""

    source: Path
    target: Path | None
    ok: bool
    error: str = ""
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    fatal: bool = False  #: no file can succeed (the codec did not load...): the batch stops
    started_at: float = 0.0  #: ``time.time()`` when the worker began this file (its codec already loaded)
    finished_at: float = 0.0

    def to_dict(self) -> dict:
        return {"source": str(self.source), "target": None if self.target is None else str(self.target),
                "ok": self.ok, "error": self.error, "seconds": round(self.seconds, 6), **self.info}


@dataclass
class BatchReport:
    task: str
    results: list[ItemResult]
    skipped: list[Path]
    wall_seconds: float
    jobs: int
    threads: int | None

    @property
    def succeeded(self) -> list[ItemResult]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.results if not r.ok]

    @property
    def images_per_second(self) -> float:
        """Files done per second of the whole call (worker start-up and model loading included)."""
        n = len(self.succeeded)
        return n / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    @property
    def steady_images_per_second(self) -> float:
        """Files done per second from the first file started to the last one finished (start-up excluded)."""
        timed = [r for r in self.results if r.started_at > 0]
        if not timed:
            return float("nan")
        span = max(r.finished_at for r in timed) - min(r.started_at for r in timed)
        return len([r for r in timed if r.ok]) / span if span > 0 else float("nan")


# Planning -----------------------------------------------------------------------------------
def expand_inputs(paths: list[str | Path], task: str) -> tuple[list[Path], list[Path]]:
    """The files to process and the files skipped (wrong extension in a folder).

    Folders expand to their files with the task's extensions (not recursively, sorted by
    name); paths that are not folders are kept as given (a missing one fails later, on
    its own line). Repeated paths are kept once.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}")
    extensions = IMAGE_EXTENSIONS if task == "encode" else STREAM_EXTENSIONS
    files: list[Path] = []
    skipped: list[Path] = []
    for raw in paths:
        if str(raw) == "-":
            raise BatchError("- (stdin) cannot be combined with other inputs or an output folder")
        path = Path(raw)
        if path.is_dir():
            try:
                entries = sorted(path.iterdir(), key=lambda p: p.name)
            except OSError as exc:
                raise BatchError(f"{path}: cannot list the folder ({exc.strerror})") from None
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                (files if entry.suffix.lower() in extensions else skipped).append(entry)
        else:
            files.append(path)
    seen: set = set()
    unique = []
    for f in files:
        key = os.path.abspath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, skipped


def output_suffix(task: str, fmt: str | None = None) -> str:
    if task == "encode":
        return ".ldc"
    from PIL import Image

    ext = "." + (fmt or "png").lower().lstrip(".")
    if ext not in Image.registered_extensions():
        raise BatchError(f"unknown image format {fmt!r} (try png, bmp, tif, webp)")
    return ext


def plan_outputs(files: list[Path], out_dir: Path, suffix: str) -> tuple[list[BatchItem], list[ItemResult]]:
    """``OUTDIR/<stem><suffix>`` for each file; clashes and overwrites of inputs are failures."""
    inputs = {os.path.realpath(f) for f in files}
    planned: dict[str, Path] = {}
    items, refused = [], []
    for source in files:
        target = out_dir / (source.stem + suffix)
        key = os.path.realpath(target)
        if key in inputs:
            refused.append(ItemResult(source, target, ok=False,
                                      error=f"{source}: refusing to overwrite the input file {target}"))
        elif key in planned:
            refused.append(ItemResult(source, target, ok=False,
                                      error=f"{source}: {planned[key]} already writes {target}"))
        else:
            planned[key] = source
            items.append(BatchItem(source, target))
    return items, refused


def prepare_output_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BatchError(f"{out}: not a folder (with several inputs or a folder, -o names the output folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchError(f"{out}: cannot create the folder ({exc.strerror})") from None
    return out


# Work in one process --------------------------------------------------------------------
_STATE: dict = {}


def _init_worker(options: CodecOptions) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        _STATE["codec"] = options.load()
        if options.model is None:  # decode: each stream with the installed model it names
            from ldcodec.codec.stream_models import StreamCodecs

            _STATE["streams"] = StreamCodecs(lambda named: CodecOptions(**{**options.__dict__, "model": named}).load(),
                                             loaded={_STATE["codec"].model_id: _STATE["codec"]})
    except LdcodecError as exc:
        _STATE["error"] = f"cannot load the model: {exc}"
    except Exception as exc:  # noqa: BLE001 - reported as one line by the parent
        _STATE["error"] = f"cannot load the model: {type(exc).__name__}: {exc}"


def _with_path(source: Path, message: str) -> str:
    return message if message.startswith(str(source)) else f"{source}: {message}"


def _encode_one(codec, item: BatchItem, params: dict) -> dict:
    from ldcodec.cli.files import write_output
    from ldcodec.codec.image_io import open_image

    image = open_image(item.source)
    blob = codec.encode(image, quality=params.get("quality"), bpp=params.get("bpp"))
    write_output(str(item.target), blob)
    w, h = image.size
    return {"bytes": len(blob), "bpp": 8.0 * len(blob) / (w * h), "width": w, "height": h}


def _decode_one(codec, item: BatchItem, params: dict) -> dict:
    from ldcodec.cli.files import image_bytes, read_input_bytes, write_output

    blob = read_input_bytes(str(item.source))
    if "streams" in _STATE:
        codec = _STATE["streams"].for_stream(blob)
    image = codec.decode(blob, steps=params.get("steps", 0), seed=params.get("seed", 0),
                         sampler=params.get("sampler", "dpmpp"), start=params.get("start", "matched"))
    data = image_bytes(image, str(item.target))
    write_output(str(item.target), data)
    return {"bytes": len(data), "width": image.size[0], "height": image.size[1], "mode": image.mode}


def _process(task: str, item: BatchItem, params: dict) -> ItemResult:
    if "error" in _STATE:
        return ItemResult(item.source, item.target, ok=False, error=_STATE["error"], fatal=True)
    started_at, start = time.time(), time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            info = (_encode_one if task == "encode" else _decode_one)(_STATE["codec"], item, params)
            result = ItemResult(item.source, item.target, ok=True, info=info)
        except NoDiffusionDecoderError as exc:  # the same for every file: stop at the first
            result = ItemResult(item.source, item.target, ok=False, error=str(exc), fatal=True)
        except LdcodecError as exc:
            result = ItemResult(item.source, item.target, ok=False, error=_with_path(item.source, str(exc)))
        except MemoryError:
            result = ItemResult(item.source, item.target, ok=False, error=f"{item.source}: out of memory")
        except Exception as exc:  # noqa: BLE001 - one file's failure must not stop the batch
            result = ItemResult(item.source, item.target, ok=False,
                                error=f"{item.source}: {type(exc).__name__}: {exc}")
    result.seconds = time.perf_counter() - start
    result.started_at, result.finished_at = started_at, time.time()
    result.warnings = [_with_path(item.source, str(w.message)) for w in caught]
    return result


# Running ---------------------------------------------------------------------------------
def run_batch(task: str, items: list[BatchItem], options: CodecOptions, params: dict | None = None,
              jobs: int = 1, refused: list[ItemResult] | None = None, skipped: list[Path] | None = None,
              progress: bool | None = None, log: Callable[[str], None] | None = None) -> BatchReport:
    """Encode or decode ``items`` with ``jobs`` worker processes.

    ``params``: ``quality``/``bpp`` (encode) or ``steps``/``seed``/``sampler``/``start`` (decode). ``log``
    gets one line per failure and per warning as they happen (default: stderr, above
    the progress bar). ``progress``: a tqdm bar on stderr (``None``: only on a
    terminal). Raises :class:`BatchError` if the model cannot be loaded or cannot do what
    every file asks (diffusion steps without a diffusion decoder).
    """
    from tqdm import tqdm

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}")
    params = dict(params or {})
    jobs = max(1, min(jobs, len(items) or 1))
    if options.threads is None and jobs > 1:
        options = CodecOptions(**{**options.__dict__, "threads": default_threads(jobs)})
    results: dict[int, ItemResult] = {}
    refused = list(refused or [])
    start = time.perf_counter()
    disable = None if progress is None else not progress  # None: tqdm shows it only on a terminal
    with tqdm(total=len(items) + len(refused), desc=task, unit="img", file=sys.stderr, disable=disable,
              dynamic_ncols=True, leave=False) as bar:
        def say(line: str) -> None:
            if log is not None:
                log(line)
            else:
                bar.write(line, file=sys.stderr)

        def record(index: int, result: ItemResult) -> None:
            results[index] = result
            for w in result.warnings:
                say(f"ldcodec: warning: {w}")
            if not result.ok:
                say(f"ldcodec: error: {result.error}")
            bar.update()

        for r in refused:
            say(f"ldcodec: error: {r.error}")
            bar.update()
        if jobs == 1:
            _STATE.clear()
            _init_worker(options)
            try:
                for i, item in enumerate(items):
                    result = _process(task, item, params)
                    if result.fatal:
                        raise BatchError(result.error)
                    record(i, result)
            finally:
                _STATE.clear()
        else:
            _run_pool(task, items, options, params, jobs, record)
    report = BatchReport(task=task, results=refused + [results[i] for i in sorted(results)],
                         skipped=list(skipped or []), wall_seconds=time.perf_counter() - start, jobs=jobs,
                         threads=options.threads)
    return report


def _run_pool(task, items, options, params, jobs, record) -> None:
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(options,))
    futures = {}
    try:
        futures = {pool.submit(_process, task, item, params): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                result = future.result()
            except BrokenProcessPool:
                result = ItemResult(items[i].source, items[i].target, ok=False,
                                    error=f"{items[i].source}: a worker process died (out of memory?)")
            except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be unpickled
                result = ItemResult(items[i].source, items[i].target, ok=False,
                                    error=f"{items[i].source}: {type(exc).__name__}: {exc}")
            if result.fatal:
                raise BatchError(result.error)
            record(i, result)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def summary_line(report: BatchReport, out_dir: Path) -> str:
    """``encode: 3 of 4 files to out/ in 2.1 s (1.43 images/s, 2 jobs × 1 thread); 1 failed; ...``"""
    n_ok, n_all = len(report.succeeded), len(report.results)
    threads = f" × {report.threads} thread{'s' if report.threads != 1 else ''}" if report.threads else ""
    parts = [f"{report.task}: {n_ok} of {n_all} file{'s' if n_all != 1 else ''} to {out_dir} in "
             f"{report.wall_seconds:.2f} s ({report.images_per_second:.2f} images/s, "
             f"{report.jobs} job{'s' if report.jobs != 1 else ''}{threads})"]
    if report.failed:
        parts.append(f"{len(report.failed)} failed")
    if report.skipped:
        what = "an image extension" if report.task == "encode" else "the .ldc extension"
        names = ", ".join(p.name for p in report.skipped[:3]) + (", ..." if len(report.skipped) > 3 else "")
        parts.append(f"{len(report.skipped)} skipped without {what} ({names})")
    return "; ".join(parts)
