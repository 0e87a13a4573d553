"""``ldcodec bench``: thin wrapper over :mod:`ldcodec.bench` (docs/performance.md)."""

from __future__ import annotations

import json
import shlex
import sys

import click

from ldcodec.codec.precision import PRECISIONS
from ldcodec.errors import LdcodecError


def _sizes(ctx, param, value: str):
    from ldcodec.bench import parse_sizes

    try:
        return parse_sizes(value)
    except LdcodecError as exc:
        raise click.BadParameter(str(exc)) from None


def _size(ctx, param, value: str | None):
    from ldcodec.bench import parse_size

    if value is None:
        return None
    try:
        return parse_size(value)
    except LdcodecError as exc:
        raise click.BadParameter(str(exc)) from None


def _int_list(minimum: int):
    def parse(ctx, param, value: str) -> tuple[int, ...]:
        try:
            values = tuple(dict.fromkeys(int(s) for s in value.split(",") if s.strip()))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
        if not values or any(v < minimum for v in values):
            raise click.BadParameter(f"give integers >= {minimum}")
        return values

    return parse


def _default_jobs() -> str:
    from ldcodec.batch import available_cores

    return ",".join(str(j) for j in dict.fromkeys((1, available_cores())))


@click.command("bench")
@click.option("--sizes", default="256x256,768x512,1920x1080,4096x4096", show_default=True, callback=_sizes,
              help="Comma-separated WxH sizes; each is measured in its own fresh process.")
@click.option("--steps", default="0,4", show_default=True, callback=_int_list(0),
              help="Diffusion step counts to decode with (a model without a diffusion decoder: n/a for > 0).")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1, 1000),
              help="Timed runs after one warm-up; median and min are reported.")
@click.option("-q", "--quality", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="ldcodec quality; HEVC and JPEG are matched to the bpp it gives.")
@click.option("--image", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Test image (e.g. a Kodak PNG) instead of the bundled sample, cropped/mirror-tiled to each size.")
@click.option("--model", default=None, help="Model id or .safetensors path [shipped default].")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="Where ldcodec's transforms run (the baselines run on the CPU).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Arithmetic of ldcodec's transforms (auto: bf16 on CUDA and on CPUs with native bf16).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads, and x265/libde265 threads for HEVC [torch's default].")
@click.option("--no-baselines", is_flag=True, help="Skip HEVC and JPEG.")
@click.option("-j", "--jobs", default=None, callback=lambda c, p, v: _int_list(1)(c, p, v or _default_jobs()),
              help="Worker counts for the batch throughput runs [1 and the number of cores].")
@click.option("--throughput-size", default=None, callback=_size, help="Image size of the throughput runs [first of --sizes].")
@click.option("--throughput-images", default=16, show_default=True, type=click.IntRange(0, 100000),
              help="Images per throughput run (0: no throughput runs).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (on stdout) instead of tables.")
def bench_command(sizes, steps, repeat, quality, image, model, device, precision, threads, no_baselines, jobs, throughput_size,
                  throughput_images, as_json):
    """Encode/decode speed and memory of ldcodec, against HEVC 4:4:4 and JPEG on the same image.

    \b
    Per size: encode and decode time (median and min of --repeat runs after a
    warm-up), peak resident memory, bpp; HEVC (x265 via pillow-heif) and JPEG at the
    quality whose bpp is closest to ldcodec's, timed in the same process on the same
    pixels, and the time ratios ldcodec/HEVC. Then batch throughput (images/s) of
    `ldcodec encode DIR -o OUT --jobs N` for each --jobs value.

    \b
    The image: the bundled sample.png (512x384 photo), or --image, centre-cropped or
    mirror-tiled to each size, never resampled. Memory: each size runs in a fresh
    process and its peak RSS (getrusage ru_maxrss) is read after the ldcodec runs,
    before the baselines: interpreter, torch and model included. Exit code 2 if a
    measurement failed (it is reported in its row). Example:

    \b
      ldcodec bench --sizes 768x512,1920x1080 --repeat 5 --json > bench.json
    """
    from ldcodec.bench import BenchConfig, format_report, run_benchmark

    config = BenchConfig(sizes=sizes, steps=steps, repeat=repeat, quality=quality, model=model, device=device,
                         precision=precision, threads=threads, image=image, baselines=not no_baselines, jobs=jobs,
                         throughput_size=throughput_size, throughput_images=throughput_images,
                         command="ldcodec " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    doc = run_benchmark(config, log=lambda message: click.echo(message, err=True))
    click.echo(json.dumps(doc, indent=2) if as_json else format_report(doc))
    if not doc["ok"]:
        sys.exit(2)
