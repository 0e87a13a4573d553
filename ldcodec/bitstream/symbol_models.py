"""The probability model of one latent symbol given its scale level: what the range coder codes with.

A model's config names one (``ModelConfig.symbol_model``):

* ``"quantized-gaussian"`` (hp-v1 … hp-v7): constriction's ``QuantizedGaussian`` of the level's
  scale. constriction evaluates the Gaussian's CDF (an erf) for every symbol it codes: about
  85 ns a symbol to encode and 150 ns to decode on a Sapphire Rapids core, the largest single cost
  of a low-rate encode (a 768×512 image has 196,608 latents).
* ``"tables-v1"`` (models from hp-v8 on): the same discretised Gaussians, tabulated once by
  :func:`gaussian_tables` and shipped as ``symbol-tables-v1.safetensors`` (pinned by its hash),
  coded with constriction's ``Categorical``: table lookups, about 4 ns a symbol to encode and 40 to
  decode. The probabilities come from a file, not from a platform's ``exp``/``erf``, so every
  machine codes with the same ones.

Both code the symbols of each scale level as one group (see :mod:`ldcodec.bitstream.entropy_coding`).
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from pathlib import Path

import constriction
import numpy as np

from ldcodec.codec.entropy_parameters import SCALE_TABLE, Y_SYMBOL_MAX, Y_SYMBOL_MIN
from ldcodec.codec.model import SYMBOL_MODELS

#: The tables of "tables-v1" and the sha256 of their file (a damaged install is refused, not used).
TABLES_PATH = Path(__file__).with_name("symbol-tables-v1.safetensors")
TABLES_SHA256 = "2347e2917a53471a9094ba59f7e59aa84a2a11ed2c8c1c9e9bf26de1a2b0b795"

_ALPHABET = Y_SYMBOL_MAX - Y_SYMBOL_MIN + 1


def gaussian_tables(scales: np.ndarray, low: int = Y_SYMBOL_MIN, high: int = Y_SYMBOL_MAX) -> np.ndarray:
    """P(k) = Φ((k + ½)/σ) − Φ((k − ½)/σ) for k = low..high, one row per scale, float32.

    Computed from the centre outwards with ``math.erfc`` on the positive side (no cancellation in
    the tails); mass beyond the alphabet is dropped (constriction renormalises and gives every
    symbol at least one quantum). This is how the shipped file was made; the file, not this
    function, is what the coder uses.
    """
    k = np.arange(low, high + 1)
    out = np.empty((len(scales), len(k)), dtype=np.float64)
    for row, sigma in enumerate(scales):
        norm = 1.0 / (float(sigma) * math.sqrt(2.0))
        upper = [0.5 * math.erfc((abs(int(v)) - 0.5) * norm) for v in k]  # P(X > |k| - ½)
        beyond = [0.5 * math.erfc((abs(int(v)) + 0.5) * norm) for v in k]  # P(X > |k| + ½)
        out[row] = np.array(upper) - np.array(beyond)
        out[row, k == 0] = math.erf(0.5 * norm)
    return out.astype(np.float32)


class QuantizedGaussianSymbols:
    """constriction's quantized Gaussians, built per group (hp-v1 … hp-v7 streams)."""

    offset = 0  # symbols are coded as they are

    def __init__(self):
        # the most probable symbol of a zero-mean Gaussian is 0
        self.max_probabilities = np.array([math.erf(0.5 / (float(s) * math.sqrt(2.0))) for s in SCALE_TABLE])

    def model(self, level: int):
        return constriction.stream.model.QuantizedGaussian(Y_SYMBOL_MIN, Y_SYMBOL_MAX, 0.0, float(SCALE_TABLE[level]))


class TableSymbols:
    """One categorical model per scale level, from a table; built on first use and kept."""

    offset = Y_SYMBOL_MIN  # Categorical codes 0..n-1

    def __init__(self, probabilities: np.ndarray):
        if probabilities.shape != (len(SCALE_TABLE), _ALPHABET):
            raise ValueError(f"symbol tables must be {len(SCALE_TABLE)}x{_ALPHABET}, not {probabilities.shape}")
        self._rows = probabilities.astype(np.float64)
        self.max_probabilities = self._rows.max(axis=1) / self._rows.sum(axis=1)
        self._models: dict[int, object] = {}

    def model(self, level: int):
        model = self._models.get(level)
        if model is None:
            model = self._models[level] = constriction.stream.model.Categorical(self._rows[level], perfect=False)
        return model


@lru_cache(maxsize=None)
def symbol_models(name: str):
    """The (shared, cached) symbol models a config names."""
    if name == "quantized-gaussian":
        return QuantizedGaussianSymbols()
    if name == "tables-v1":
        return TableSymbols(load_tables(TABLES_PATH, TABLES_SHA256))
    raise ValueError(f"symbol model must be one of {', '.join(SYMBOL_MODELS)}, not {name!r}")


def load_tables(path: Path, sha256: str) -> np.ndarray:
    from safetensors.numpy import load

    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"{path} is damaged (sha256 differs from the release's); reinstall ldcodec")
    return load(data)["probabilities"]
