"""Entropy parameters in exact integer arithmetic: the same bits on any CPU, BLAS, thread count or device.

The float32 path of :mod:`ldcodec.codec.entropy_parameters` (models up to hp-v6) is reproducible
only where the same kernels add in the same order. One thread fixes the order on one machine, but
not across machines: with oneDNN off, torch's convolutions there are MKL matrix products, and MKL
picks its kernels by CPU (AVX-512 kernels on Intel CPUs that have them, AVX2 kernels on AMD and
older Intel ones). The last bit of a parameter then differs now and then, a snapped parameter
flips, and the stream no longer decodes: measured in session 13, 3 of 8 Kodak streams of hp-v6
encoded on MKL's AVX2 path failed to decode on its AVX-512 path (``MKL_CBWR=AVX2`` / ``AVX512`` on
one Sapphire Rapids machine). Pinning MKL's path for the whole process (``MKL_CBWR``) halved the
speed of the bf16 transforms, so it is no fix. Models from hp-v7 on
(``ModelConfig.parameter_arithmetic == "exact"``) compute h_s and the contexts here instead, so
that no kernel choice can change a parameter:

* every activation is an integer number of units of 2^-:data:`ACTIVATION_BITS`, clamped to
  ±2^:data:`RANGE_BITS`; every weight an integer number of units of 2^-g, with g per output
  channel chosen so that the channel's products add up to less than 2^52 in magnitude; all held
  in float64. Every partial sum of a convolution is then an integer that float64 holds exactly,
  in whatever order (or with whatever fused multiply-adds) a kernel adds them;
* each output is scaled back to the activation grid by a power of two and rounded half to even,
  and LeakyReLU multiplies negatives by its slope on a 2^-16 grid: both exact;
* means are snapped to the 1/64 grid by a power-of-two rounding; scale indexes are found by
  comparing with thresholds computed in decimal arithmetic (:func:`scale_thresholds`), not with
  a platform's ``log``.

The network so evaluated differs from the float model by about 1e-4 or less (activations to
2^-16, weights to about 2^-23 of their channel's absolute sum), inside the snapping grid.
"""

from __future__ import annotations

import decimal
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldcodec.codec.checkerboard import CheckerboardContext
from ldcodec.codec.channel_context import ChannelContext, SliceRefinement

#: Activations are integers in units of 2^-ACTIVATION_BITS.
ACTIVATION_BITS = 16
#: Activations are clamped to ±2^RANGE_BITS (inputs and outputs of every convolution): the latents
#: ŷ stay within ±2^11 by the coder's symbol range, and trained activations far inside.
RANGE_BITS = 12
LIMIT = 2.0 ** (ACTIVATION_BITS + RANGE_BITS)
#: A sum's terms add up to less than 2^EXACT_BITS in magnitude (float64 holds integers to 2^53 exactly).
EXACT_BITS = 52
#: LeakyReLU's slope is rounded to a multiple of 2^-SLOPE_BITS.
SLOPE_BITS = 24


