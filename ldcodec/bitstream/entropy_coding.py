"""Arithmetic coding of the quantized symbols with constriction's range coder.

The hyper-latents use one categorical model per channel (the table shipped in
the weights); the latents use one model per entry of the 64-level scale table,
a quantized Gaussian or its tabulated twin (:mod:`ldcodec.bitstream.symbol_models`,
named by the model's config). Latent symbols are grouped by scale index so each
group is coded with one concrete model — fast, and the decoder, which knows the
indexes, visits the groups in the same order.
"""

from __future__ import annotations


import constriction
import numpy as np

from ldcodec.bitstream.symbol_models import symbol_models
from ldcodec.codec.entropy_parameters import SCALE_TABLE, Y_SYMBOL_MAX, Y_SYMBOL_MIN
from ldcodec.errors import BitstreamError

# constriction's submodules are attributes of the extension module, not importable paths.
Categorical = constriction.stream.model.Categorical
RangeEncoder = constriction.stream.queue.RangeEncoder
RangeDecoder = constriction.stream.queue.RangeDecoder


def _to_bytes(encoder: RangeEncoder) -> bytes:
    return encoder.get_compressed().astype("<u4").tobytes()


def _decoder(data: bytes, what: str) -> RangeDecoder:
    if len(data) % 4:
        raise BitstreamError(f"corrupt stream: {what} section length {len(data)} is not a multiple of 4")
    return RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))


# Plausibility checks ----------------------------------------------------------------------
#
# constriction's models give every symbol of the alphabet at least one quantum (2^-24) of
# probability, so no symbol is ever free: a symbol under a model whose most probable
# symbol has probability p_max costs at least -log2(p_max) bits, and a range coder with a
# 64-bit state and 32-bit words that has coded symbols worth I bits has written at least
# I / 32 words (its range shrinks by each symbol's probability and is renormalised 32 bits
# at a time; sealing adds one or two words). A section shorter than the symbols it must
# hold can therefore not come from an encoder: it is refused *before* the decoder runs
# past its end on zero padding (which constriction does silently) and before any
# full-resolution work. The bounds below are lower bounds, so valid streams always pass
# (a flat image still costs its ~0.0004 bits per latent); tests/test_hostile_headers.py
# checks both directions.

_PRECISION_BITS = 24  # constriction's default for the Python models
_QUANTUM = 2.0 ** -_PRECISION_BITS
_LATENT_ALPHABET = Y_SYMBOL_MAX - Y_SYMBOL_MIN + 1


def _min_bits(p_max: np.ndarray, alphabet: int) -> np.ndarray:
    """Fewest bits a symbol can cost under a model whose largest probability is ``p_max``.

    The quantized probability may exceed the float one by rounding (a few quanta: 2^-20
    covers it) but never leaves the other ``alphabet - 1`` symbols less than one quantum each.
    """
    cap = 1.0 - (alphabet - 1) * _QUANTUM
    return -np.log2(np.minimum(cap, np.asarray(p_max, dtype=np.float64) + 2.0 ** -20))


#: The symbol models of hp-v1 … hp-v7 (the default where a caller names none).
GAUSSIAN_SYMBOLS = symbol_models("quantized-gaussian")


def latent_min_bits(symbols) -> np.ndarray:
    """Fewest bits of one latent symbol, per scale level, under ``symbols``' models."""
    return _min_bits(symbols.max_probabilities, _LATENT_ALPHABET)


#: Fewest bits of one latent symbol, per scale level, under the quantized Gaussians.
_LATENT_MIN_BITS = latent_min_bits(GAUSSIAN_SYMBOLS)


