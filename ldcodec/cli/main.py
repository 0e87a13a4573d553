"""The ``ldcodec`` command line (click). Commands are thin; logic lives in the library."""

from __future__ import annotations

import json
import sys
import time
import warnings

import click

from ldcodec.codec.precision import PRECISIONS

# Deprecation chatter from torch/compressai internals is not for our users.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*onednn.*")

from ldcodec.cli.bench_command import bench_command
from ldcodec.cli.eval_command import eval_command, lpips_weights_command
from ldcodec.cli.files import check_distinct, image_bytes, read_input_bytes, write_output
from ldcodec.cli.store_command import store_group
from ldcodec.cli.train_command import train_command
from ldcodec.cli.train_diffusion_command import train_diffusion_command
from ldcodec.errors import LdcodecError

EXIT_ERROR = 2


class LdcodecGroup(click.Group):
    """Turns every :class:`LdcodecError` into a one-line message and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LdcodecError as exc:
            click.echo(f"ldcodec: error: {exc}", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("ldcodec: interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            click.echo("ldcodec: error: out of memory", err=True)
            sys.exit(EXIT_ERROR)


def _show_warnings_on_stderr() -> None:
    def show(message, category, filename, lineno, file=None, line=None):
        click.echo(f"ldcodec: warning: {message}", err=True)

    warnings.showwarning = show


@click.group(cls=LdcodecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ldcodec")
def cli():
    """ldcodec: learned image compression (VAE + hyperprior, range-coded .ldc streams).

    \b
      ldcodec encode photo.png -o photo.ldc --quality 0.4   (or --bpp 0.25)
      ldcodec decode photo.ldc -o photo.png
      ldcodec info photo.ldc
      ldcodec demo                                          (round trip of a bundled image)
      ldcodec encode photos/ -o streams/ --jobs 4           (many files; decode likewise)
      ldcodec bench --sizes 768x512 --repeat 5              (speed and memory vs HEVC and JPEG)
    """
    _show_warnings_on_stderr()


_model_option = click.option("--model", default=None, help="Model id or .safetensors path [shipped default].")
_threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                               help="CPU threads for the transforms [torch's default; with --jobs: cores // jobs].")
_max_pixels_option = click.option("--max-pixels", type=click.IntRange(min=1), default=None,
                                  help="Refuse images larger than this many pixels [40,000,000].")
_device_option = click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu",
                              show_default=True,
                              help="Where the transforms run (auto: CUDA when available). Streams are "
                                   "interchangeable between devices.")
_precision_option = click.option(
    "--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
    help="Arithmetic of the image transforms (auto: bf16 on CUDA and on CPUs with native bf16, "
         "else fp32). Streams decode identically either way; the entropy parameters are always fp32.")
_jobs_option = click.option("-j", "--jobs", type=click.IntRange(1, 256), default=1, show_default=True,
                            help="Worker processes when several files are given (each loads the model).")
_progress_option = click.option("--progress/--no-progress", default=None,
                                help="Progress bar on stderr for several files [only on a terminal].")


def _codec(model, threads, max_pixels=None, precision="auto", device="cpu"):
    from ldcodec.batch import CodecOptions, resolve_device

    return CodecOptions(model=model, device=resolve_device(device), precision=precision, max_pixels=max_pixels,
                        threads=threads).load()


def _is_batch(inputs: tuple[str, ...]) -> bool:
    """Several inputs, or one folder: -o is an output folder. One file (or -): today's single mode."""
    from pathlib import Path

    return len(inputs) > 1 or (inputs[0] != "-" and Path(inputs[0]).is_dir())


def _run_batch(task, inputs, out_dir, options, params, jobs, progress, fmt=None) -> None:
    from ldcodec.batch import expand_inputs, output_suffix, plan_outputs, prepare_output_folder, run_batch, summary_line

    suffix = output_suffix(task, fmt)
    files, skipped = expand_inputs(list(inputs), task)
    if not files:
        raise LdcodecError(f"no {'image' if task == 'encode' else '.ldc'} files to {task} in {', '.join(inputs)}")
    out = prepare_output_folder(out_dir)
    items, refused = plan_outputs(files, out, suffix)
    report = run_batch(task, items, options, params, jobs=jobs, refused=refused, skipped=skipped, progress=progress)
    click.echo(summary_line(report, out), err=True)
    if report.failed:
        sys.exit(EXIT_ERROR)


