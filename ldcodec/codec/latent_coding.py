"""Gained latents <-> the latent section, with the coder's parameters on the fixed path.

A hyperprior model codes all latents in one pass with the parameters of h_s(ẑ). A
checkerboard model (:mod:`ldcodec.codec.checkerboard`) codes two passes in one
section: the anchors with h_s(ẑ)'s parameters, then the rest with parameters that
the context computes from the decoded anchors. A channel context
(:mod:`ldcodec.codec.channel_context`) codes each of those passes slice by slice, each
slice's parameters refined from the slices decoded before it. Every parameter goes
through a reproducible path and is snapped, so encoder and decoder feed the coder the same
models whatever ran the transforms: the fixed float32 path of :mod:`ldcodec.codec.entropy_parameters`
for models up to hp-v6, exact integer arithmetic (:mod:`ldcodec.codec.exact_parameters`) for models
whose config says ``parameter_arithmetic="exact"``.
Encoder and decoder walk the passes with the same code (:meth:`LatentCoder._walk`).
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Callable

import numpy as np

from ldcodec.bitstream.entropy_coding import LatentSectionDecoder, encode_latent_passes
from ldcodec.bitstream.symbol_models import symbol_models
import torch

from ldcodec.codec.channel_context import slice_parameters
from ldcodec.codec.checkerboard import anchor_mask
from ldcodec.codec.entropy_parameters import (
    MEAN_GRID,
    SCALE_LEVELS,
    SCALE_MAX,
    Y_SYMBOL_MAX,
    Y_SYMBOL_MIN,
    GaussianParameters,
    context_parameters,
    hyper_parameters,
    snap_parameters,
)
from ldcodec.codec.exact_parameters import (
    ExactChannelContext,
    ExactRefinement,
    ExactSequential,
    compact,
    exact_path,
    scale_thresholds,
    snap_exact,
    to_grid,
)
from ldcodec.codec.model import SCALE_LOWER_BOUND, HyperpriorModel

#: ``code(params, start, stop, positions)``: codes (or decodes) the latents of channels
#: ``start:stop`` at ``positions`` (boolean, the slice's shape) with ``params`` (theirs, flattened
#: in C order), and returns their dequantized values ŷ in that order.
PassCoder = Callable[[GaussianParameters, int, int, np.ndarray], np.ndarray]


def _symbols(y_g: np.ndarray, params: GaussianParameters) -> np.ndarray:
    return np.clip(np.round(y_g - params.means), Y_SYMBOL_MIN, Y_SYMBOL_MAX).astype(np.int32)


class LatentCoder:
    """The entropy model of a model's latents, as the arithmetic coder sees it."""

    def __init__(self, model: HyperpriorModel):
        self.exact = model.config.parameter_arithmetic == "exact"
        if self.exact:
            self._hyper_synthesis = ExactSequential(model.h_s)
            # the checkerboard context: anchors (parity 0) known, the non-anchors' (parity 1) parameters wanted
            self._context = (ExactRefinement(model.context_model, parity=1, known_parity=0)
                             if model.context_model is not None else None)
            self._channel_context = (ExactChannelContext(model.channel_context)
                                     if model.channel_context is not None else None)
            self._thresholds = scale_thresholds(SCALE_LOWER_BOUND, SCALE_MAX, SCALE_LEVELS)
        else:
            # Float32, contiguous CPU copies: the transforms may live on a GPU or in channels_last.
            def fixed(module):
                return copy.deepcopy(module).cpu().float().eval() if module is not None else None

            self._hyper_synthesis = fixed(model.h_s)
            self._context = fixed(model.context_model)
            self._channel_context = fixed(model.channel_context)
        self._symbols = symbol_models(model.config.symbol_model)
        m = model.config.latent_channels
        self._slices = self._channel_context.slices if self._channel_context is not None else [(0, m)]

    @property
    def passes(self) -> int:
        return 1 if self._context is None else 2 * len(self._slices)

    def encode(self, y_g: np.ndarray, z_hat: np.ndarray) -> bytes:
        """``y_g``: gained latents (C, H, W) float64; ``z_hat``: integer hyper-latents (N, h, w)."""
        passes = []

        def code(params: GaussianParameters, start: int, stop: int, positions: np.ndarray) -> np.ndarray:
            symbols = _symbols(y_g[start:stop][positions], params)
            passes.append((symbols, params.scale_indexes))
            return symbols + params.means

        self._walk(z_hat, code)
        return encode_latent_passes(passes, self._symbols)

    def decode(self, data: bytes, z_hat: np.ndarray) -> np.ndarray:
        """The dequantized gained latents ŷ (float64, C×H×W, the shape h_s(ẑ) gives) of a latent section."""
        section = LatentSectionDecoder(data, self._symbols)

        def code(params: GaussianParameters, start: int, stop: int, positions: np.ndarray) -> np.ndarray:
            return section.decode(params.scale_indexes) + params.means

        y_hat = self._walk(z_hat, code)
        section.finish()
        return y_hat

    # The parameter arithmetic: float32 on the fixed path, or exact integers. ------------------
    def _hyper(self, z_hat: np.ndarray) -> torch.Tensor:
        """h_s(ẑ), unsnapped: (1, 2C, H, W)."""
        if not self.exact:
            return hyper_parameters(self._hyper_synthesis, z_hat)
        with torch.inference_mode(), exact_path():
            return compact(self._hyper_synthesis(to_grid(z_hat)[None]))

    def _refined(self, context, params: torch.Tensor, decoded: np.ndarray) -> torch.Tensor:
        """``context(params, decoded)``, unsnapped (see :func:`entropy_parameters.context_parameters`)."""
        if not self.exact:
            return context_parameters(context, params, decoded)
        with torch.inference_mode(), exact_path():
            return compact(context(params, to_grid(decoded)[None]))

    def _snap(self, params: torch.Tensor, where: np.ndarray | None = None) -> GaussianParameters:
        """Snapped parameters at ``where`` (boolean, C×H×W), flattened in C order; all of them (C×H×W) if None."""
        if not self.exact:
            snapped = snap_parameters(params)
            if where is None:
                return snapped
            return GaussianParameters(means=snapped.means[where], scale_indexes=snapped.scale_indexes[where])
        means, indexes = snap_exact(params, self._thresholds, MEAN_GRID, where)
        return GaussianParameters(means=means, scale_indexes=indexes)

    def _walk(self, z_hat: np.ndarray, code: PassCoder) -> np.ndarray:
        """Every pass in the stream's order, each one's parameters from what is decoded before it: ŷ."""
        hyper = self._hyper(z_hat)
        channels, height, width = hyper.shape[1] // 2, hyper.shape[2], hyper.shape[3]
        y_hat = np.zeros((channels, height, width), dtype=np.float64)
        if self._context is None:
            everywhere = np.ones(y_hat.shape, dtype=bool)
            y_hat[everywhere] = code(self._snap(hyper, everywhere), 0, channels, everywhere)
            return y_hat
        anchors = self._anchor_positions(y_hat.shape)
        self._walk_pass(hyper, anchors, False, y_hat, code)
        refined = self._refined(self._context, hyper, y_hat)  # y_hat holds the anchors only
        self._walk_pass(refined, ~anchors, True, y_hat, code)
        return y_hat

    def _walk_pass(self, base, positions: np.ndarray, second_pass: bool, y_hat: np.ndarray, code: PassCoder) -> None:
        """One checkerboard pass, slice by slice; fills ``y_hat`` at ``positions``."""
        for index, (start, stop) in enumerate(self._slices):
            raw = slice_parameters(base, start, stop)
            if index > 0:
                refine = partial(self._channel_context.refine, second_pass, index)
                raw = self._refined(refine, raw, y_hat[:start])
            where = positions[start:stop]
            y_hat[start:stop][where] = code(self._snap(raw, where), start, stop, where)

    @staticmethod
    def _anchor_positions(shape: tuple[int, ...]) -> np.ndarray:
        """Boolean (C, H, W): True at the anchors (every channel shares the spatial pattern)."""
        channels, height, width = shape
        mask = anchor_mask(height, width).numpy()[0, 0].astype(bool)
        return np.broadcast_to(mask, (channels, height, width))
