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

    def rescale(self, sums: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """Integer sums (in place) + bias, back to the activation grid: power-of-two scaling, round half to even.

        ``sums``: (B, C, H, W), or (N, C) with ``channels_last`` (one row per position).
        """
        shape = (-1,) if channels_last else (1, -1, 1, 1)
        return sums.add_(self.bias.view(shape)).mul_(self.unscale.view(shape)).round_().clamp_(-LIMIT, LIMIT)

    def on_rows(self, x: torch.Tensor) -> torch.Tensor:
        """A 1×1 convolution on (N, in) rows, one per position -> (N, out): the same sums as a matrix product.

        ``x`` must be within ±LIMIT already (the caller's clamp; a chain of these keeps it so).
        """
        if self.transposed or self.weight.shape[2:] != (1, 1) or self.groups != 1:
            raise TypeError("only a plain 1x1 convolution runs on rows")
        if not hasattr(self, "_row_matrix"):
            self._row_matrix = self.weight[:, :, 0, 0].t().contiguous()
        return self.rescale(x @ self._row_matrix, channels_last=True)


def _taps(radius: int, parity: int, known_parity: int | None) -> list[tuple[int, int]]:
    """Offsets (dy, dx) of a (2r+1)² kernel that reach a possibly nonzero input from an output of ``parity``.

    Parity is that of row + column. ``known_parity`` None: the input is dense, every tap counts; else
    the input is zero off that parity, and only the taps with (parity + dy + dx) of its parity reach it.
    """
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if known_parity is None or (parity + dy + dx) % 2 == known_parity]