def to_grid(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Float values on (or rounded to) the activation grid, as integer units in float64, clamped."""
    t = torch.as_tensor(np.ascontiguousarray(values) if isinstance(values, np.ndarray) else values)
    return torch.clamp(torch.round(t.to(torch.float64) * 2.0 ** ACTIVATION_BITS), -LIMIT, LIMIT)


def _clamped(x: torch.Tensor) -> torch.Tensor:
    """``x`` within ±LIMIT; a copy only where something is out of range (the rare case)."""
    low, high = torch.aminmax(x)
    return torch.clamp(x, -LIMIT, LIMIT) if low < -LIMIT or high > LIMIT else x


def _channel_shift(weights: np.ndarray, bias: float) -> int:
    """Largest power of two for one output channel's weights that keeps its sums exact.

    ``Σ|w|·2^shift·LIMIT`` and ``|bias|·2^(ACTIVATION_BITS+shift)`` each stay within 2^(EXACT_BITS-1)
    (before rounding; the rounding adds at most fan_in/2 units of weight). ``math.fsum`` and
    ``math.frexp`` are exact, so every platform picks the same shift.
    """
    budget = EXACT_BITS - 1
    l1 = math.fsum(abs(float(w)) for w in weights)
    shift = budget - (ACTIVATION_BITS + RANGE_BITS) - (math.frexp(l1)[1] if l1 > 0 else 0)
    if bias != 0.0:
        shift = min(shift, budget - ACTIVATION_BITS - math.frexp(abs(bias))[1])
    return shift


class ExactConv:
    """A Conv2d or ConvTranspose2d on integer units: weights rounded once per output channel, sums exact."""

    def __init__(self, layer: nn.Conv2d | nn.ConvTranspose2d):
        self.transposed = isinstance(layer, nn.ConvTranspose2d)
        weight = layer.weight.detach().cpu().to(torch.float64)
        if self.transposed:  # (in, out / groups, kh, kw) -> output channels first
            if layer.groups != 1:
                raise TypeError("grouped transposed convolutions have no exact-arithmetic version")
            weight = weight.transpose(0, 1)
        out_channels = weight.shape[0]
        bias = (layer.bias.detach().cpu().to(torch.float64) if layer.bias is not None
                else torch.zeros(out_channels, dtype=torch.float64))
        flat = weight.reshape(out_channels, -1).numpy()
        shifts = [_channel_shift(flat[c], float(bias[c])) for c in range(out_channels)]
        scale = torch.tensor([2.0 ** s for s in shifts], dtype=torch.float64)
        weight = torch.round(weight * scale[:, None, None, None])
        self.weight = weight.transpose(0, 1).contiguous() if self.transposed else weight
        self.bias = torch.round(bias * scale * 2.0 ** ACTIVATION_BITS)[None, :, None, None]
        self.unscale = (1.0 / scale)[None, :, None, None]  # powers of two: exact
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
        self.output_padding = getattr(layer, "output_padding", 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = _clamped(x)
        if self.transposed:
            s = F.conv_transpose2d(x, self.weight, None, self.stride, self.padding, self.output_padding,
                                   self.groups, self.dilation)
        else:
            s = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return self.rescale(s)

    def rescale(self, sums: torch.Tensor) -> torch.Tensor:
        """Integer sums (in place) + bias, back to the activation grid: power-of-two scaling, round half to even."""
        return sums.add_(self.bias).mul_(self.unscale).round_().clamp_(-LIMIT, LIMIT)


class ExactCheckerboardConv:
    """The checkerboard context's convolution, computed only where it is used: 2.8x fewer products.

    Its input is zero off the anchors ((row + column) even) and its output is used only off them
    (the non-anchors' parameters; :class:`ldcodec.codec.checkerboard.CheckerboardContext`). Split
    into 2×2 phases, each non-anchor phase of the output is a small convolution of the two anchor
    phases, with the taps that land on them; off the anchors this sums the same integer products as
    the full convolution, so it gives the same bits. At the anchors it gives 0 (never used).
    """

    ANCHOR_PHASES = ((0, 0), (1, 1))
    OUTPUT_PHASES = ((0, 1), (1, 0))

    def __init__(self, conv: ExactConv):
        if conv.transposed or conv.groups != 1 or tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1):
            raise TypeError("the checkerboard convolution must be a plain stride-1 convolution")
        out_channels, in_channels, kh, kw = conv.weight.shape
        r = kh // 2
        if kh != kw or kh % 2 == 0 or tuple(conv.padding) != (r, r):
            raise TypeError("the checkerboard convolution must be square, odd and 'same'-padded")
        self.conv = conv
        self.pad = (r + 1) // 2  # phase offsets run from -pad to +pad
        size = 2 * self.pad + 1
        self.kernels = {}
        for py, px in self.OUTPUT_PHASES:
            kernel = torch.zeros(out_channels, 2 * in_channels, size, size, dtype=torch.float64)
            for n, (qy, qx) in enumerate(self.ANCHOR_PHASES):
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        if (py + dy) % 2 == qy and (px + dx) % 2 == qx:
                            kernel[:, n * in_channels:(n + 1) * in_channels,
                                   (py + dy) // 2 + self.pad, (px + dx) // 2 + self.pad] = conv.weight[:, :, dy + r, dx + r]
            self.kernels[(py, px)] = kernel

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        x = F.pad(_clamped(x), (0, width % 2, 0, height % 2))  # even sides; zeros as before
        phases = torch.cat([x[:, :, qy::2, qx::2] for qy, qx in self.ANCHOR_PHASES], dim=1)
        out = torch.zeros(x.shape[0], self.conv.weight.shape[0], *x.shape[2:], dtype=torch.float64)
        for (py, px), kernel in self.kernels.items():
            s = F.conv2d(phases, kernel, None, 1, self.pad)
            out[:, :, py::2, px::2] = self.conv.rescale(s)
        return out[:, :, :height, :width]


class ExactLeakyReLU:
    """max(x, round(x·slope)): x for x >= 0, the rounded slope times x below (slope in [0, 1])."""

    def __init__(self, layer: nn.LeakyReLU):
        if not 0.0 <= layer.negative_slope <= 1.0:
            raise TypeError("LeakyReLU slope must be within [0, 1]")
        # x (< 2^30 units) times a slope of at most SLOPE_BITS significant bits: an exact product
        self.slope = round(layer.negative_slope * 2 ** SLOPE_BITS) * 2.0 ** -SLOPE_BITS

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        negative = torch.mul(x, self.slope).round_()
        return torch.maximum(x, negative, out=negative)


class ExactSequential:
    def __init__(self, layers: nn.Sequential):
        self.layers = [exact_layer(layer) for layer in layers]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ExactRefinement:
    """``base + refine(cat(base, context(known)))``: the checkerboard context and each channel slice's.

    Computed in bands of :attr:`BAND_ROWS` rows (each with the rows its convolution reaches), so
    that a large image's float64 temporaries stay small; sums being exact, the bands give the same
    integers as the whole. The result is int32 (:func:`compact`).
    """

    #: Latent rows per band (even, so that the checkerboard phases stay aligned).
    BAND_ROWS = 16

    def __init__(self, module: CheckerboardContext | SliceRefinement):
        context = ExactConv(module.context)
        radius = context.weight.shape[2] // 2
        self.halo = radius + radius % 2  # even, at least the convolution's reach
        self.context = ExactCheckerboardConv(context) if isinstance(module, CheckerboardContext) else context
        self.refine = ExactSequential(module.refine)

    def __call__(self, base: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        height = base.shape[2]
        out = torch.empty(base.shape, dtype=torch.int32)
        for top in range(0, height, self.BAND_ROWS):
            bottom = min(height, top + self.BAND_ROWS)
            first, last = max(0, top - self.halo), min(height, bottom + self.halo)
            band = base[:, :, first:last].to(torch.float64)
            band = self.refine(torch.cat([band, self.context(known[:, :, first:last])], dim=1)).add_(band)
            out[:, :, top:bottom] = band[:, :, top - first:bottom - first]
        return out


def exact_layer(layer: nn.Module):
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
        return ExactConv(layer)
    if isinstance(layer, nn.LeakyReLU):
        return ExactLeakyReLU(layer)
    if isinstance(layer, nn.Sequential):
        return ExactSequential(layer)
    if isinstance(layer, (CheckerboardContext, SliceRefinement)):
        return ExactRefinement(layer)
    raise TypeError(f"no exact-arithmetic version of {type(layer).__name__}")


@lru_cache(maxsize=None)
def scale_thresholds(lower: float, upper: float, levels: int) -> np.ndarray:
    """Scale values (in activation units) at which the snapped scale index steps up, ``levels - 1`` of them.

    Index i covers scales whose log lies within half a step of ``log(lower) + i·step``, as in
    :func:`ldcodec.codec.entropy_parameters.snap_scales`; the geometric midpoints are computed
    with 40-digit decimal arithmetic, so every platform gets the same float64 thresholds.
    """
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        lo, hi = decimal.Decimal(lower).ln(), decimal.Decimal(upper).ln()
        step = (hi - lo) / (levels - 1)
        unit = decimal.Decimal(2) ** ACTIVATION_BITS
        return np.array([float((lo + (i + decimal.Decimal("0.5")) * step).exp() * unit) for i in range(levels - 1)])


@lru_cache(maxsize=None)
def scale_table(lower: float, upper: float, levels: int) -> np.ndarray:
    """``levels`` log-spaced scales from ``lower`` to ``upper``, each correctly rounded to float64."""
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        lo, hi = decimal.Decimal(lower).ln(), decimal.Decimal(upper).ln()
        step = (hi - lo) / (levels - 1)
        return np.array([float((lo + i * step).exp()) for i in range(levels)])


def compact(params: torch.Tensor) -> torch.Tensor:
    """Integer-unit parameters (within ±2^30) held as int32: half the memory of float64, still exact."""
    return params.to(torch.int32)


def snap_exact(params: torch.Tensor, thresholds: np.ndarray, mean_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(1, 2C, H, W) integer-unit (scales, means) -> (means on the 1/mean_grid grid, scale indexes)."""
    scales, means = params[0].to(torch.float64).chunk(2, 0)
    grid_bits = int(math.log2(mean_grid))
    snapped = torch.round(means * 2.0 ** (grid_bits - ACTIVATION_BITS)).numpy() / mean_grid
    indexes = torch.bucketize(scales.abs(), torch.from_numpy(thresholds), right=True).numpy()
    return snapped, indexes


def exact_path():
    """CPU, oneDNN off (its float64 support varies); threads and BLAS branch no longer matter."""
    return torch.backends.mkldnn.flags(enabled=False)


class ExactChannelContext:
    """:class:`ldcodec.codec.channel_context.ChannelContext` on integer units."""

    def __init__(self, module: ChannelContext):
        self.slices = module.slices
        self.anchor_nets = [ExactRefinement(net) for net in module.anchor_nets]
        self.rest_nets = [ExactRefinement(net) for net in module.rest_nets]

    def refine(self, second_pass: bool, index: int, params: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        return (self.rest_nets if second_pass else self.anchor_nets)[index - 1](params, known)