@cli.command("encode")
@click.argument("inputs", metavar="IN...", nargs=-1, required=True)
@click.option("-o", "--output", "output_path", required=True, metavar="OUT",
              help="Output .ldc file, or - for stdout; with several inputs or a folder: the output folder "
                   "(created if missing), one OUT/<stem>.ldc per image.")
@click.option("-q", "--quality", type=click.FloatRange(0.0, 1.0), default=None,
              help="Quality in [0, 1]: 0 ≈ 0.1 bpp, 1 ≈ 1 bpp on photos [0.5].")
@click.option("--bpp", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Target bits per pixel: picks the highest quality that fits.")
@_precision_option
@_model_option
@_device_option
@_threads_option
@_jobs_option
@_progress_option
@_max_pixels_option
def encode_command(inputs, output_path, quality, bpp, precision, model, device, threads, jobs, progress, max_pixels):
    """Compress image IN (any format Pillow reads; - for stdin) to the .ldc stream OUT.

    \b
    Several images or folders at once (folders: their image files, by extension,
    not recursively; one line per file that fails, exit code 2 if any did):
      ldcodec encode photos/ extra.jpg -o streams/ --jobs 4
    """
    from ldcodec.codec.image_io import open_image_bytes

    if quality is not None and bpp is not None:
        raise click.UsageError("give --quality or --bpp, not both")
    if _is_batch(inputs):
        from ldcodec.batch import CodecOptions, resolve_device

        options = CodecOptions(model=model, device=resolve_device(device), precision=precision,
                               max_pixels=max_pixels, threads=threads)
        _run_batch("encode", inputs, output_path, options, {"quality": quality, "bpp": bpp}, jobs, progress)
        return
    input_path = inputs[0]
    check_distinct(input_path, output_path)
    image = open_image_bytes(read_input_bytes(input_path), input_path)
    codec = _codec(model, threads, max_pixels, precision, device)
    start = time.perf_counter()
    blob = codec.encode(image, quality=quality, bpp=bpp)
    elapsed = time.perf_counter() - start
    write_output(output_path, blob)
    if output_path != "-":
        w, h = image.size
        click.echo(f"{output_path}: {len(blob)} bytes, {8 * len(blob) / (w * h):.4f} bpp, {w}x{h}, "
                   f"encoded in {elapsed:.2f} s", err=True)


@cli.command("decode")
@click.argument("inputs", metavar="IN...", nargs=-1, required=True)
@click.option("-o", "--output", "output_path", required=True, metavar="OUT",
              help="Output image (format from the extension: .png, .bmp, .tif, .webp...), or - for PNG on stdout; "
                   "with several inputs or a folder: the output folder (created if missing).")
@click.option("--format", "fmt", default="png", show_default=True,
              help="Image format of the files written into an output folder (png, bmp, tif, webp...).")
@click.option("--steps", type=click.IntRange(0, 8), default=0, show_default=True,
              help="Diffusion steps; 0 = distortion-optimal decode without diffusion.")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed for diffusion (steps > 0).")
@click.option("--sampler", type=click.Choice(["ddim", "dpmpp"]), default="dpmpp", show_default=True,
              help="Diffusion sampler: DDIM or DPM-Solver++ (steps > 0).")
@click.option("--start", type=click.Choice(["matched", "noise"]), default="matched", show_default=True,
              help="Start of the reverse process: at the quantization noise level, or from pure noise.")
@_precision_option
@_model_option
@_device_option
@_threads_option
@_jobs_option
@_progress_option
@_max_pixels_option
def decode_command(inputs, output_path, fmt, steps, seed, sampler, start, precision, model, device, threads, jobs,
                   progress, max_pixels):
    """Reconstruct the image in the .ldc stream IN (- for stdin) and write it to OUT.

    \b
    Several streams or folders at once (folders: their .ldc files, not recursively):
      ldcodec decode streams/ -o decoded/ --jobs 4 [--format png]

    \b
    With a diffusion decoder (<model>-diffusion.safetensors beside the weights):
      ldcodec decode photo.ldc -o photo.png --steps 4 --seed 0 [--sampler ddim] [--start noise]
    """
    if _is_batch(inputs):
        from ldcodec.batch import CodecOptions, resolve_device

        options = CodecOptions(model=model, device=resolve_device(device), precision=precision,
                               max_pixels=max_pixels, threads=threads)
        _run_batch("decode", inputs, output_path, options, {"steps": steps, "seed": seed, "sampler": sampler, "start": start}, jobs, progress, fmt)
        return
    input_path = inputs[0]
    check_distinct(input_path, output_path)
    blob = read_input_bytes(input_path)
    if model is None:  # the installed model the stream names (older streams keep decoding)
        from ldcodec.codec.stream_models import StreamCodecs

        codec = StreamCodecs(lambda named: _codec(named, threads, max_pixels, precision, device)).for_stream(blob)
    else:
        codec = _codec(model, threads, max_pixels, precision, device)
    began = time.perf_counter()
    image = codec.decode(blob, steps=steps, seed=seed, sampler=sampler, start=start)
    elapsed = time.perf_counter() - began
    write_output(output_path, _image_bytes(image, output_path))
    if output_path != "-":
        click.echo(f"{output_path}: {image.size[0]}x{image.size[1]} {image.mode}, decoded in {elapsed:.2f} s", err=True)


def _image_bytes(image, output_path: str) -> bytes:
    return image_bytes(image, output_path)


@cli.command("info")
@click.argument("input_path", metavar="IN")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info_command(input_path, as_json):
    """Describe the .ldc stream IN: size, model, rate, sections (all CRCs checked)."""
    from ldcodec.codec.image_codec import stream_info

    from ldcodec.codec.weights import installed_config

    info = stream_info(read_input_bytes(input_path))
    config = installed_config(info.model_id)
    coder = (None if config is None else {"context": config.context, "parameter_arithmetic": config.parameter_arithmetic,
                                          "symbol_model": config.symbol_model})
    if as_json:
        click.echo(json.dumps({**info.to_dict(), "coder": coder}, indent=2))
        return
    click.echo(f"{input_path}: ldcodec stream, format version {info.format_version}")
    click.echo(f"  image    {info.width}x{info.height} {info.mode}")
    click.echo(f"  model    {info.model_id} (weights {info.weights_hash})")
    click.echo("  coder    " + ("model not installed here" if coder is None else
                              f"context {coder['context']}, {coder['parameter_arithmetic']} parameters, "
                              f"{coder['symbol_model']} symbols"))
    click.echo(f"  quality  {info.quality:.4f}")
    click.echo(f"  size     {info.bytes} bytes, {info.bpp:.4f} bpp")
    for name, size in info.sections.items():
        click.echo(f"  section  {name}: {size} bytes")


@cli.command("demo")
@click.option("-q", "--quality", type=click.FloatRange(0.0, 1.0), default=0.3, show_default=True)
@click.option("--out", "out_dir", default=None, help="Also keep sample.ldc and sample-decoded.png in this folder.")
def demo_command(quality, out_dir):
    """Round-trip the sample image bundled with ldcodec; print bpp, PSNR and times."""
    from pathlib import Path

    import numpy as np

    from ldcodec.codec.image_io import open_image
    from ldcodec.eval.metrics import psnr as psnr_uint8

    sample = Path(__file__).resolve().parent.parent / "assets" / "sample.png"
    image = open_image(sample)
    codec = _codec(None, None)
    t0 = time.perf_counter()
    blob = codec.encode(image, quality=quality)
    t1 = time.perf_counter()
    decoded = codec.decode(blob)
    t2 = time.perf_counter()
    w, h = image.size
    click.echo(f"sample {w}x{h}, quality {quality}: {len(blob)} bytes = {8 * len(blob) / (w * h):.4f} bpp, "
               f"PSNR {psnr_uint8(np.asarray(image.convert('RGB')), np.asarray(decoded.convert('RGB'))):.2f} dB, "
               f"encode {t1 - t0:.2f} s, decode {t2 - t1:.2f} s")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_output(str(Path(out_dir) / "sample.ldc"), blob)
        write_output(str(Path(out_dir) / "sample-decoded.png"), _image_bytes(decoded, "x.png"))


cli.add_command(train_command)
cli.add_command(train_diffusion_command)
cli.add_command(eval_command)
cli.add_command(lpips_weights_command)
cli.add_command(store_group)
cli.add_command(bench_command)


def main() -> None:
    cli(prog_name="ldcodec")
