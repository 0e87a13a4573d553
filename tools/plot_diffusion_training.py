"""Plot a diffusion-decoder training log (latent x0 loss; steps-4 PSNR/LPIPS on held-out crops) to a PNG.

    python tools/plot_diffusion_training.py [--log ~/.cache/ldcodec-train/RUN/log.csv] [--out docs/training-RUN.png]

RUN defaults to the shipped model's diffusion run, ``<DEFAULT_MODEL_ID>-diffusion``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ldcodec.codec.release import DEFAULT_MODEL_ID  # noqa: E402

RUN = f"{DEFAULT_MODEL_ID}-diffusion"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", default=str(Path.home() / ".cache" / "ldcodec-train" / RUN / "log.csv"))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs"
                                             / f"training-{RUN}.png"))
    args = parser.parse_args()
    with open(args.log, newline="") as f:
        rows = list(csv.DictReader(f))

    def series(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in (("loss", "denoiser x0 MSE (train)"), ("yhat_loss", "ŷ itself (train)"),
                       ("val_loss", "denoiser x0 MSE (held-out)")):
        axes[0].plot(*series(key), label=label, lw=1 if key != "val_loss" else 2)
    axes[0].set_title("latent space (normalised)")
    for ax, metric, title in ((axes[1], "psnr", "PSNR (dB), held-out crops"), (axes[2], "lpips", "LPIPS, held-out crops")):
        ax.plot(*series(f"val_{metric}"), "o-", label="steps 4 (denoiser + tuned g_s)")
        ax.plot(*series(f"val_base_{metric}"), "--", label="steps 0 (ŷ + base g_s)")
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
