"""Gained latents <-> the latent section, with the coder's parameters on the fixed path.

A hyperprior model codes all latents in one pass with the parameters of h_s(ẑ). A
checkerboard model (:mod:`ldcodec.codec.checkerboard`) codes two passes in one
section: the anchors with h_s(ẑ)'s parameters, then the rest with parameters that
the context computes from the decoded anchors. Every parameter goes through the
fixed float32 path and is snapped (:mod:`ldcodec.codec.entropy_parameters`), so
encoder and decoder feed the coder the same models whatever ran the transforms.
"""

from __future__ import annotations

import copy

import numpy as np

from ldcodec.bitstream.entropy_coding import LatentSectionDecoder, encode_latent_passes
from ldcodec.codec.checkerboard import anchor_mask
from ldcodec.codec.entropy_parameters import (
    Y_SYMBOL_MAX,
    Y_SYMBOL_MIN,
    GaussianParameters,
    context_parameters,
    hyper_parameters,
    snap_parameters,
)
from ldcodec.codec.model import HyperpriorModel


def _symbols(y_g: np.ndarray, params: GaussianParameters) -> np.ndarray:
    return np.clip(np.round(y_g - params.means), Y_SYMBOL_MIN, Y_SYMBOL_MAX).astype(np.int32)


class LatentCoder:
    """The entropy model of a model's latents, as the arithmetic coder sees it."""

    def __init__(self, model: HyperpriorModel):
        # Float32, contiguous CPU copies: the transforms may live on a GPU or in channels_last.
        self._hyper_synthesis = copy.deepcopy(model.h_s).cpu().float().eval()
        context = model.context_model
        self._context = copy.deepcopy(context).cpu().float().eval() if context is not None else None

    @property
    def passes(self) -> int:
        return 1 if self._context is None else 2

    def encode(self, y_g: np.ndarray, z_hat: np.ndarray) -> bytes:
        """``y_g``: gained latents (C, H, W) float64; ``z_hat``: integer hyper-latents (N, h, w)."""
        hyper = hyper_parameters(self._hyper_synthesis, z_hat)
        first = snap_parameters(hyper)
        if self._context is None:
            return encode_latent_passes([(_symbols(y_g, first), first.scale_indexes)])
        anchors = self._anchor_positions(y_g.shape)
        anchor_symbols = _symbols(y_g, first)
        decoded_anchors = np.where(anchors, anchor_symbols + first.means, 0.0)
        second = snap_parameters(context_parameters(self._context, hyper, decoded_anchors))
        rest = ~anchors
        return encode_latent_passes([
            (anchor_symbols[anchors], first.scale_indexes[anchors]),
            (_symbols(y_g, second)[rest], second.scale_indexes[rest]),
        ])

    def decode(self, data: bytes, z_hat: np.ndarray) -> np.ndarray:
        """The dequantized gained latents ŷ (float64, C×H×W, the shape h_s(ẑ) gives) of a latent section."""
        hyper = hyper_parameters(self._hyper_synthesis, z_hat)
        first = snap_parameters(hyper)
        shape = first.means.shape
        section = LatentSectionDecoder(data)
        if self._context is None:
            y_hat = section.decode(first.scale_indexes) + first.means
            section.finish()
            return y_hat
        anchors = self._anchor_positions(shape)
        y_hat = np.zeros(shape, dtype=np.float64)
        y_hat[anchors] = section.decode(first.scale_indexes[anchors]) + first.means[anchors]
        second = snap_parameters(context_parameters(self._context, hyper, y_hat))
        rest = ~anchors
        y_hat[rest] = section.decode(second.scale_indexes[rest]) + second.means[rest]
        section.finish()
        return y_hat

    @staticmethod
    def _anchor_positions(shape: tuple[int, ...]) -> np.ndarray:
        """Boolean (C, H, W): True at the anchors (every channel shares the spatial pattern)."""
        channels, height, width = shape
        mask = anchor_mask(height, width).numpy()[0, 0].astype(bool)
        return np.broadcast_to(mask, (channels, height, width))
