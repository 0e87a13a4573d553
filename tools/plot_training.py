"""Plot a training run's log.csv (loss, bpp, PSNR, validation RD) to a PNG in docs/.

    python tools/plot_training.py [--run RUN] [--log PATH] [--out docs/training-RUN.png]

RUN defaults to the shipped model's id (:data:`ldcodec.codec.release.DEFAULT_MODEL_ID`).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ldcodec.codec.release import DEFAULT_MODEL_ID  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=DEFAULT_MODEL_ID)
    parser.add_argument("--log", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    log = Path(args.log or Path.home() / ".cache" / "ldcodec-train" / args.run / "log.csv")
    out = Path(args.out or Path(__file__).resolve().parent.parent / "docs" / f"training-{args.run}.png")
    fields = ["step", "hours", "lr", "loss", "bpp", "psnr"] + [
        f"val_{m}_q{q}" for q in ("0.0", "0.5", "1.0") for m in ("bpp", "psnr")]
    with open(log) as f:
        lines = list(csv.reader(f))[1:]
    # Positional: logs written before the header listed the validation columns have them unnamed.
    rows = [dict(zip(fields, line)) for line in lines]
    step = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(step, loss)
    if min(loss) > 0:
        axes[0].set(title="training loss (λ·255²·MSE + bpp)", xlabel="step", yscale="log")
    else:  # a decoder-only run (ldcodec train --train-only synthesis)
        axes[0].set(title="training loss (mean ln MSE, g_s only)", xlabel="step")
    axes[1].plot(step, [float(r["psnr"]) for r in rows], label="PSNR")
    ax2 = axes[1].twinx()
    ax2.plot(step, [float(r["bpp"]) for r in rows], color="tab:orange")
    axes[1].set(title="training batches, random quality (orange: bpp)", xlabel="step", ylabel="PSNR (dB)")
    ax2.set_ylabel("bpp")
    val = [r for r in rows if r.get("val_psnr_q0.0")]
    for q in ("0.0", "0.5", "1.0"):
        axes[2].plot([int(r["step"]) for r in val], [float(r[f"val_psnr_q{q}"]) for r in val], marker="o",
                     label=f"quality {q} (last: {float(val[-1][f'val_bpp_q{q}']):.2f} bpp)" if val else q)
    axes[2].set(title="held-out 256² crops (bpp estimated from likelihoods)", xlabel="step", ylabel="PSNR (dB)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out} ({len(rows)} log rows, last step {step[-1]})")


if __name__ == "__main__":
    main()
