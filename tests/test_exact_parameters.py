"""Exact integer entropy parameters (hp-v7 on): the same bits whatever kernel, thread count or MKL path."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from ldcodec.codec import exact_parameters as ep
from ldcodec.codec.entropy_parameters import SCALE_LEVELS, SCALE_MAX, SCALE_TABLE, snap_scales
from ldcodec.codec.latent_coding import LatentCoder
from ldcodec.codec.model import SCALE_LOWER_BOUND, ModelConfig
from ldcodec.codec.weights import load_weights


def _int_conv_reference(x: np.ndarray, w: np.ndarray, padding: int) -> np.ndarray:
    """Plain int64 convolution (stride 1): the value float64 must reproduce exactly."""
    c_out, c_in, kh, kw = w.shape
    _, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((c_out, h, wd), dtype=np.int64)
    for dy in range(kh):
        for dx in range(kw):
            out += np.einsum("oc,chw->ohw", w[:, :, dy, dx], xp[:, dy:dy + h, dx:dx + wd])
    return out


@pytest.mark.parametrize("transposed", [False, True])
def test_a_layer_computes_exactly_what_integer_arithmetic_gives(transposed):
    torch.manual_seed(0)
    layer = (nn.ConvTranspose2d(12, 8, 5, stride=2, padding=2, output_padding=1) if transposed
             else nn.Conv2d(12, 8, 5, padding=2))
    exact = ep.ExactConv(layer)
    rng = np.random.default_rng(1)
    x = rng.integers(-2 ** 27, 2 ** 27, size=(1, 12, 7, 9)).astype(np.float64)  # near the clamp
    got = exact(torch.from_numpy(x))
    if transposed:  # a stride-2 transposed convolution = zero-stuffing, then a flipped convolution
        stuffed = np.zeros((12, 2 * 7 - 1 + 1, 2 * 9 - 1 + 1), dtype=np.int64)
        stuffed[:, 0:13:2, 0:17:2] = x[0].astype(np.int64)
        w = np.flip(exact.weight.numpy().astype(np.int64), (2, 3)).transpose(1, 0, 2, 3)
        s = _int_conv_reference(stuffed, w, padding=2)
    else:
        s = _int_conv_reference(x[0].astype(np.int64), exact.weight.numpy().astype(np.int64), padding=2)
    # (s + bias) / 2^shift, rounded half to even, in exact integer arithmetic
    shifts = -np.log2(exact.unscale.numpy()[0, :, 0, 0]).astype(np.int64)
    total = s + exact.bias.numpy()[0].astype(np.int64)
    expected = np.empty_like(total)
    for c, k in enumerate(shifts):
        q, r = np.divmod(total[c], 2 ** k)
        half = 2 ** (k - 1)
        expected[c] = q + ((r > half) | ((r == half) & (q % 2 == 1)))
    expected = np.clip(expected, -ep.LIMIT, ep.LIMIT)
    assert np.array_equal(got[0].numpy().astype(np.int64), expected)


@pytest.mark.parametrize("size", [(8, 10), (7, 9), (1, 1), (2, 5), (21, 3)])
@pytest.mark.parametrize("parity, known_parity", [(1, 0), (0, 0), (1, None), (0, None)])
@pytest.mark.parametrize("kernel", [3, 5])
def test_a_refinement_at_one_parity_equals_the_whole_convolution_there(size, parity, known_parity, kernel,
                                                                        monkeypatch):
    """Gathered sums at the used positions (fewer taps where the input is zero) = the full network's there."""
    from ldcodec.codec.checkerboard import anchor_mask
    from ldcodec.codec.channel_context import SliceRefinement

    monkeypatch.setattr(ep.ExactRefinement, "BAND_ELEMENTS", 1)  # one row a band: odd and even starts
    torch.manual_seed(1)
    module = SliceRefinement(6, 3)
    module.context = nn.Conv2d(6, 6, kernel, padding=kernel // 2)
    nn.init.normal_(module.refine[-1].weight)  # (zero-initialised in a fresh model)
    exact = ep.ExactRefinement(module, parity, known_parity)
    base = torch.round(torch.randn(1, 6, *size, dtype=torch.float64) * 2 ** 18).to(torch.int32)
    known = torch.round(torch.randn(1, 6, *size, dtype=torch.float64) * 2 ** 20)
    if known_parity is not None:
        mask = anchor_mask(*size, dtype=torch.float64)
        known = known * (mask if known_parity == 0 else 1 - mask)
    whole = ep.ExactSequential(module.refine)
    b = base.to(torch.float64)
    expected = whole(torch.cat([b, ep.ExactConv(module.context)(known)], dim=1)).add_(b).to(torch.int32)
    got = exact(base, known)
    used = ((torch.arange(size[0])[:, None] + torch.arange(size[1])[None, :]) % 2 == parity).expand(1, 6, *size)
    assert torch.equal(got[used], expected[used])
    assert torch.equal(got[~used], base[~used])  # untouched where no pass reads it


def test_bands_give_the_same_integers_as_the_whole(tiny_exact_weights, monkeypatch):
    model = load_weights(tiny_exact_weights).model
    coder = LatentCoder(model)
    rng = np.random.default_rng(5)
    z = rng.integers(-4, 5, size=(16, 9, 5)).astype(np.int32)  # 36 latent rows
    y = rng.normal(0, 3, size=(24, 36, 20))
    whole = coder.encode(y, z)
    for elements in (1, 3000, 20000):  # bands of 1 row, and of a few rows (uneven last band)
        monkeypatch.setattr(ep.ExactRefinement, "BAND_ELEMENTS", elements)
        assert coder.encode(y, z) == whole, elements


def test_weights_keep_their_precision_and_sums_stay_exact():
    torch.manual_seed(3)
    layer = nn.Conv2d(128, 64, 5, padding=2)  # 3,200 products per output, as the checkerboard context
    exact = ep.ExactConv(layer)
    scale = 1.0 / exact.unscale[0, :, 0, 0]
    error = (exact.weight / scale[:, None, None, None] - layer.weight.double()).abs()
    assert bool((error <= 0.5 / scale[:, None, None, None]).all())  # rounded to the nearest unit
    assert float(error.sum() / layer.weight.abs().sum()) < 1e-3  # the channel sums keep their precision
    bound = exact.weight.abs().sum(dim=(1, 2, 3)) * ep.LIMIT + exact.bias.abs()[0, :, 0, 0]
    assert float(bound.max()) < 2.0 ** 53


def test_scale_snapping_matches_the_float_rule_away_from_boundaries():
    thresholds = ep.scale_thresholds(SCALE_LOWER_BOUND, SCALE_MAX, SCALE_LEVELS)
    assert len(thresholds) == SCALE_LEVELS - 1 and np.all(np.diff(thresholds) > 0)
    scales = np.exp(np.random.default_rng(0).uniform(np.log(0.05), np.log(400), 20000))
    units = np.round(scales * 2.0 ** ep.ACTIVATION_BITS)
    exact = np.searchsorted(thresholds, units, side="right")
    legacy = snap_scales(units / 2.0 ** ep.ACTIVATION_BITS)
    assert (exact != legacy).mean() < 1e-3  # only where a scale is within rounding of a boundary
    assert np.allclose(ep.scale_table(SCALE_LOWER_BOUND, SCALE_MAX, SCALE_LEVELS), SCALE_TABLE, rtol=1e-14, atol=0)


def test_round_trip_and_closeness_to_the_float_model(tiny_exact_weights):
    model = load_weights(tiny_exact_weights).model
    assert model.config.parameter_arithmetic == "exact"
    coder = LatentCoder(model)
    rng = np.random.default_rng(4)
    z = rng.integers(-3, 4, size=(16, 3, 4)).astype(np.int32)
    y = rng.normal(0, 3, size=(24, 12, 16))
    blob = coder.encode(y, z)
    assert np.abs(coder.decode(blob, z) - y).max() <= 0.5 + 1e-9
    float_model = load_weights(tiny_exact_weights).model
    float_model.config = dataclasses.replace(float_model.config, parameter_arithmetic="float32")
    legacy = LatentCoder(float_model)
    exact_hyper = coder._hyper(z).numpy() / 2.0 ** ep.ACTIVATION_BITS
    assert np.abs(exact_hyper - legacy._hyper(z).numpy()).max() < 1e-3
    a, b = coder._snap(coder._hyper(z)), legacy._snap(legacy._hyper(z))
    assert (a.means == b.means).mean() > 0.95 and (a.scale_indexes == b.scale_indexes).mean() > 0.95


def test_the_arithmetic_is_recorded_and_older_configs_default_to_float32():
    assert ModelConfig().parameter_arithmetic == "float32"
    older = json.loads('{"channels": 8, "latent_channels": 8, "gain_levels": 2}')  # a pre-hp-v7 config
    assert ModelConfig(**older).parameter_arithmetic == "float32"
    with pytest.raises(ValueError, match="parameter_arithmetic"):
        ModelConfig(parameter_arithmetic="fp16")
    a, b = ModelConfig(parameter_arithmetic="exact"), ModelConfig()
    assert a.shape() == b.shape()  # same tensors: init-from and resume accept either


SCRIPT = r"""
import hashlib, sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[2]))
from ldcodec.codec.latent_coding import LatentCoder
from ldcodec.codec.weights import load_weights
coder = LatentCoder(load_weights(sys.argv[1]).model)
rng = np.random.default_rng(9)
z = rng.integers(-6, 7, size=(16, 3, 4)).astype(np.int32)
y = rng.normal(0, 3, size=(24, 12, 16))
params = coder._snap(coder._hyper(z))
print(hashlib.sha256(coder.encode(y, z) + params.means.tobytes() + params.scale_indexes.tobytes()).hexdigest())
"""


def test_parameters_are_identical_across_threads_and_mkl_code_paths(tiny_exact_weights):
    """Each MKL branch adds in its own order (the cause of hp-v1..v6's cross-CPU mismatches); exact sums don't care."""
    digests = {}
    for branch in ("AVX2", "AVX512", "COMPATIBLE"):
        for threads in (1, 2):
            env = dict(os.environ, MKL_CBWR=branch, OMP_NUM_THREADS=str(threads))
            out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_exact_weights), str(threads)],
                                 capture_output=True, text=True, env=env, timeout=300)
            assert out.returncode == 0, out.stderr[-2000:]
            digests[(branch, threads)] = out.stdout.strip().splitlines()[-1]
    assert len(set(digests.values())) == 1, digests


