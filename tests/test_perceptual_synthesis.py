"""Residual blocks in the perceptual synthesis: identity at the start, stored, loaded, decoded, trained."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ldcodec
from ldcodec.codec.denoiser import LatentDenoiser
from ldcodec.codec.diffusion_weights import DiffusionWeightsError, diffusion_path_for, export_denoiser
from ldcodec.codec.model import HyperpriorModel, ModelConfig
from ldcodec.codec.residual_synthesis import (BLOCKS_KEY, LATENT_STAGE_KEY, ResidualSynthesis, blocks_of,
                                              with_residual_blocks)
from ldcodec.codec.tiling import DEFAULT_MARGIN, SYNTHESIS_MARGIN, synthesise_tiled
from ldcodec.codec.transforms import FrozenGDN
from ldcodec.codec.weights import load_weights
from tests.conftest import synthetic_image
from tests.test_diffusion_decoder import TINY_DENOISER, _fake_lpips_file, _image_folder, tiny_base


def _g_s(base_path):
    return copy.deepcopy(load_weights(base_path).model.g_s).eval()


def _randomised(synthesis: ResidualSynthesis, seed=0) -> ResidualSynthesis:
    """Blocks that are not the identity any more (as after training)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for block in synthesis.blocks.values():
            block.conv2.weight.normal_(std=0.05)
    return synthesis


def test_new_blocks_start_as_the_identity_of_the_plain_synthesis(tmp_path):
    g_s = _g_s(tiny_base(tmp_path))
    extended = with_residual_blocks(copy.deepcopy(g_s), (3, 1))
    assert isinstance(extended, ResidualSynthesis) and extended.after == (1, 3)
    y = torch.randn(1, 24, 5, 7)
    with torch.no_grad():
        assert torch.equal(extended(y), g_s(y))
        assert not torch.equal(_randomised(extended)(y), g_s(y))
    assert with_residual_blocks(g_s, ()) is g_s and blocks_of(g_s) == () and blocks_of(None) == ()


@pytest.mark.parametrize("after", [(7,), (-1,), (0, 9)])
def test_blocks_outside_the_synthesis_are_refused(tmp_path, after):
    with pytest.raises(ValueError, match="residual blocks go after layers 0..5"):
        ResidualSynthesis(_g_s(tiny_base(tmp_path)), after)


def test_a_diffusion_file_with_blocks_decodes_with_them_and_steps_0_is_untouched(tmp_path):
    base = tiny_base(tmp_path)
    sha = load_weights(base).sha256
    plain = ldcodec.load(base, diffusion=tmp_path / "absent.safetensors")
    blob = plain.encode(synthetic_image(40, 56), quality=0.5)
    identity_file = tmp_path / "identity.safetensors"
    export_denoiser(LatentDenoiser(TINY_DENOISER), identity_file, sha, "base",
                    synthesis=with_residual_blocks(_g_s(base), (1, 3)))
    trained = _randomised(with_residual_blocks(_g_s(base), (1, 3)))
    export_denoiser(LatentDenoiser(TINY_DENOISER), diffusion_path_for(base), sha, "base", synthesis=trained)
    with safe_open(str(diffusion_path_for(base)), "pt") as f:
        assert f.metadata()[BLOCKS_KEY] == "[1, 3]"

    codec = ldcodec.load(base)
    steps0 = plain.decode(blob)
    assert codec.decode(blob).tobytes() == steps0.tobytes()
    with_blocks = codec.decode(blob, steps=1)
    loaded = codec._diffusion_synthesis
    assert isinstance(loaded, ResidualSynthesis) and loaded.after == (1, 3)
    assert any(isinstance(layer, FrozenGDN) for layer in loaded.base)  # frozen inside the wrapper too
    expected = {k: v.half().float() for k, v in trained.state_dict().items() if k.startswith("blocks.")}
    for k, v in expected.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    identity = ldcodec.load(base, diffusion=identity_file).decode(blob, steps=1)
    assert identity.tobytes() != with_blocks.tobytes()  # the blocks really decode
    assert codec.decode(blob).tobytes() == steps0.tobytes()


@pytest.mark.parametrize("key, value", [(BLOCKS_KEY, v) for v in ("[99]", "oops", "[true]", '{"a": 1}')]
                         + [(LATENT_STAGE_KEY, v) for v in ("[1, 100000]", "oops", "[2]", "[]", "[true, 8]", '{"a": 1}')])
