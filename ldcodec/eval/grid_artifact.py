"""The synthesis grid: an error pattern that repeats every 16 pixels, in step with the latents.

g_s upsamples the latents 16× with four strided transposed convolutions. Tuned on LPIPS,
the perceptual synthesis learned to add high-frequency energy as one fixed pattern of that
period (kodim13's water and foliage at steps 4: 8 levels RMS against 0.7 at steps 0). LPIPS
scores the pattern as texture; a viewer sees a screen laid over the image.

The pattern is the part of the error that is the same in every 16×16 cell of the image.
Averaging the error over all the cells keeps it, and averages error that follows the
content down to about its RMS / √cells. One measure serves as the training penalty
(:func:`grid_power`, differentiable) and as the metric (:func:`ldcodec.eval.metrics.grid_rms`, in 8-bit levels,
from :func:`mean_error_cell`).
"""

from __future__ import annotations

import numpy as np
import torch

#: The synthesis' upsampling factor: the period of the pattern, in pixels.
GRID_PERIOD = 16


def periodic_component(error: torch.Tensor, period: int = GRID_PERIOD) -> torch.Tensor:
    """The mean period×period cell of ``error`` (B×C×H×W) minus its mean: B×C×period×period.

    Rows and columns past the last whole cell are left out; the cells are counted from the
    top left, where the latent grid starts.
    """
    height, width = error.shape[-2] - error.shape[-2] % period, error.shape[-1] - error.shape[-1] % period
    if height == 0 or width == 0:
        raise ValueError(f"the grid measure needs images of at least {period}×{period} pixels")
    batch, channels = error.shape[:2]
    cells = error[..., :height, :width].reshape(batch, channels, height // period, period, width // period, period)
    cell = cells.mean(dim=(2, 4))
    return cell - cell.mean(dim=(2, 3), keepdim=True)


def grid_power(decoded: torch.Tensor, target: torch.Tensor, period: int = GRID_PERIOD) -> torch.Tensor:
    """Mean square of the error's periodic component (images in [0, 1]): the training penalty."""
    return periodic_component(decoded.float() - target.float(), period).square().mean()


def mean_error_cell(reference: np.ndarray, decoded: np.ndarray, period: int = GRID_PERIOD) -> np.ndarray:
    """:func:`periodic_component` of ``decoded − reference`` for H×W×3 arrays: period×period×3, in their units."""
    error = torch.from_numpy(decoded.astype(np.float64) - reference.astype(np.float64)).permute(2, 0, 1)[None]
    return periodic_component(error, period)[0].permute(1, 2, 0).numpy()