class ExactContextConv:
    """A refinement's context convolution, computed only where its output is used.

    A checkerboard pass uses the parameters of half the positions (one parity of row + column),
    and its context input is often zero on the other half (only the anchors are decoded). So the
    sums are gathered (im2col) at the used positions from the taps that can see a nonzero input, and
    formed by one matrix product: 2x to 4x fewer products than the whole convolution. They are the
    same integer sums, so the same bits.
    """

    def __init__(self, conv: ExactConv, parity: int, known_parity: int | None):
        if conv.transposed or conv.groups != 1 or tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1):
            raise TypeError("a context convolution must be a plain stride-1 convolution")
        out_channels, in_channels, kh, kw = conv.weight.shape
        self.radius = kh // 2
        if kh != kw or kh % 2 == 0 or tuple(conv.padding) != (self.radius, self.radius):
            raise TypeError("a context convolution must be square, odd and 'same'-padded")
        self.conv = conv
        self.taps = _taps(self.radius, parity, known_parity)
        r = self.radius
        # (out, in, kh, kw) -> rows (tap, in), columns out: matches the gathered (N, tap·in) rows
        self.matrix = torch.stack([conv.weight[:, :, dy + r, dx + r] for dy, dx in self.taps], dim=1).reshape(
            out_channels, len(self.taps) * in_channels).t().contiguous()

    def __call__(self, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``x`` (C, R, W) on the grid, zero beyond its edges; outputs at (``rows``, ``cols``): (N, out)."""
        r = self.radius
        channels, _, width = x.shape
        # one row of channels per position: the gather below then copies contiguous rows
        padded = F.pad(_clamped(x), (r, r, r, r)).permute(1, 2, 0).reshape(-1, channels)
        stride = width + 2 * r
        offsets = torch.tensor([dy * stride + dx for dy, dx in self.taps])
        centres = (rows + r) * stride + cols + r
        columns = padded.index_select(0, (centres[:, None] + offsets[None, :]).reshape(-1))
        return self.conv.rescale(columns.view(len(centres), -1) @ self.matrix, channels_last=True)


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
    """``base + refine(cat(base, context(known)))`` at the positions of one parity: the checkerboard context and
    each channel slice's.

    ``parity``: the positions (row + column parity) whose parameters the pass codes; ``known_parity``: where
    ``known`` may be nonzero (None: everywhere). Elsewhere the result keeps ``base``'s values, which no pass
    uses. Computed in bands of rows whose gathered float64 temporaries hold at most :attr:`BAND_ELEMENTS`
    values, so that a large image's memory stays small; sums being exact, the bands give the same integers
    as the whole. The result is int32 (:func:`compact`).
    """

    #: Most float64 values of one band's gathered context inputs (32 MB); a 768×512 image is one band.
    BAND_ELEMENTS = 2 ** 22

    def __init__(self, module: CheckerboardContext | SliceRefinement, parity: int, known_parity: int | None):
        self.parity = parity
        self.context = ExactContextConv(ExactConv(module.context), parity, known_parity)
        # (N, channels) rows within ±LIMIT in, and out: each 1×1 layer's output is clamped by its rescale
        self.refine = [layer.on_rows if isinstance(layer, ExactConv) else layer
                       for layer in ExactSequential(module.refine).layers]

    def __call__(self, base: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        if base.shape[0] != 1:
            raise ValueError("the entropy parameters are computed one image at a time")
        _, channels, height, width = base.shape
        out = base.to(torch.int32, copy=True)
        flat_out, flat_base = out.view(channels, -1), base.reshape(channels, -1)
        reach = self.context.radius
        per_row = max(1, (width + 1) // 2) * self.context.matrix.shape[0]
        band_rows = max(1, self.BAND_ELEMENTS // per_row)
        for top in range(0, height, band_rows):
            bottom = min(height, top + band_rows)
            first, last = max(0, top - reach), min(height, bottom + reach)
            rows = torch.arange(top, bottom)[:, None].expand(-1, width)
            cols = torch.arange(width)[None, :].expand(bottom - top, -1)
            used = (rows + cols) % 2 == self.parity
            rows, cols = rows[used], cols[used]
            if rows.numel() == 0:
                continue
            where = rows * width + cols
            params = flat_base.index_select(1, where).t().to(torch.float64)  # (N, channels); may reach 2·LIMIT
            x = torch.cat([_clamped(params), self.context(known[0, :, first:last], rows - first, cols)], dim=1)
            for layer in self.refine:
                x = layer(x)
            flat_out[:, where] = x.add_(params).t().to(torch.int32)
        return out


def exact_layer(layer: nn.Module):
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
        return ExactConv(layer)
    if isinstance(layer, nn.LeakyReLU):
        return ExactLeakyReLU(layer)
    if isinstance(layer, nn.Sequential):
        return ExactSequential(layer)
    if isinstance(layer, CheckerboardContext):  # anchors known, the non-anchors' parameters wanted
        return ExactRefinement(layer, parity=1, known_parity=0)
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


def snap_exact(params: torch.Tensor, thresholds: np.ndarray, mean_grid: int,
               where: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(1, 2C, H, W) integer-unit (scales, means) -> (means on the 1/mean_grid grid, scale indexes).

    ``where`` (boolean C×H×W): only those positions, flattened in C order (default: all, C×H×W).
    """
    scales, means = np.split(params[0].numpy(), 2)
    if where is not None:
        scales, means = scales[where], means[where]
    grid_bits = int(math.log2(mean_grid))
    snapped = np.round(means.astype(np.float64) * 2.0 ** (grid_bits - ACTIVATION_BITS)) / mean_grid
    # bucketize: index i where thresholds[i-1] <= |scale| < thresholds[i] (exact comparisons)
    indexes = np.searchsorted(thresholds, np.abs(scales.astype(np.float64)), side="right")
    return snapped, indexes


def exact_path():
    """CPU, oneDNN off (its float64 support varies); threads and BLAS branch no longer matter."""
    return torch.backends.mkldnn.flags(enabled=False)


class ExactChannelContext:
    """:class:`ldcodec.codec.channel_context.ChannelContext` on integer units."""

    def __init__(self, module: ChannelContext):
        self.slices = module.slices
        # anchor pass: the earlier slices' anchors are known; non-anchor pass: the earlier slices whole
        self.anchor_nets = [ExactRefinement(net, parity=0, known_parity=0) for net in module.anchor_nets]
        self.rest_nets = [ExactRefinement(net, parity=1, known_parity=None) for net in module.rest_nets]

    def refine(self, second_pass: bool, index: int, params: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        return (self.rest_nets if second_pass else self.anchor_nets)[index - 1](params, known)