def test_bad_block_metadata_is_a_clear_error(tmp_path, key, value):
    """Bad block positions or latent-stage shapes (one asks for a huge allocation) are refused, not built."""
    base = tiny_base(tmp_path)
    path = diffusion_path_for(base)
    export_denoiser(LatentDenoiser(TINY_DENOISER), path, load_weights(base).sha256, "base",
                    synthesis=with_residual_blocks(_g_s(base), (1,), (2, 8)))
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
    save_file(load_file(str(path)), str(path), {**metadata, key: value})
    codec = ldcodec.load(base)
    blob = codec.encode(synthetic_image(24, 32), quality=0.5)
    with pytest.raises(DiffusionWeightsError, match=f"{key}|latent stage|do not match"):
        codec.decode(blob, steps=1)


def test_training_adds_blocks_to_a_plain_synthesis_and_keeps_them_on_resume(tmp_path):
    pytest.importorskip("lpips")
    from ldcodec.train.diffusion_trainer import DiffusionTrainConfig, DiffusionTrainer

    images = _image_folder(tmp_path)
    base = tiny_base(tmp_path)
    plain_file = tmp_path / "plain.safetensors"
    plain_synthesis = _g_s(base)
    with torch.no_grad():
        for p in plain_synthesis.parameters():
            p.add_(0.01)
    export_denoiser(LatentDenoiser(TINY_DENOISER), plain_file, load_weights(base).sha256, "base",
                    info={"steps": 10}, synthesis=plain_synthesis)
    export = tmp_path / "blocks.safetensors"

    def config(steps, blocks=(1, 3), run="b"):
        return DiffusionTrainConfig(data=str(images), base=str(base), run=run, steps=steps, batch=2, crop=64,
                                    warmup=1, threads=1, precision="fp32", checkpoint_dir=str(tmp_path / "ckpt"),
                                    log_every=1, validate_every=100, scale_batches=1, export=str(export),
                                    denoiser=TINY_DENOISER, lpips_weights=str(_fake_lpips_file(tmp_path)),
                                    perceptual_steps=(1,), init_from=str(plain_file), synthesis_blocks=blocks)

    trainer = DiffusionTrainer(config(12))
    assert blocks_of(trainer.synthesis) == (1, 3)
    for k, v in plain_synthesis.state_dict().items():  # the file's g_s under identity blocks
        assert torch.equal(trainer.synthesis.base.state_dict()[k], v.half().float()), k
    y = torch.randn(1, 24, 4, 4)
    with torch.no_grad():
        assert torch.equal(trainer.synthesis(y), trainer.synthesis.base(y))
    trainer.run()
    assert any(block.conv2.weight.abs().sum() > 0 for block in trainer.synthesis.blocks.values())
    with safe_open(str(export), "pt") as f:
        assert f.metadata()[BLOCKS_KEY] == "[1, 3]"
    with pytest.raises(SystemExit, match="synthesis blocks"):
        DiffusionTrainer(config(13, blocks=(1,)))
    resumed = DiffusionTrainer(config(13, blocks=(3, 1)))  # the same blocks, in another order
    assert resumed.step == 12
    for k, v in trainer.synthesis.state_dict().items():
        assert torch.equal(resumed.synthesis.state_dict()[k], v), k
    with pytest.raises(SystemExit, match="synthesis-blocks"):
        DiffusionTrainer(config(1, blocks=(7,), run="other"))


def test_cli_refuses_block_positions_that_are_not_numbers(tmp_path):
    from ldcodec.cli.main import cli

    result = CliRunner().invoke(cli, ["train-diffusion", str(tmp_path), "--synthesis-blocks", "1,x"])
    assert result.exit_code == 2 and "--synthesis-blocks" in result.output and "Traceback" not in result.output


