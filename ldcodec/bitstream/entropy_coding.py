"""Arithmetic coding of the quantized symbols with constriction's range coder.

The hyper-latents use one categorical model per channel (the table shipped in
the weights); the latents use quantized Gaussians whose scale is one of the 64
entries of the scale table. Latent symbols are grouped by scale index so each
group is coded with one concrete model — fast, and the decoder, which knows the
indexes, visits the groups in the same order.
"""

from __future__ import annotations

import constriction
import numpy as np

from ldcodec.codec.entropy_parameters import SCALE_TABLE, Y_SYMBOL_MAX, Y_SYMBOL_MIN
from ldcodec.errors import BitstreamError

# constriction's submodules are attributes of the extension module, not importable paths.
Categorical = constriction.stream.model.Categorical
QuantizedGaussian = constriction.stream.model.QuantizedGaussian
RangeEncoder = constriction.stream.queue.RangeEncoder
RangeDecoder = constriction.stream.queue.RangeDecoder


def _to_bytes(encoder: RangeEncoder) -> bytes:
    return encoder.get_compressed().astype("<u4").tobytes()


def _decoder(data: bytes, what: str) -> RangeDecoder:
    if len(data) % 4:
        raise BitstreamError(f"corrupt stream: {what} section length {len(data)} is not a multiple of 4")
    return RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))


def _categorical_models(table: np.ndarray) -> list[Categorical]:
    return [Categorical(row.astype(np.float64), perfect=False) for row in table]


def encode_hyper_latents(symbols: np.ndarray, table: np.ndarray) -> bytes:
    """``symbols``: (C, h, w) ints in [0, table.shape[1]); ``table``: (C, K) probabilities."""
    encoder = RangeEncoder()
    for channel, model in zip(symbols, _categorical_models(table)):
        encoder.encode(np.ascontiguousarray(channel.ravel(), dtype=np.int32), model)
    return _to_bytes(encoder)


def decode_hyper_latents(data: bytes, table: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    decoder = _decoder(data, "hyper-latent")
    channels, h, w = shape
    out = np.empty((channels, h * w), dtype=np.int32)
    try:
        for c, model in enumerate(_categorical_models(table)):
            out[c] = decoder.decode(model, h * w)
    except Exception as exc:  # constriction reports invalid data with various exception types
        raise BitstreamError(f"corrupt stream: hyper-latents do not decode ({exc})") from None
    return out.reshape(shape)


def _groups(scale_indexes: np.ndarray):
    flat = scale_indexes.ravel()
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=len(SCALE_TABLE))
    start = 0
    for level, count in enumerate(counts):
        if count:
            yield order[start : start + count], QuantizedGaussian(Y_SYMBOL_MIN, Y_SYMBOL_MAX, 0.0, float(SCALE_TABLE[level]))
            start += count


def encode_latents(symbols: np.ndarray, scale_indexes: np.ndarray) -> bytes:
    """``symbols``: ints in [Y_SYMBOL_MIN, Y_SYMBOL_MAX], same shape as ``scale_indexes``."""
    flat = np.ascontiguousarray(symbols.ravel(), dtype=np.int32)
    encoder = RangeEncoder()
    for positions, model in _groups(scale_indexes):
        encoder.encode(flat[positions], model)
    return _to_bytes(encoder)


def decode_latents(data: bytes, scale_indexes: np.ndarray) -> np.ndarray:
    decoder = _decoder(data, "latent")
    out = np.empty(scale_indexes.size, dtype=np.int32)
    try:
        for positions, model in _groups(scale_indexes):
            out[positions] = decoder.decode(model, len(positions))
    except Exception as exc:
        raise BitstreamError(f"corrupt stream: latents do not decode ({exc})") from None
    return out.reshape(scale_indexes.shape)
