"""MS-SSIM as a training loss term: pytorch-msssim, per sample, on images in [0, 1].

The same metric as the eval suite's (:func:`ldcodec.eval.metrics.ms_ssim`: five scales,
11-px Gaussian window), so a decoder trained on it is trained on what the tables report.
"""

from __future__ import annotations

import torch

#: pytorch-msssim downsamples 4 times with an 11-px window: the smaller side must exceed this.
MIN_SIDE = (11 - 1) * 2**4


def check_ms_ssim_crop(crop: int) -> None:
    """A clear error, before training starts, for crops MS-SSIM cannot measure."""
    if crop <= MIN_SIDE:
        raise SystemExit(f"an MS-SSIM loss needs crops larger than {MIN_SIDE} px (its five scales), not {crop}")
    try:
        import pytorch_msssim  # noqa: F401
    except ImportError:
        raise SystemExit("an MS-SSIM loss needs pytorch-msssim: pip install -e '.[eval]'") from None


def ms_ssim_per_sample(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of each sample of a batch (differentiable in ``x_hat``)."""
    from pytorch_msssim import ms_ssim

    return ms_ssim(x_hat, x, data_range=1.0, size_average=False)