def _check_room(data: bytes, min_bits: float, what: str) -> None:
    """Refuse a section too short to hold symbols worth ``min_bits`` (with 1 % + 2 words of slack)."""
    needed_words = int((0.99 * min_bits - 64.0) // 32.0)
    if needed_words > 0 and len(data) // 4 < needed_words:
        raise BitstreamError(f"corrupt stream: {what} section of {len(data)} bytes is too short for the declared "
                             f"image size (its symbols need at least {4 * needed_words} bytes)")
    if min_bits > 0 and not data:
        raise BitstreamError(f"corrupt stream: {what} section is empty")


def _check_consumed(decoder: RangeDecoder, what: str) -> None:
    """After the last symbol a valid section is used up exactly (constriction's ``maybe_exhausted``).

    False means words were left over or the decoder ran past the end on padding: a
    truncated, padded or spliced section. (It can miss some such sections, never flags a
    valid one.)
    """
    if not decoder.maybe_exhausted():
        raise BitstreamError(f"corrupt stream: {what} section does not end where its symbols do "
                             "(truncated, padded or spliced)")


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
    min_bits = h * w * float(_min_bits(table.astype(np.float64).max(axis=1), table.shape[1]).sum())
    _check_room(data, min_bits, "hyper-latent")
    out = np.empty((channels, h * w), dtype=np.int32)
    try:
        for c, model in enumerate(_categorical_models(table)):
            out[c] = decoder.decode(model, h * w)
    except Exception as exc:  # constriction reports invalid data with various exception types
        raise BitstreamError(f"corrupt stream: hyper-latents do not decode ({exc})") from None
    _check_consumed(decoder, "hyper-latent")
    return out.reshape(shape)


def _groups(scale_indexes: np.ndarray, symbols):
    flat = scale_indexes.ravel()
    # as uint8 (64 levels), numpy's stable sort is a radix sort: ~10x faster than on int64, same order
    order = np.argsort(flat.astype(np.uint8), kind="stable")
    counts = np.bincount(flat, minlength=len(SCALE_TABLE))
    start = 0
    for level, count in enumerate(counts):
        if count:
            yield order[start : start + count], symbols.model(level)
            start += count


def encode_latents(symbols: np.ndarray, scale_indexes: np.ndarray, models=GAUSSIAN_SYMBOLS) -> bytes:
    """``symbols``: ints in [Y_SYMBOL_MIN, Y_SYMBOL_MAX], same shape as ``scale_indexes``."""
    return encode_latent_passes([(symbols, scale_indexes)], models)


def encode_latent_passes(passes: list[tuple[np.ndarray, np.ndarray]], models=GAUSSIAN_SYMBOLS) -> bytes:
    """Several (symbols, scale indexes) passes, one after the other, in one range-coded section.

    A two-pass (checkerboard) model needs the first pass decoded before it knows the
    second pass's scales; :class:`LatentSectionDecoder` reads the passes in this order.
    ``models``: the symbol models (:mod:`ldcodec.bitstream.symbol_models`).
    """
    encoder = RangeEncoder()
    for symbols, scale_indexes in passes:
        flat = np.ascontiguousarray(symbols.ravel(), dtype=np.int32)
        if models.offset:
            flat = flat - np.int32(models.offset)
        for positions, model in _groups(scale_indexes, models):
            encoder.encode(flat[positions], model)
    return _to_bytes(encoder)


class LatentSectionDecoder:
    """Reads the passes of a latent section in order; ``finish`` checks it was used up exactly.

    Before each pass, the section must be long enough for all symbols declared so far
    (the plausibility check above), so a short section is refused before any pass runs
    past its end.
    """

    def __init__(self, data: bytes, models=GAUSSIAN_SYMBOLS):
        self._data = data
        self._decoder = _decoder(data, "latent")
        self._models = models
        self._level_bits = latent_min_bits(models)
        self._min_bits = 0.0

    def decode(self, scale_indexes: np.ndarray) -> np.ndarray:
        counts = np.bincount(scale_indexes.ravel(), minlength=len(SCALE_TABLE))
        self._min_bits += float(counts @ self._level_bits)
        _check_room(self._data, self._min_bits, "latent")
        out = np.empty(scale_indexes.size, dtype=np.int32)
        try:
            for positions, model in _groups(scale_indexes, self._models):
                out[positions] = self._decoder.decode(model, len(positions))
        except Exception as exc:
            raise BitstreamError(f"corrupt stream: latents do not decode ({exc})") from None
        if self._models.offset:
            out += np.int32(self._models.offset)
        return out.reshape(scale_indexes.shape)

    def finish(self) -> None:
        _check_consumed(self._decoder, "latent")


def decode_latents(data: bytes, scale_indexes: np.ndarray, models=GAUSSIAN_SYMBOLS) -> np.ndarray:
    """The inverse of :func:`encode_latents` (one pass)."""
    decoder = LatentSectionDecoder(data, models)
    out = decoder.decode(scale_indexes)
    decoder.finish()
    return out
