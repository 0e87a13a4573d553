"""Symbol-exact range coding of hyper-latents and latents, and the snapping rules."""

from __future__ import annotations

import numpy as np
import pytest

from ldcodec.bitstream.entropy_coding import (
    decode_hyper_latents,
    decode_latents,
    encode_hyper_latents,
    encode_latents,
)
from ldcodec.codec.entropy_parameters import (
    MEAN_GRID,
    SCALE_LEVELS,
    SCALE_TABLE,
    Y_SYMBOL_MAX,
    Y_SYMBOL_MIN,
    snap_means,
    snap_scales,
)
from ldcodec.errors import BitstreamError


def test_hyper_latents_decode_symbol_exact():
    rng = np.random.default_rng(1)
    table = rng.random((5, 129)).astype(np.float32)
    table[:, 60:69] += 20  # peaked, like a trained prior
    table /= table.sum(1, keepdims=True)
    symbols = rng.integers(0, 129, size=(5, 7, 9)).astype(np.int32)
    symbols[0, 0, 0], symbols[1, 0, 0] = 0, 128  # both ends of the alphabet, even if improbable
    blob = encode_hyper_latents(symbols, table)
    assert np.array_equal(decode_hyper_latents(blob, table, symbols.shape), symbols)


def test_latents_decode_symbol_exact_including_extremes():
    rng = np.random.default_rng(2)
    idx = rng.integers(0, SCALE_LEVELS, size=(6, 8, 10))
    symbols = np.round(rng.normal(0, SCALE_TABLE[idx])).clip(Y_SYMBOL_MIN, Y_SYMBOL_MAX).astype(np.int32)
    symbols[0, 0, 0], symbols[0, 0, 1] = Y_SYMBOL_MIN, Y_SYMBOL_MAX
    idx[0, 0, :2] = 0  # smallest scale: the extremes are wildly improbable, still codable
    blob = encode_latents(symbols, idx)
    assert np.array_equal(decode_latents(blob, idx), symbols)


def test_coded_size_tracks_the_model():
    """Symbols that fit a narrow scale cost far less than the same count under a wide one."""
    zeros = np.zeros((4, 16, 16), dtype=np.int32)
    narrow = encode_latents(zeros, np.zeros_like(zeros, dtype=np.int64))
    wide = encode_latents(zeros, np.full_like(zeros, SCALE_LEVELS - 1, dtype=np.int64))
    assert len(narrow) < len(wide) / 10


def test_snapping_is_a_pure_function_onto_grids():
    means = np.array([0.0, 0.007, -3.51234, 100.49999])
    snapped = snap_means(means)
    assert np.allclose(snapped * MEAN_GRID, np.round(snapped * MEAN_GRID))
    assert np.all(np.abs(snapped - means) <= 0.5 / MEAN_GRID + 1e-12)
    idx = snap_scales(np.array([-1.0, 0.0, 0.11, 1.0, 1e9]))
    assert idx.min() >= 0 and idx.max() == SCALE_LEVELS - 1
    assert np.all(np.diff(SCALE_TABLE) > 0)


def test_garbage_payload_of_wrong_length_is_an_error():
    with pytest.raises(BitstreamError):
        decode_latents(b"\x00\x01\x02", np.zeros((1, 2, 2), dtype=np.int64))


# The "tables-v1" symbol model (models from hp-v8 on) ---------------------------------------

def test_table_models_round_trip_and_cost_what_the_gaussians_cost():
    from ldcodec.bitstream.symbol_models import symbol_models

    tables = symbol_models("tables-v1")
    rng = np.random.default_rng(11)
    idx = rng.integers(0, SCALE_LEVELS, size=(6, 40, 40))
    symbols = np.round(rng.normal(0, SCALE_TABLE[idx])).clip(Y_SYMBOL_MIN, Y_SYMBOL_MAX).astype(np.int32)
    symbols[0, 0, :2] = Y_SYMBOL_MIN, Y_SYMBOL_MAX  # both ends of the alphabet, however improbable
    blob = encode_latents(symbols, idx, tables)
    assert np.array_equal(decode_latents(blob, idx, tables), symbols)
    gaussian = encode_latents(symbols, idx)
    assert blob != gaussian  # a different code ...
    assert abs(len(blob) - len(gaussian)) <= 0.002 * len(gaussian) + 8  # ... for the same probabilities


def test_the_shipped_tables_are_the_discretised_gaussians_of_the_scale_table():
    from ldcodec.bitstream.symbol_models import TABLES_PATH, TABLES_SHA256, gaussian_tables, load_tables

    shipped = load_tables(TABLES_PATH, TABLES_SHA256)
    assert shipped.shape == (SCALE_LEVELS, Y_SYMBOL_MAX - Y_SYMBOL_MIN + 1)
    # recomputed with this platform's erfc: equal to float32 rounding (the file, not this, is what codes)
    assert np.allclose(shipped, gaussian_tables(SCALE_TABLE), rtol=1e-6, atol=1e-30)
    assert np.allclose(shipped.sum(axis=1), 1.0, atol=1e-5)
    centre = -Y_SYMBOL_MIN
    assert np.all(shipped[:, centre] == shipped.max(axis=1))  # most probable at 0
    assert np.all(np.diff(shipped[:, centre]) < 0)  # wider scales, flatter tables


def test_a_damaged_table_file_is_refused(tmp_path):
    from ldcodec.bitstream.symbol_models import TABLES_PATH, TABLES_SHA256, load_tables

    data = bytearray(TABLES_PATH.read_bytes())
    data[-5] ^= 0x01
    damaged = tmp_path / "tables.safetensors"
    damaged.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="damaged"):
        load_tables(damaged, TABLES_SHA256)


def test_an_unknown_symbol_model_is_refused():
    from ldcodec.bitstream.symbol_models import symbol_models
    from ldcodec.codec.model import ModelConfig

    with pytest.raises(ValueError, match="symbol_model"):
        ModelConfig(symbol_model="laplace")
    with pytest.raises(ValueError, match="symbol model"):
        symbol_models("laplace")
