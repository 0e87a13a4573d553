"""The learned transform-coding model: VAE transforms, gain unit, hyperprior.

This module holds the trainable network and its training-time rate estimate
(CompressAI entropy models on continuous relaxations). Everything the entropy
coder sees at inference is computed separately, on a fixed path, in
:mod:`ldcodec.codec.entropy_parameters`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import nn

from ldcodec.codec.gain import GainUnit
from ldcodec.codec.transforms import (
    analysis_transform,
    hyper_analysis_transform,
    hyper_synthesis_transform,
    synthesis_transform,
)

#: Lower bound on the Gaussian scale, as in CompressAI.
SCALE_LOWER_BOUND = 0.11


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network; stored in the weights file's metadata."""

    channels: int = 128
    latent_channels: int = 192
    gain_levels: int = 8
    #: λ at quality 0 and quality 1 (MSE on 8-bit scale: loss = λ·255²·MSE + bpp).
    lambda_min: float = 0.0004
    lambda_max: float = 0.09

    def to_dict(self) -> dict:
        return asdict(self)

    def shape(self) -> tuple[int, int, int]:
        """The fields that fix the tensors' shapes (the λ range only shapes the training loss)."""
        return (self.channels, self.latent_channels, self.gain_levels)

    def rate_lambda(self, quality: torch.Tensor) -> torch.Tensor:
        """λ for each quality: log-linear between ``lambda_min`` and ``lambda_max``."""
        ratio = self.lambda_max / self.lambda_min
        return self.lambda_min * torch.pow(torch.as_tensor(ratio, dtype=quality.dtype), quality)


@dataclass
class TrainingOutput:
    x_hat: torch.Tensor
    y_likelihoods: torch.Tensor
    z_likelihoods: torch.Tensor


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class HyperpriorModel(nn.Module):
    """Mean-scale hyperprior with per-channel gains for continuous variable rate."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        n, m = self.config.channels, self.config.latent_channels
        self.g_a = analysis_transform(n, m)
        self.g_s = synthesis_transform(n, m)
        self.h_a = hyper_analysis_transform(n, m)
        self.h_s = hyper_synthesis_transform(n, m)
        self.gain = GainUnit(m, levels=self.config.gain_levels)
        self.entropy_bottleneck = EntropyBottleneck(n)
        self.gaussian_conditional = GaussianConditional(None, scale_bound=SCALE_LOWER_BOUND)

    # Pieces used by both training and inference -------------------------------------
    def analyse(self, x: torch.Tensor, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image in [0,1] -> (gained latents y_g, hyper-latents z)."""
        y = self.g_a(x)
        y_g = y * self.gain.gain(quality).to(y.dtype)
        z = self.h_a(y_g)
        return y_g, z

    def synthesise(self, y_hat_g: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """Dequantized gained latents -> image (unclamped)."""
        y_hat = y_hat_g * self.gain.inverse_gain(quality).to(y_hat_g.dtype)
        return self.g_s(y_hat)

    # Training ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor, quality: torch.Tensor) -> TrainingOutput:
        """Training pass: noisy latents for the rate, rounded (STE) latents for the image."""
        y_g, z = self.analyse(x, quality)
        y_g = y_g.float()
        z = z.float()
        # Rate terms in float32 even under autocast: bf16 likelihoods are too coarse.
        with torch.autocast(device_type=x.device.type, enabled=False):
            z_tilde, z_likelihoods = self.entropy_bottleneck(z)
        scales, means = self.h_s(z_tilde).float().chunk(2, 1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            _, y_likelihoods = self.gaussian_conditional(y_g, scales, means=means)
        y_hat_g = ste_round(y_g - means) + means
        x_hat = self.synthesise(y_hat_g, quality)
        return TrainingOutput(x_hat=x_hat, y_likelihoods=y_likelihoods, z_likelihoods=z_likelihoods)
