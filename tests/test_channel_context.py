"""The channel context (checkerboard passes coded slice by slice): training view, coder view, streams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import torch

import ldcodec
from ldcodec.codec.channel_context import channel_slices, merge_slices, slice_parameters
from ldcodec.codec.entropy_parameters import context_parameters, hyper_parameters, snap_means
from ldcodec.codec.latent_coding import LatentCoder
from ldcodec.codec.model import HyperpriorModel, ModelConfig
from ldcodec.codec.weights import load_weights, weights_path


def test_slices_are_uneven_small_first_and_cover_every_channel():
    assert channel_slices(128) == [(0, 16), (16, 32), (32, 64), (64, 128)]
    assert channel_slices(24) == [(0, 3), (3, 6), (6, 12), (12, 24)]
    with pytest.raises(ValueError, match="at least 8"):
        channel_slices(4)


def test_slicing_the_parameters_and_merging_them_back_is_the_identity():
    params = torch.randn(2, 48, 3, 5)
    parts = [slice_parameters(params, a, b) for a, b in channel_slices(24)]
    assert parts[1].shape == (2, 6, 3, 5)
    assert torch.equal(parts[1][:, :3], params[:, 3:6]) and torch.equal(parts[1][:, 3:], params[:, 27:30])
    assert torch.equal(merge_slices(parts), params)


def test_a_freshly_added_channel_context_codes_as_the_checkerboard_model_did(tiny_checkerboard_weights):
    """(The model itself is unchanged: tests/test_checkerboard.py.) Same latents, same cost, 8 passes."""
    base = load_weights(tiny_checkerboard_weights).model
    model = HyperpriorModel(ModelConfig(**{**base.config.to_dict(), "context": "checkerboard-channel"}))
    model.load_state_dict(base.state_dict(), strict=False)
    rng = np.random.default_rng(3)
    z = rng.integers(-2, 3, size=(16, 2, 3)).astype(np.int32)
    y = rng.normal(0, 3, size=(24, 8, 12))
    old, new = LatentCoder(base), LatentCoder(model)
    assert (old.passes, new.passes) == (2, 8)
    old_blob, new_blob = old.encode(y, z), new.encode(y, z)
    assert np.array_equal(old.decode(old_blob, z), new.decode(new_blob, z))
    assert abs(len(old_blob) - len(new_blob)) <= 0.02 * len(old_blob) + 8


def test_decoded_latents_are_the_encoders_quantized_latents(tiny_channel_weights):
    coder = LatentCoder(load_weights(tiny_channel_weights).model)
    assert coder.passes == 8
    rng = np.random.default_rng(0)
    z = rng.integers(-2, 3, size=(16, 2, 3)).astype(np.int32)
    y = rng.normal(0, 3, size=(24, 8, 12))
    blob = coder.encode(y, z)
    y_hat = coder.decode(blob, z)
    assert np.abs(y_hat - y).max() <= 0.5 + 1e-9  # each latent rounded around its own mean
    assert np.array_equal(y_hat, coder.decode(coder.encode(y, z), z))
    assert blob == coder.encode(y, z)


@pytest.mark.parametrize("second_pass", [False, True])
def test_a_slice_depends_on_the_earlier_slices(tiny_channel_weights, second_pass):
    model = load_weights(tiny_channel_weights).model
    hyper = hyper_parameters(model.h_s.float().eval(), np.zeros((16, 2, 2), dtype=np.int32))
    start, stop = channel_slices(24)[2]
    params = slice_parameters(hyper, start, stop)
    refine = partial(model.channel_context.eval().refine, second_pass, 2)
    earlier = np.random.default_rng(1).integers(-3, 4, size=(start, 8, 8)).astype(np.float64)
    a = context_parameters(refine, params, np.zeros_like(earlier))
    b = context_parameters(refine, params, earlier)
    assert a.shape == params.shape and not torch.equal(a, b)


def test_training_and_coder_views_of_the_parameters_agree(tiny_channel_weights):
    """The model is trained with the slice order, anchor pattern and rounding the coder uses."""
    model = load_weights(tiny_channel_weights).model.eval()
    rng = np.random.default_rng(2)
    z = rng.integers(-2, 3, size=(16, 2, 3)).astype(np.int32)
    y = rng.normal(0, 3, size=(24, 8, 12))
    with torch.no_grad():
        _, train_means = model.latent_parameters(torch.from_numpy(y).float()[None], torch.from_numpy(z).float()[None])
    coder_means = np.zeros_like(y)

    def code(params, start, stop, positions):  # params: at positions, flattened
        coder_means[start:stop][positions] = params.means
        return np.round(y[start:stop][positions] - params.means) + params.means

    LatentCoder(model)._walk(z, code)
    # Equal up to the 1/64 snapping (and its small effect on the values the contexts see).
    assert np.abs(snap_means(train_means[0].numpy()) - coder_means).max() < 0.1
    hyper_means = hyper_parameters(model.h_s, z)[0, 24:].numpy()
    assert not np.allclose(hyper_means[3:], coder_means[3:], atol=0.05)  # the contexts did change them


def test_round_trip_through_the_codec(tiny_channel_weights, image_factory):
    codec = ldcodec.load(tiny_channel_weights)
    img = image_factory(70, 90)
    blob = codec.encode(img, quality=0.6)
    out = np.asarray(codec.decode(blob))
    assert out.shape == img.shape and np.array_equal(out, np.asarray(codec.decode(blob)))


PINNED_SECTIONS = r"""
import hashlib, json, numpy as np
from ldcodec.codec.latent_coding import LatentCoder
from ldcodec.codec.weights import load_weights
rng = np.random.default_rng(7)
z = rng.integers(-3, 4, size=(96, 3, 4)).astype(np.int32)
out = {}
for model_id in ("hp-v3", "hp-v1", "hp-v4", "hp-v5", "hp-v6"):
    coder = LatentCoder(load_weights(model_id).model)
    y = rng.normal(0, 4, size=(128, 12, 16))
    blob = coder.encode(y, z)
    assert np.abs(coder.decode(blob, z) - y).max() <= 0.5 + 1e-9
    out[model_id] = hashlib.sha256(blob).hexdigest()
