"""MS-SSIM as a training loss term: pytorch-msssim, per sample, on images in [0, 1].

The same metric as the eval suite's (:func:`ldcodec.eval.metrics.ms_ssim`: five scales,
11-px Gaussian window), so a decoder trained on it is trained on what the tables report.
"""

from __future__ import annotations

import torch

from ldcodec.eval.metrics import MS_SSIM_MIN_SIDE


def check_ms_ssim_crop(crop: int) -> None:
    """A clear error, before training starts, for crops MS-SSIM cannot measure."""
    if crop < MS_SSIM_MIN_SIDE:
        raise SystemExit(f"an MS-SSIM loss needs crops larger than {MS_SSIM_MIN_SIDE - 1} px (its five scales), "
                         f"not {crop}")
    try:
        import pytorch_msssim  # noqa: F401
    except ImportError:
        raise SystemExit("an MS-SSIM loss needs pytorch-msssim: pip install -e '.[eval]'") from None


def ms_ssim_per_sample(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of each sample of a batch (differentiable in ``x_hat``)."""
    from pytorch_msssim import ms_ssim

    return ms_ssim(x_hat, x, data_range=1.0, size_average=False)
