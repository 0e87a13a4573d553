"""The checkerboard (two-pass) entropy model: training view, coder view, streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ldcodec
from ldcodec.codec.checkerboard import anchor_mask
from ldcodec.codec.latent_coding import LatentCoder
from ldcodec.codec.model import HyperpriorModel, ModelConfig
from ldcodec.codec.weights import load_weights
from ldcodec.errors import BitstreamError


def randomise_context_outputs(model: HyperpriorModel) -> None:
    """Give every context a non-zero last layer (they start as no-ops)."""
    if model.context_model is not None:
        torch.nn.init.normal_(model.context_model.refine[-1].weight, std=0.2)
    if model.channel_context is not None:
        for net in [*model.channel_context.anchor_nets, *model.channel_context.rest_nets]:
            torch.nn.init.normal_(net.refine[-1].weight, std=0.2)


@pytest.fixture(scope="module")
def checkerboard_codec(tiny_checkerboard_weights):
    return ldcodec.load(tiny_checkerboard_weights)


def test_anchor_mask_is_a_checkerboard():
    mask = anchor_mask(3, 4)[0, 0]
    assert mask.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]


@pytest.mark.parametrize("start, context, added", [("tiny_weights", "checkerboard", "context_model."),
                                                   ("tiny_checkerboard_weights", "checkerboard-channel",
                                                    "channel_context.")])
def test_a_freshly_added_context_leaves_the_model_unchanged(start, context, added, request):
    base = load_weights(request.getfixturevalue(start)).model
    model = HyperpriorModel(ModelConfig(**{**base.config.to_dict(), "context": context}))
    missing, _ = model.load_state_dict(base.state_dict(), strict=False)
    assert missing and all(k.startswith(added) for k in missing)
    x, q = torch.rand(2, 3, 64, 64), torch.tensor([0.1, 0.9])
    with torch.no_grad():
        a, b = base.eval()(x, q), model.eval()(x, q)
    assert torch.equal(a.x_hat, b.x_hat) and torch.equal(a.y_likelihoods, b.y_likelihoods)


def test_round_trip_and_both_passes_in_one_section(checkerboard_codec, image_factory):
    img = image_factory(70, 90)
    blob = checkerboard_codec.encode(img, quality=0.7)
    assert ldcodec.stream_info(blob).sections.keys() == {"hyper_latents", "latents"}
    out = np.asarray(checkerboard_codec.decode(blob))
    assert out.shape == img.shape
    assert np.array_equal(out, np.asarray(checkerboard_codec.decode(blob)))


def test_decoded_latents_are_the_encoders_quantized_latents(tiny_checkerboard_weights):
    coder = LatentCoder(load_weights(tiny_checkerboard_weights).model)
    rng = np.random.default_rng(0)
    z = rng.integers(-2, 3, size=(16, 2, 3)).astype(np.int32)
    y = rng.normal(0, 3, size=(24, 8, 12))
    y_hat = coder.decode(coder.encode(y, z), z)
    assert np.abs(y_hat - y).max() <= 0.5 + 1e-9  # each latent rounded around its own mean
    assert np.array_equal(y_hat, coder.decode(coder.encode(y, z), z))


def test_the_second_pass_depends_on_the_decoded_anchors(tiny_checkerboard_weights):
    from ldcodec.codec.entropy_parameters import context_parameters, hyper_parameters

    model = load_weights(tiny_checkerboard_weights).model
    z = np.zeros((16, 2, 2), dtype=np.int32)
    hyper = hyper_parameters(model.h_s.float().eval(), z)
    mask = anchor_mask(8, 8).numpy()[0, 0]
    anchors = np.random.default_rng(1).integers(-3, 4, size=(24, 8, 8)) * mask
    a = context_parameters(model.context_model.eval(), hyper, np.zeros_like(anchors, dtype=np.float64))
    b = context_parameters(model.context_model.eval(), hyper, anchors.astype(np.float64))
    assert not torch.equal(a, b)


def test_training_and_coder_views_of_the_parameters_agree(tiny_checkerboard_weights):
    """The model is trained with the anchor pattern and rounding the coder uses."""
    from ldcodec.codec.entropy_parameters import (context_parameters, hyper_parameters, snap_means,
                                                  snap_parameters)

    model = load_weights(tiny_checkerboard_weights).model.eval()
    rng = np.random.default_rng(2)
    z = rng.integers(-2, 3, size=(16, 2, 3)).astype(np.int32)
    y = rng.normal(0, 3, size=(24, 8, 12))
    with torch.no_grad():
        _, train_means = model.latent_parameters(torch.from_numpy(y).float()[None], torch.from_numpy(z).float()[None])
    hyper = hyper_parameters(model.h_s, z)
    first = snap_parameters(hyper)
    mask = anchor_mask(8, 12).numpy()[0, 0].astype(bool)
    anchors = np.where(mask, np.round(y - first.means) + first.means, 0.0)
    second = snap_parameters(context_parameters(model.context_model, hyper, anchors))
    coder_means = np.where(mask, first.means, second.means)
    # Equal up to the 1/64 snapping (and its small effect on the anchors the context sees).
    assert np.abs(snap_means(train_means[0].numpy()) - coder_means).max() < 0.1
    assert not np.allclose(first.means[:, ~mask], second.means[:, ~mask])  # the context did change them


def test_truncated_two_pass_sections_fail_cleanly(checkerboard_codec, image_factory):
    from ldcodec.bitstream import container
    from ldcodec.bitstream.container import SectionTag

    blob = checkerboard_codec.encode(image_factory(64, 128), quality=1.0)
    stream = container.parse(blob)
    latents = stream.sections[SectionTag.LATENTS]
    refused = 0
    for cut in range(4, len(latents), 4):
        stream.sections[SectionTag.LATENTS] = latents[:cut]
        try:
            checkerboard_codec.decode(container.serialize(stream))
        except BitstreamError:
            refused += 1
    assert refused >= (len(latents) // 4 - 1) * 0.9


@pytest.mark.parametrize("start, context", [("tiny_weights", "checkerboard"),
                                            ("tiny_checkerboard_weights", "checkerboard-channel")])
def test_init_from_weights_with_a_poorer_context_adds_one(start, context, tmp_path, image_factory, request):
    from PIL import Image

    from ldcodec.train.trainer import TrainConfig, Trainer

    tiny_weights = request.getfixturevalue(start)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(image_factory(72, 80, seed=i)).save(folder / f"img{i}.png")
    base = load_weights(tiny_weights).model.config
    cfg = TrainConfig(data=str(folder), run="cb", steps=2, batch=2, crop=64, warmup=1, threads=1, precision="fp32",
                      checkpoint_dir=str(tmp_path / "ckpt"), init_from=str(tiny_weights),
                      export=str(tmp_path / "cb.safetensors"),
                      model=ModelConfig(**{**base.to_dict(), "context": context}))
    trainer = Trainer(cfg)
    assert torch.equal(trainer.model.g_a[0].weight, load_weights(tiny_weights).model.g_a[0].weight)
    trainer.run()
    codec = ldcodec.load(tmp_path / "cb.safetensors")
    assert codec.model.config.context == context
    img = image_factory(64, 64)
    assert np.asarray(codec.decode(codec.encode(img))).shape == img.shape


@pytest.mark.parametrize("context", ["none", "checkerboard", "checkerboard-channel"])
def test_training_feeds_h_s_the_rounded_hyper_latents_the_coder_uses(context):
    """Noise is for the rate terms only: h_s (and the context after it) see round(z), as the coder does.

    Had they seen noisy z, the reconstruction would change with the noise draw; a context
    trained that way cost 5x the bits at quality 0 on flat images when coded for real.
    """
    torch.manual_seed(0)
    model = HyperpriorModel(ModelConfig(channels=16, latent_channels=24, gain_levels=4, context=context)).train()
    randomise_context_outputs(model)
    x, q = torch.rand(2, 3, 64, 64), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(x, q)
        torch.manual_seed(2)
        b = model(x, q)
        y_g, z = model.analyse(x, q)
        scales, means = model.latent_parameters(y_g, torch.round(z))
    assert torch.equal(a.x_hat, b.x_hat)
    assert not torch.equal(a.y_likelihoods, b.y_likelihoods)  # the rate terms do use noise
    y_hat = torch.round(y_g - means) + means
    assert torch.allclose(a.x_hat, model.synthesise(y_hat, q), atol=1e-6)


@pytest.mark.parametrize("context", ["none", "checkerboard", "checkerboard-channel"])
def test_the_rounded_rate_estimate_prices_the_latents_the_coder_codes(context):
    """``rate_estimate="rounded"``: the training rate is the eval-mode (coded) rate, with gradients to g_a."""
    torch.manual_seed(0)
    model = HyperpriorModel(ModelConfig(channels=16, latent_channels=24, gain_levels=4, context=context))
    randomise_context_outputs(model)
    x, q = torch.rand(2, 3, 64, 64), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        coded = model.eval()(x, q).y_likelihoods
        noisy = model.train()(x, q).y_likelihoods
    rounded = model.train()(x, q, rate_estimate="rounded").y_likelihoods
    assert torch.equal(rounded.detach(), coded)
    assert not torch.allclose(noisy, coded)
    rounded.log2().sum().backward()
    assert model.g_a[0].weight.grad.abs().sum() > 0  # straight-through: the encoder learns from the coded rate
    with pytest.raises(ValueError, match="rate_estimate"):
        model(x, q, rate_estimate="exact")
