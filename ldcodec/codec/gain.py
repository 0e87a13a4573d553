"""Continuous variable rate from one set of weights (Cui et al. 2021, "gained" VAE).

``quality`` in [0, 1] selects a point between ``levels`` learned per-channel gain
vectors by exponential (log-linear) interpolation. The encoder multiplies the
latents by the gain before rounding (a larger gain = a finer quantizer = more
bits); the decoder multiplies by the matching inverse gain.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GainUnit(nn.Module):
    """Per-channel gain vectors indexed by a continuous quality in [0, 1]."""

    def __init__(self, channels: int, levels: int = 8, init_range: tuple[float, float] = (0.35, 3.0)):
        super().__init__()
        lo, hi = math.log(init_range[0]), math.log(init_range[1])
        init = torch.linspace(lo, hi, levels)[:, None].repeat(1, channels)
        self.log_gain = nn.Parameter(init.clone())
        self.log_inverse_gain = nn.Parameter(-init.clone())

    @property
    def levels(self) -> int:
        return self.log_gain.shape[0]

    def _log_interpolate(self, table: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """Log-values at ``quality`` (B,): linear between levels, the end segments extended beyond [0, 1]."""
        position = quality.to(table.dtype) * (self.levels - 1)
        low = position.floor().long().clamp(0, self.levels - 2)
        frac = (position - low.to(position.dtype))[:, None]
        return table[low] * (1.0 - frac) + table[low + 1] * frac

    def _interpolate(self, table: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        return self._log_interpolate(table, quality.clamp(0.0, 1.0)).exp()[:, :, None, None]

    @torch.no_grad()
    def relocate(self, old_quality: torch.Tensor) -> None:
        """Move the levels: level i takes the gains the table had at ``old_quality[i]``.

        For a new λ range, ``old_quality[i]`` is where the old range had level i's new λ
        (see :meth:`ldcodec.codec.model.ModelConfig.quality_for_lambda`). Positions
        outside [0, 1] extrapolate the end segments linearly in log-gain, so a widened
        range starts near where training would take it instead of thousands of steps away.
        """
        for table in (self.log_gain, self.log_inverse_gain):
            table.copy_(self._log_interpolate(table, old_quality))

    def gain(self, quality: torch.Tensor) -> torch.Tensor:
        """Gain of shape (B, C, 1, 1) for a batch of qualities of shape (B,)."""
        return self._interpolate(self.log_gain, quality)

    def inverse_gain(self, quality: torch.Tensor) -> torch.Tensor:
        """Inverse gain of shape (B, C, 1, 1) applied before synthesis."""
        return self._interpolate(self.log_inverse_gain, quality)