def test_synthesis_from_base_takes_the_denoiser_from_the_file_and_g_s_from_the_base(tmp_path):
    """A new base g_s (trained past the one a file's synthesis was tuned from) can be the starting point."""
    pytest.importorskip("lpips")
    from ldcodec.train.diffusion_trainer import DiffusionTrainConfig, DiffusionTrainer

    images = _image_folder(tmp_path)
    base = tiny_base(tmp_path)
    tuned = _randomised(with_residual_blocks(_g_s(base), (1,)))
    with torch.no_grad():
        for p in tuned.base.parameters():
            p.add_(0.01)
    torch.manual_seed(3)
    denoiser = LatentDenoiser(TINY_DENOISER)
    with torch.no_grad():
        for p in denoiser.parameters():
            p.normal_(std=0.02)
    init_file = tmp_path / "old.safetensors"
    export_denoiser(denoiser, init_file, load_weights(base).sha256, "base", info={"steps": 10}, synthesis=tuned)

    def trainer(synthesis_from, run):
        return DiffusionTrainer(DiffusionTrainConfig(
            data=str(images), base=str(base), run=run, steps=10, batch=2, crop=64, threads=1, precision="fp32",
            checkpoint_dir=str(tmp_path / "ckpt"), scale_batches=1, denoiser=TINY_DENOISER,
            lpips_weights=str(_fake_lpips_file(tmp_path)), perceptual_steps=(1,), init_from=str(init_file),
            synthesis_blocks=(1,), synthesis_from=synthesis_from))

    fresh, kept = trainer("base", "fresh"), trainer("init", "kept")
    for t in (fresh, kept):
        assert t.step == 10
        for k, v in denoiser.state_dict().items():
            assert torch.equal(t.denoiser.state_dict()[k], v.half().float() if v.is_floating_point() else v), k
    y = torch.randn(1, 24, 4, 4)
    with torch.no_grad():
        assert torch.equal(fresh.synthesis(y), _g_s(base)(y))  # the base g_s, its new blocks the identity
        assert not torch.allclose(kept.synthesis(y), fresh.synthesis(y))
    with pytest.raises(SystemExit, match="synthesis_from"):
        trainer("elsewhere", "bad")


def test_more_blocks_can_be_added_to_a_files_synthesis_and_its_own_are_kept(tmp_path):
    """A file's synthesis with blocks (1,) starts one with blocks (0, 1, 3): its block kept, the new ones the identity."""
    pytest.importorskip("lpips")
    from ldcodec.train.diffusion_trainer import DiffusionTrainConfig, DiffusionTrainer

    images = _image_folder(tmp_path)
    base = tiny_base(tmp_path)
    tuned = _randomised(with_residual_blocks(_g_s(base), (1,)))
    init_file = tmp_path / "one-block.safetensors"
    export_denoiser(LatentDenoiser(TINY_DENOISER), init_file, load_weights(base).sha256, "base", info={"steps": 10},
                    synthesis=tuned)

    def trainer(blocks, run):
        return DiffusionTrainer(DiffusionTrainConfig(
            data=str(images), base=str(base), run=run, steps=10, batch=2, crop=64, threads=1, precision="fp32",
            checkpoint_dir=str(tmp_path / "ckpt"), scale_batches=1, denoiser=TINY_DENOISER,
            lpips_weights=str(_fake_lpips_file(tmp_path)), perceptual_steps=(1,), init_from=str(init_file),
            synthesis_blocks=blocks))

    more = trainer((0, 1, 3), "more")
    assert blocks_of(more.synthesis) == (0, 1, 3)
    for k, v in tuned.blocks["1"].state_dict().items():
        assert torch.equal(more.synthesis.blocks["1"].state_dict()[k], v.half().float()), k
    y = torch.randn(1, 24, 4, 4)
    with torch.no_grad():
        file_synthesis = copy.deepcopy(tuned)
        for p in file_synthesis.parameters():
            p.copy_(p.half().float())  # as stored
        assert torch.allclose(more.synthesis(y), file_synthesis(y), atol=1e-6)
    with pytest.raises(SystemExit, match=r"synthesis blocks \[1\], not all of them in \[3\]"):
        trainer((3,), "fewer")


def test_a_synthesis_with_every_block_decodes_the_same_tiled_and_whole():
    """Blocks after every g_s layer reach -5...+6 latents: the default synthesis margin covers that, 4 would not."""
    torch.manual_seed(0)
    g_s = HyperpriorModel(ModelConfig(channels=16, latent_channels=24, gain_levels=4)).g_s
    synthesis = _randomised(with_residual_blocks(g_s, (0, 1, 2, 3, 4, 5))).eval()
    for block in synthesis.blocks.values():
        with torch.no_grad():
            block.conv2.weight.mul_(20)  # strong enough that a short margin shows in 8-bit pixels
    y = torch.randn(1, 24, 14, 14) * 4
    assert SYNTHESIS_MARGIN > DEFAULT_MARGIN
    out = {}
    with torch.no_grad():
        for name, options in (("whole", dict(tile=14)), ("tiled", dict(tile=3)),  # the default margin
                              ("short", dict(tile=3, margin=DEFAULT_MARGIN))):
            rgb = np.zeros((224, 224, 3), np.uint8)
            synthesise_tiled(synthesis, y, rgb, **options)
            out[name] = rgb.astype(np.int16)
    assert np.abs(out["whole"] - out["tiled"]).max() <= 1
    assert np.abs(out["whole"] - out["short"]).max() > 1
