"""The learned transform-coding model: VAE transforms, gain unit, hyperprior.

This module holds the trainable network and its training-time rate estimate
(CompressAI entropy models on continuous relaxations). Everything the entropy
coder sees at inference is computed separately, on a fixed path, in
:mod:`ldcodec.codec.entropy_parameters`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import nn

from ldcodec.codec.channel_context import ChannelContext, merge_slices, slice_parameters
from ldcodec.codec.checkerboard import CONTEXT_MODES, CheckerboardContext, anchor_mask
from ldcodec.codec.gain import GainUnit
from ldcodec.codec.residual_synthesis import block_positions, with_residual_blocks
from ldcodec.codec.transforms import (
    analysis_transform,
    hyper_analysis_transform,
    hyper_synthesis_transform,
    synthesis_transform,
)

#: Lower bound on the Gaussian scale, as in CompressAI.
SCALE_LOWER_BOUND = 0.11
#: The coder's arithmetic for the entropy parameters (see ``ModelConfig.parameter_arithmetic``).
PARAMETER_ARITHMETICS = ("float32", "exact")

#: How the coder models a latent symbol given its scale (:mod:`ldcodec.bitstream.symbol_models`).
SYMBOL_MODELS = ("quantized-gaussian", "tables-v1")

#: How training estimates the latents' rate: "noise" (additive uniform noise, Ballé et al.)
#: or "rounded" (the likelihood of the rounded latents the coder codes, straight-through;
#: the "hard" stage of Guo et al. 2021, "Soft then Hard").
RATE_ESTIMATES = ("noise", "rounded")
#: What a training run trains: the whole model, or g_s alone (the bitstream stays that of the
#: weights it starts from; :mod:`ldcodec.train.trainer`).
TRAINED_PARTS = ("all", "synthesis")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network; stored in the weights file's metadata."""

    channels: int = 128
    latent_channels: int = 192
    gain_levels: int = 8
    #: λ at quality 0 and quality 1 (MSE on 8-bit scale: loss = λ·255²·MSE + bpp).
    lambda_min: float = 0.0004
    lambda_max: float = 0.09
    #: Context of the latents' entropy model: "none" (hyperprior only), "checkerboard"
    #: (see :mod:`ldcodec.codec.checkerboard`) or "checkerboard-channel" (the checkerboard's
    #: passes coded slice by slice, :mod:`ldcodec.codec.channel_context`). Older weights files lack it: "none".
    context: str = "none"
    #: How the coder computes the entropy parameters from the weights: "float32" on the fixed CPU
    #: path (models up to hp-v6; older weights files lack the field) or "exact" integer
    #: arithmetic, the same on every machine (:mod:`ldcodec.codec.exact_parameters`). Training is
    #: the same either way.
    parameter_arithmetic: str = "float32"
    #: The range coder's model of a latent symbol given its scale level: constriction's quantized
    #: Gaussians (models up to hp-v7; older weights files lack the field) or "tables-v1", the same
    #: Gaussians tabulated in a file shipped with the package (~20x faster to code). Training is the
    #: same either way.
    symbol_model: str = "quantized-gaussian"
    #: g_s layer indexes each followed by a residual block (:mod:`ldcodec.codec.residual_synthesis`);
    #: empty (models up to hp-v8; older weights files lack the field) is the plain four-layer g_s.
    synthesis_blocks: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "synthesis_blocks", block_positions(self.synthesis_blocks))
        if self.context not in CONTEXT_MODES:
            raise ValueError(f"context must be one of {', '.join(CONTEXT_MODES)}, not {self.context!r}")
        if self.parameter_arithmetic not in PARAMETER_ARITHMETICS:
            raise ValueError(f"parameter_arithmetic must be one of {', '.join(PARAMETER_ARITHMETICS)}, "
                             f"not {self.parameter_arithmetic!r}")
        if self.symbol_model not in SYMBOL_MODELS:
            raise ValueError(f"symbol_model must be one of {', '.join(SYMBOL_MODELS)}, not {self.symbol_model!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def shape(self) -> tuple:
        """The fields that fix the tensors (the λ range only shapes the training loss; the arithmetic and the
        symbol model, the coder)."""
        return (self.channels, self.latent_channels, self.gain_levels, self.context, self.synthesis_blocks)

    def rate_lambda(self, quality: torch.Tensor) -> torch.Tensor:
        """λ for each quality: log-linear between ``lambda_min`` and ``lambda_max``."""
        ratio = self.lambda_max / self.lambda_min
        return self.lambda_min * torch.pow(torch.as_tensor(ratio, dtype=quality.dtype), quality)

    def quality_for_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`rate_lambda` (outside [0, 1] for λ outside the range)."""
        return torch.log(lam / self.lambda_min) / math.log(self.lambda_max / self.lambda_min)

    def level_lambdas(self) -> torch.Tensor:
        """λ of each gain level (the levels sit at evenly spaced qualities)."""
        return self.rate_lambda(torch.linspace(0.0, 1.0, self.gain_levels, dtype=torch.float64))


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
        self.g_s = with_residual_blocks(synthesis_transform(n, m), self.config.synthesis_blocks)
        self.h_a = hyper_analysis_transform(n, m)
        self.h_s = hyper_synthesis_transform(n, m)
        self.gain = GainUnit(m, levels=self.config.gain_levels)
        self.entropy_bottleneck = EntropyBottleneck(n)
        self.gaussian_conditional = GaussianConditional(None, scale_bound=SCALE_LOWER_BOUND)
        spatial = self.config.context in ("checkerboard", "checkerboard-channel")
        self.context_model = CheckerboardContext(m) if spatial else None
        self.channel_context = ChannelContext(m) if self.config.context == "checkerboard-channel" else None

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

    def latent_parameters(self, y_g: torch.Tensor, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scales, means) of the gained latents given hyper-latents: the training-path view.

        With a checkerboard context the non-anchors' parameters also see the anchors, and with a
        channel context each slice also sees the earlier slices, all rounded around their own
        means as the coder does (straight-through). The coder itself uses the fixed path of
        :mod:`ldcodec.codec.latent_coding`.
        """
        params = self.h_s(z_hat).float()
        if self.context_model is not None:
            mask = anchor_mask(*y_g.shape[2:], device=y_g.device)
            first, anchors = self._pass_parameters(params, y_g, mask, torch.zeros_like(y_g), second_pass=False)
            refined = self.context_model(params, anchors).float()
            second, _ = self._pass_parameters(refined, y_g, 1.0 - mask, anchors, second_pass=True)
            params = first * mask + second * (1.0 - mask)
        scales, means = params.chunk(2, 1)
        return scales, means

    def _pass_parameters(self, base: torch.Tensor, y_g: torch.Tensor, positions: torch.Tensor,
                         decoded: torch.Tensor, second_pass: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One checkerboard pass, slice by slice: (its parameters, ``decoded`` plus its quantized latents).

        ``positions``: 1 where this pass codes; ``decoded``: ŷ known before the pass, 0 elsewhere.
        """
        slices = self.channel_context.slices if self.channel_context is not None else [(0, y_g.shape[1])]
        parts, quantized = [], []
        for index, (start, stop) in enumerate(slices):
            params = slice_parameters(base, start, stop)
            if index > 0:
                known = decoded[:, :start] + torch.cat(quantized, dim=1)
                params = self.channel_context.refine(second_pass, index, params, known).float()
            means = params.chunk(2, 1)[1]
            quantized.append((ste_round(y_g[:, start:stop] - means) + means) * positions)
            parts.append(params)
        return merge_slices(parts), decoded + torch.cat(quantized, dim=1)

    # Training ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor, quality: torch.Tensor, rate_estimate: str = "noise") -> TrainingOutput:
        """Training pass: noisy (or rounded) latents for the rate, rounded (STE) latents for the image.

        ``rate_estimate="rounded"`` prices y at the integers the coder codes. Noise overstates
        the rate of near-dead channels (at quality 0, hp-v1 showed 0.177 bpp with noise against
        0.077 bpp coded), so the noisy loss trades rate for distortion at the wrong exchange rate.
        """
        if rate_estimate not in RATE_ESTIMATES:
            raise ValueError(f"rate_estimate must be one of {', '.join(RATE_ESTIMATES)}, not {rate_estimate!r}")
        y_g, z = self.analyse(x, quality)
        y_g = y_g.float()
        z = z.float()
        # Rate terms in float32 even under autocast: bf16 likelihoods are too coarse.
        with torch.autocast(device_type=x.device.type, enabled=False):
            _, z_likelihoods = self.entropy_bottleneck(z)
        # h_s sees ẑ rounded to integers, as the coder does (straight-through); noisy z is only
        # for z's own rate. A context trained on noisy z mispredicted rounded z badly on flat
        # images (5x the bits at quality 0; docs/training.md, hp-v2).
        scales, means = self.latent_parameters(y_g, ste_round(z))
        y_hat_g = ste_round(y_g - means) + means
        with torch.autocast(device_type=x.device.type, enabled=False):
            if rate_estimate == "rounded" and self.training:
                y_likelihoods = self._rounded_likelihoods(y_hat_g, scales, means)
            else:
                _, y_likelihoods = self.gaussian_conditional(y_g, scales, means=means)
        x_hat = self.synthesise(y_hat_g, quality)
        return TrainingOutput(x_hat=x_hat, y_likelihoods=y_likelihoods, z_likelihoods=z_likelihoods)

    def _rounded_likelihoods(self, y_hat_g: torch.Tensor, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """Likelihoods of the rounded latents, differentiable in y through the straight-through round."""
        conditional = self.gaussian_conditional
        likelihoods = conditional._likelihood(y_hat_g, scales, means)
        if conditional.use_likelihood_bound:
            likelihoods = conditional.likelihood_lower_bound(likelihoods)
        return likelihoods
