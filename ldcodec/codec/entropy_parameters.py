"""The entropy-model parameters the arithmetic coder sees, computed reproducibly.

Encoder and decoder must feed the coder bit-identical distributions, whatever
precision, device or thread count the transforms ran with. Two rules make that so:

* the hyper-latent prior is a fixed table (one probability vector per channel)
  computed once at export time and stored in the weights file;
* the Gaussian parameters of the latents come from ``h_s(ẑ)`` evaluated on a fixed
  path — float32, CPU, one thread, no oneDNN, no autocast — and are then snapped:
  means to a 1/64 grid, scales to the index of a log-spaced table. Snapping
  absorbs last-bit differences that a different BLAS kernel could still cause.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck
from torch import nn

from ldcodec.codec.model import SCALE_LOWER_BOUND

#: Hyper-latent symbols are clamped to [-Z_RADIUS, Z_RADIUS].
Z_RADIUS = 64
#: Latent symbols (gained latents minus snapped mean) are clamped to this range.
Y_SYMBOL_MIN, Y_SYMBOL_MAX = -2048, 2047
#: Means are snapped to multiples of 1 / MEAN_GRID.
MEAN_GRID = 64
#: Scale table: SCALE_LEVELS log-spaced values from SCALE_LOWER_BOUND to SCALE_MAX.
SCALE_LEVELS = 64
SCALE_MAX = 256.0
SCALE_TABLE = np.exp(
    np.linspace(np.log(SCALE_LOWER_BOUND), np.log(SCALE_MAX), SCALE_LEVELS)
).astype(np.float64)
_LOG_SCALE_STEP = (np.log(SCALE_MAX) - np.log(SCALE_LOWER_BOUND)) / (SCALE_LEVELS - 1)


def hyper_prior_table(entropy_bottleneck: EntropyBottleneck, radius: int = Z_RADIUS) -> torch.Tensor:
    """Per-channel probabilities of the integers -radius..radius, shape (C, 2·radius+1).

    A floor keeps every symbol codable; rows are normalised to sum to one.
    """
    channels = entropy_bottleneck.channels
    support = torch.arange(-radius, radius + 1, dtype=torch.float32)
    with torch.no_grad(), fixed_cpu_path():
        inputs = support[None, None, :].repeat(channels, 1, 1)
        pmf, _, _ = entropy_bottleneck._likelihood(inputs)
    pmf = pmf[:, 0, :].double().clamp_min(0.0) + 1e-9
    return (pmf / pmf.sum(dim=1, keepdim=True)).float()


@contextlib.contextmanager
def fixed_cpu_path():
    """float32, one thread, native kernels, autocast off: a reproducible evaluation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            # Toggling oneDNN off warns about Intel-GPU TF32, irrelevant here.
            warnings.simplefilter("ignore", UserWarning)
            with torch.backends.mkldnn.flags(enabled=False), torch.autocast("cpu", enabled=False):
                yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class GaussianParameters:
    """Snapped Gaussian parameters of the gained latents, as float64 arrays (C, H, W)."""

    means: np.ndarray
    scale_indexes: np.ndarray

    @property
    def scales(self) -> np.ndarray:
        return SCALE_TABLE[self.scale_indexes]


def snap_means(means: np.ndarray) -> np.ndarray:
    return np.round(means.astype(np.float64) * MEAN_GRID) / MEAN_GRID


def snap_scales(scales: np.ndarray) -> np.ndarray:
    s = np.clip(np.abs(scales.astype(np.float64)), SCALE_LOWER_BOUND, SCALE_MAX)
    idx = np.round((np.log(s) - np.log(SCALE_LOWER_BOUND)) / _LOG_SCALE_STEP)
    return np.clip(idx, 0, SCALE_LEVELS - 1).astype(np.int64)


def hyper_parameters(hyper_synthesis: nn.Module, z_hat: np.ndarray) -> torch.Tensor:
    """h_s(ẑ) on the fixed path, unsnapped: (1, 2C, H, W) float32 (scales, then means).

    ``hyper_synthesis`` must be a float32, contiguous (NCHW) CPU module.
    """
    z = torch.from_numpy(np.ascontiguousarray(z_hat, dtype=np.float32))[None]
    with torch.inference_mode(), fixed_cpu_path():
        return hyper_synthesis(z)


def context_parameters(context_model, params: torch.Tensor, decoded: np.ndarray) -> torch.Tensor:
    """A context's refined parameters on the fixed path, unsnapped.

    ``context_model(params, decoded)``: the checkerboard context (``params``: h_s's output,
    ``decoded``: ŷ at the anchors) or one slice's channel refinement (``params``: the slice's,
    ``decoded``: the earlier slices' ŷ). ``decoded`` is (C, H, W), 0 where not yet decoded; its
    values are integers plus multiples of 1/64, so exact in float32 on both sides.
    """
    y = torch.from_numpy(np.ascontiguousarray(decoded, dtype=np.float32))[None]
    with torch.inference_mode(), fixed_cpu_path():
        return context_model(params, y)


def snap_parameters(params: torch.Tensor) -> GaussianParameters:
    """(1, 2C, H, W) raw (scales, means) -> the snapped parameters the coder uses."""
    scales, means = params[0].chunk(2, 0)
    return GaussianParameters(means=snap_means(means.numpy()), scale_indexes=snap_scales(scales.numpy()))


def gaussian_parameters(hyper_synthesis: nn.Module, z_hat: np.ndarray) -> GaussianParameters:
    """Snapped (means, scale indexes) from integer hyper-latents ``z_hat`` of shape (C, h, w) alone."""
    return snap_parameters(hyper_parameters(hyper_synthesis, z_hat))