print(json.dumps(out))
"""


def test_the_shipped_float32_models_write_the_latent_sections_they_always_wrote():
    """The pass walk leaves hp-v1..hp-v6's streams as released, on MKL's AVX2 code path.

    The hashes of hp-v3 and hp-v1 are of sections written by the release before the channel context
    (commit 0b6d4ad); hp-v4's (the first channel-context model) of those of its own release (5ef6fbd),
    hp-v5's and hp-v6's of their own (e4cad7c, 8038ca8). These models compute their parameters in
    float32, which MKL's AVX-512 kernels (Intel CPUs) and AVX2 kernels (AMD CPUs) round differently
    (:mod:`ldcodec.codec.exact_parameters`); the hashes are the AVX2 path's, so the check runs there.
    """
    for model_id in ("hp-v3", "hp-v1", "hp-v4", "hp-v5", "hp-v6"):
        if not weights_path(model_id).is_file():
            pytest.fail(f"shipped weights {model_id} are missing")
    env = dict(os.environ, MKL_CBWR="AVX2")
    out = subprocess.run([sys.executable, "-c", PINNED_SECTIONS], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    digests = json.loads(out.stdout.strip().splitlines()[-1])
    assert digests == {
        "hp-v3": "916e1f1e934ecf2fbe1a554b80d7977edad729db7a1f45c3951142837b0ab978",
        "hp-v1": "f7efeb016fbfdd108e5a47a6a43cb4a4d1d176a1ebf93edfbe8695b7e96e3f23",
        "hp-v4": "f9061821bf423101dfcbe511227e78c7262b9f2d120f87d5bd7b39283cf82ae4",
        "hp-v5": "c04abf280e99aad841026c5b9382ebce63f50de1ca319169c57990fda9110cf4",
        "hp-v6": "521b7ae7be4a2105448a2ef4ba01d343637a129f299d9efaf35df3cdb153e29b",
    }
