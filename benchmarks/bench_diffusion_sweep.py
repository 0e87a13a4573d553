"""Diffusion decoder sweep on Kodak (issue 5): K = 0, 1, 2, 4, 8, both samplers, both starts, ablations.

    python benchmarks/bench_diffusion_sweep.py [--dir ../shared/data/kodak] [--qualities 0,0.15,0.3,0.5] \
        [--limit N] [--out PATH] [--model ID] [--diffusion PATH] [--variants all|main]

``--diffusion`` decodes with another diffusion weights file of the same base model (a training
candidate) and ``--variants main`` keeps only K = 0 and K = 4: that is how candidates are
compared before one ships (``docs/training.md``).

Every image is encoded once per quality and the same bytes are decoded by every
variant (see ``ldcodec.eval.diffusion_sweep``). Prints the markdown tables and
writes ``<out>.csv`` and ``<out>.md``; ``ldcodec eval --report`` includes the
latter in ``docs/results.md`` when it lies in the results folder.

Without ``--out`` only the full sweep of the shipped decoder (no ``--limit``, ``--model``,
``--diffusion`` or ``--variants main``) writes, to ``docs/results/diffusion-sweep``; a partial run
(a candidate check) just prints, so it never overwrites the report that ``docs/results.md`` embeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import ldcodec
from ldcodec.eval.diffusion_sweep import VARIANT_SETS, markdown_table, run_sweep, write_csv
from ldcodec.eval.reports import write_atomically
from ldcodec.eval.runner import DIFFUSION_SWEEP_REPORT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="../shared/data/kodak")
    parser.add_argument("--qualities", default="0,0.15,0.3,0.5")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="report path without suffix (default: docs/results/diffusion-sweep for the full "
                             "sweep of the shipped decoder; a partial run without --out only prints)")
    parser.add_argument("--model", default=None, help="model id or weights path (default: the shipped default)")
    parser.add_argument("--diffusion", default=None, help="diffusion weights file (default: the model's own)")
    parser.add_argument("--variants", choices=sorted(VARIANT_SETS), default="all",
                        help="all: the full sweep; main: K=0 and K=4 only")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    files = sorted(Path(args.dir).glob("*.png"))[: args.limit or None]
    if not files:
        raise SystemExit(f"no PNG images in {args.dir}")
    codec = ldcodec.load(args.model, diffusion=args.diffusion)
    if not codec.has_diffusion_decoder:
        raise SystemExit(f"model {codec.model_id} has no diffusion decoder")
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    qualities = [float(q) for q in args.qualities.split(",")]
    rows = run_sweep(codec, images, qualities, VARIANT_SETS[args.variants](), seed=args.seed,
                     log=lambda m: print(m, file=sys.stderr))
    command = "python benchmarks/bench_diffusion_sweep.py " + " ".join(sys.argv[1:])
    decoder = f", diffusion decoder `{codec.diffusion_path.name}`" if args.diffusion else ""
    lines = [f"Model {codec.model_id}{decoder}, {len(files)} images from `{args.dir}`, seed {args.seed}, "
             f"precision {codec.precision}. Same streams for every decoder in a table. Regenerate with:", "",
             "```sh", command.strip(), "```", ""] + markdown_table(rows)
    print("\n".join(lines))
    out = report_path(args)
    if out is None:
        print("partial run (--limit, --model, --diffusion or --variants main) without --out: nothing written",
              file=sys.stderr)
        return
    write_csv(rows, out.with_suffix(".csv"))
    write_atomically(out.with_suffix(".md"), "\n".join(lines) + "\n")


def report_path(args: argparse.Namespace) -> Path | None:
    """Where the report goes; None for a partial run without ``--out`` (it must not replace the full sweep)."""
    if args.out is not None:
        return Path(args.out)
    partial = args.limit or args.model is not None or args.diffusion is not None or args.variants != "all"
    return None if partial else Path("docs/results") / Path(DIFFUSION_SWEEP_REPORT).stem


if __name__ == "__main__":
    main()