@pytest.mark.parametrize("value", [64, -64])
def test_extreme_hyper_latents_still_code_and_stay_in_range(tiny_exact_weights, value):
    """A hostile stream's ẑ at the clamp limits: activations saturate at ±LIMIT, nothing overflows."""
    coder = LatentCoder(load_weights(tiny_exact_weights).model)
    z = np.full((16, 2, 3), value, dtype=np.int32)
    hyper = coder._hyper(z)
    assert hyper.dtype == torch.int32 and int(hyper.abs().max()) <= 2 * ep.LIMIT
    y = np.random.default_rng(6).normal(0, 50, size=(24, 8, 12))
    blob = coder.encode(y, z)
    decoded = coder.decode(blob, z)
    assert np.isfinite(decoded).all()


@pytest.mark.parametrize("model_id, digest", [
    ("hp-v7", "d25271f50bed33570d14be15bb5925d7f732a2fa95a1b430db69c8ba890e9ba6"),  # session 13; quantized Gaussians
    ("hp-v8", "8c3862c8bd92868bb96d9769ff2e93bbf298fb7cc6b419d16097dec4a2396781"),  # session 14; tables-v1
    # session 16: hp-v9 trained g_s only, so it writes exactly what hp-v8 writes
    ("hp-v9", "8c3862c8bd92868bb96d9769ff2e93bbf298fb7cc6b419d16097dec4a2396781"),
    # session 17: hp-v10 trained g_s only again (log-MSE + MS-SSIM), the same sections once more
    ("hp-v10", "8c3862c8bd92868bb96d9769ff2e93bbf298fb7cc6b419d16097dec4a2396781"),
])
def test_the_shipped_exact_models_write_the_latent_section_they_always_wrote(model_id, digest):
    """Each exact model's section bytes, pinned at its release: the same on every machine, no MKL setting needed."""
    import hashlib

    from ldcodec.codec.weights import weights_path

    if not weights_path(model_id).is_file():
        pytest.fail(f"shipped weights {model_id} are missing")
    rng = np.random.default_rng(7)
    z = rng.integers(-3, 4, size=(96, 3, 4)).astype(np.int32)
    y = rng.normal(0, 4, size=(128, 12, 16))
    coder = LatentCoder(load_weights(model_id).model)
    assert coder.exact
    blob = coder.encode(y, z)
    assert hashlib.sha256(blob).hexdigest() == digest
    assert np.abs(coder.decode(blob, z) - y).max() <= 0.5 + 1e-9
