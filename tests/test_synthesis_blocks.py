"""Residual blocks in the base model's own g_s (hp-v9): stored, tiled, trained decoder-only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import ldcodec
from ldcodec.bitstream.container import parse
from ldcodec.cli.main import cli
from ldcodec.codec.model import HyperpriorModel, ModelConfig
from ldcodec.codec.residual_synthesis import ResidualSynthesis, with_residual_blocks
from ldcodec.codec.weights import export_weights, load_weights
from ldcodec.train.trainer import TrainConfig, Trainer
from tests.conftest import synthetic_image
from tests.test_train import image_dir  # noqa: F401 (a fixture)

TINY = dict(channels=16, latent_channels=24, gain_levels=4)


def _randomise_blocks(model: HyperpriorModel, seed: int = 0) -> HyperpriorModel:
    """Blocks that are no longer the identity (as after training)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for block in model.g_s.blocks.values():
            block.conv2.weight.normal_(std=0.1)
    return model


@pytest.fixture(scope="module")
def weights_pair(tmp_path_factory):
    """The same tiny model twice: plain, and with trained-looking blocks after g_s layers 1 and 3."""
    folder = tmp_path_factory.mktemp("blocks")
    torch.manual_seed(0)
    plain = HyperpriorModel(ModelConfig(**TINY))
    extended = HyperpriorModel(ModelConfig(**TINY, synthesis_blocks=(3, 1)))
    others = {k: v for k, v in plain.state_dict().items() if not k.startswith("g_s.")}
    extended.load_state_dict(others, strict=False)
    extended.g_s.base.load_state_dict(plain.g_s.state_dict())
    _randomise_blocks(extended)
    return (export_weights(plain, folder / "plain.safetensors", model_id="plain"),
            export_weights(extended, folder / "blocks.safetensors", model_id="blocks"))


def test_blocks_are_part_of_the_shape_and_round_trip_through_the_weights_file(weights_pair):
    plain_path, blocks_path = weights_pair
    loaded = load_weights(blocks_path)
    assert loaded.model.config.synthesis_blocks == (1, 3)  # canonical: sorted
    assert isinstance(loaded.model.g_s, ResidualSynthesis) and loaded.model.g_s.after == (1, 3)
    assert load_weights(plain_path).model.config.synthesis_blocks == ()  # older files: the plain g_s
    assert ModelConfig(**TINY).shape() != ModelConfig(**TINY, synthesis_blocks=(1,)).shape()


def test_the_blocks_decode_and_leave_the_bitstream_alone(weights_pair):
    plain, extended = (ldcodec.load(p, diffusion=p.with_name("absent.safetensors")) for p in weights_pair)
    img = synthetic_image(48, 80)
    blob, plain_blob = extended.encode(img, quality=0.5), plain.encode(img, quality=0.5)
    assert parse(blob).sections == parse(plain_blob).sections  # same latents (the header names the model)
    assert extended.decode(blob).tobytes() != plain.decode(plain_blob).tobytes()


@pytest.mark.parametrize("size", [(200, 300), (161, 97)])
def test_tiled_decode_with_blocks_matches_untiled(weights_pair, size):
    """The blocks widen g_s's reach to about ±4 latents: still inside the tiling margin."""
    path = weights_pair[1]
    whole = ldcodec.load(path, tile=0, diffusion=path.with_name("absent.safetensors"))
    tiled = ldcodec.load(path, tile=2, diffusion=path.with_name("absent.safetensors"))
    blob = whole.encode(synthetic_image(*size), quality=0.6)
    a = np.asarray(whole.decode(blob), dtype=np.int16)
    b = np.asarray(tiled.decode(blob), dtype=np.int16)
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3


def test_a_perceptual_synthesis_keeps_the_blocks_of_its_base(weights_pair):
    base = load_weights(weights_pair[1]).model.g_s
    extended = with_residual_blocks(base, (0,))
    assert extended.after == (0, 1, 3)
    assert extended.blocks["1"] is base.blocks["1"] and extended.base is base.base
    assert with_residual_blocks(base, ()).after == (1, 3)


def _config(image_dir, tmp_path, steps, **kw):
    kw.setdefault("model", ModelConfig(**TINY, synthesis_blocks=(1, 3)))
    return TrainConfig(data=str(image_dir), run="t", steps=steps, batch=2, crop=64, warmup=2, validate_every=50,
                       checkpoint_dir=str(tmp_path / "ckpt"), threads=1, precision="fp32", **kw)


def test_decoder_only_training_adds_blocks_and_keeps_the_encoder_and_entropy_model(weights_pair, image_dir, tmp_path):
    plain_path = weights_pair[0]
    export = tmp_path / "tuned.safetensors"
    trainer = Trainer(_config(image_dir, tmp_path, 8, lr=3e-3, init_from=str(plain_path), train_only="synthesis",
                              export=str(export)))
    with torch.no_grad():  # the new blocks start as the identity: the plain model's decode
        y = torch.randn(1, 24, 4, 5)
        assert torch.equal(trainer.model.g_s(y), load_weights(plain_path).model.g_s(y))
    trainer.run()
    before, after = load_weights(plain_path).model.state_dict(), load_weights(export).model.state_dict()
    changed = {k for k in after if k not in before or not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("g_s.") for k in changed), changed
    assert any(k.startswith("g_s.blocks.") for k in changed) and any(k.startswith("g_s.base.") for k in changed)
    img = synthetic_image(48, 64)
    tuned = ldcodec.load(export, diffusion=tmp_path / "absent.safetensors")
    plain = ldcodec.load(plain_path, diffusion=tmp_path / "absent.safetensors")
    assert parse(tuned.encode(img, quality=0.3)).sections == parse(plain.encode(img, quality=0.3)).sections


def test_decoder_only_training_lowers_the_distortion(image_dir, tmp_path):
    cfg = _config(image_dir, tmp_path, 40, lr=3e-3, train_only="synthesis", log_every=10)
    Trainer(cfg).run()
    rows = (tmp_path / "ckpt" / "t" / "log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[3]) for r in rows]
    assert losses[-1] < losses[0]


def test_a_run_keeps_what_it_trains(image_dir, tmp_path):
    Trainer(_config(image_dir, tmp_path, 2, train_only="synthesis")).run()
    with pytest.raises(SystemExit, match="a run keeps what it trains"):
        Trainer(_config(image_dir, tmp_path, 4))
    with pytest.raises(SystemExit, match="has model"):  # other blocks: another shape
        Trainer(_config(image_dir, tmp_path, 4, train_only="synthesis", model=ModelConfig(**TINY)))


@pytest.mark.parametrize("blocks, message", [("9", "residual blocks go after layers 0..5"),
                                             ("1,x", "comma-separated list of layer indexes")])
def test_bad_synthesis_blocks_are_a_clear_error(image_dir, tmp_path, blocks, message):
    result = CliRunner().invoke(cli, ["train", str(image_dir), "--synthesis-blocks", blocks, "--steps", "1",
                                      "--checkpoint-dir", str(tmp_path / "ckpt")])
    assert result.exit_code != 0 and message in result.output
    assert not isinstance(result.exception, (ValueError, TypeError))


def test_a_diffusion_decoder_moves_to_a_base_with_the_same_latents_unchanged(weights_pair, tmp_path):
    """hp-v9-diffusion is hp-v8-diffusion rebound by a zero-step ``train-diffusion`` run: hp-v9's
    encoder, gains and entropy model are hp-v8's, so the denoiser sees the same inputs."""
    pytest.importorskip("lpips")
    import copy

    from safetensors import safe_open
    from safetensors.torch import load_file

    from ldcodec.codec.diffusion_weights import export_denoiser
    from ldcodec.train.diffusion_trainer import DiffusionTrainConfig, DiffusionTrainer
    from tests.test_diffusion_decoder import TINY_DENOISER, _fake_lpips_file, random_denoiser

    plain, blocks = weights_pair
    synthesis = with_residual_blocks(copy.deepcopy(load_weights(plain).model.g_s), (1, 3))
    with torch.no_grad():
        for block in synthesis.blocks.values():
            block.conv2.weight.normal_(std=0.1)
    source = tmp_path / "plain-diffusion.safetensors"
    export_denoiser(random_denoiser(), source, load_weights(plain).sha256, "plain", info={"steps": 10},
                    synthesis=synthesis)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(synthetic_image(72, 80, seed=i)).save(images / f"img{i}.png")
    moved = tmp_path / "blocks-diffusion.safetensors"
    DiffusionTrainer(DiffusionTrainConfig(
        data=str(images), base=str(blocks), run="moved", steps=10, batch=2, crop=64, threads=1, precision="fp32",
        checkpoint_dir=str(tmp_path / "ckpt"), scale_batches=1, export=str(moved), denoiser=TINY_DENOISER,
        lpips_weights=str(_fake_lpips_file(tmp_path)), perceptual_steps=(1,), init_from=str(source),
        synthesis_blocks=(1, 3))).run()
    before, after = load_file(str(source)), load_file(str(moved))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with safe_open(str(moved), "pt") as f:
        assert f.metadata()["base_sha256"] == load_weights(blocks).sha256.hex()

    codec = ldcodec.load(blocks, diffusion=moved)
    blob = codec.encode(synthetic_image(48, 64), quality=0.4)
    steps0 = ldcodec.load(blocks, diffusion=tmp_path / "absent.safetensors").decode(blob)
    assert codec.decode(blob).tobytes() == steps0.tobytes()
    assert codec.decode(blob, steps=1).tobytes() != steps0.tobytes()
