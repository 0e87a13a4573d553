"""The latent stage of the perceptual synthesis: identity at the start, stored, loaded, tiled, trained."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

import ldcodec
from ldcodec.codec.denoiser import LatentDenoiser
from ldcodec.codec.diffusion_weights import diffusion_path_for, export_denoiser
from ldcodec.codec.residual_synthesis import (LATENT_STAGE_KEY, LatentStage, ResidualSynthesis, load_synthesis,
                                              stage_of, synthesis_reach, with_residual_blocks)
from ldcodec.codec.weights import load_weights
from tests.conftest import synthetic_image
from tests.test_diffusion_decoder import TINY_DENOISER, _fake_lpips_file, _image_folder, tiny_base
from tests.test_perceptual_synthesis import _g_s


def _randomised(synthesis: ResidualSynthesis, seed=0, std=0.05, gain=1.0) -> ResidualSynthesis:
    """A latent stage that is not the identity any more (as after training); ``gain`` scales its
    blocks' convolutions, so that latents far away change the output visibly."""
    torch.manual_seed(seed)
    with torch.no_grad():
        synthesis.stage.project.weight.normal_(std=std)
        for block in synthesis.stage.blocks:
            block.conv1.weight.mul_(gain)
            block.conv2.weight.mul_(gain)
    return synthesis


def test_a_new_latent_stage_is_the_identity_and_reaches_two_latents_a_block(tmp_path):
    g_s = _g_s(tiny_base(tmp_path))
    staged = with_residual_blocks(copy.deepcopy(g_s), (), (3, 16))
    assert isinstance(staged, ResidualSynthesis) and staged.after == () and stage_of(staged) == (3, 16)
    assert synthesis_reach(staged) == 6 and synthesis_reach(g_s) == 0 and stage_of(g_s) == () == stage_of(None)
    y = torch.randn(1, 24, 5, 7)
    with torch.no_grad():
        assert torch.equal(staged(y), g_s(y))
        assert not torch.equal(_randomised(staged)(y), g_s(y))
    both = with_residual_blocks(staged, (1,))  # blocks added to a staged synthesis keep its stage
    assert both.after == (1,) and both.stage is staged.stage


@pytest.mark.parametrize("stage", [(0, 8), (2, 0), (17, 8), (2, 4096), (2,), (2, 8, 1), (True, 8)])
def test_latent_stages_out_of_bounds_are_refused(tmp_path, stage):
    with pytest.raises(ValueError, match="latent stage"):
        with_residual_blocks(_g_s(tiny_base(tmp_path)), (), stage)


def test_a_file_stage_and_a_different_one_do_not_mix(tmp_path):
    g_s = _g_s(tiny_base(tmp_path))
    with pytest.raises(ValueError, match="latent stage"):
        with_residual_blocks(with_residual_blocks(g_s, (), (2, 8)), (), (3, 8))
    with pytest.raises(ValueError, match="latent stage"):
        load_synthesis(with_residual_blocks(copy.deepcopy(g_s), (1,)), with_residual_blocks(copy.deepcopy(g_s), (1,), (2, 8)))


def test_a_diffusion_file_with_a_latent_stage_decodes_with_it_tiled_or_whole(tmp_path):
    base = tiny_base(tmp_path)
    sha = load_weights(base).sha256
    plain = ldcodec.load(base, diffusion=tmp_path / "absent.safetensors")
    blob = plain.encode(synthetic_image(160, 160), quality=0.5)
    identity_file = tmp_path / "identity.safetensors"
    export_denoiser(LatentDenoiser(TINY_DENOISER), identity_file, sha, "base",
                    synthesis=with_residual_blocks(_g_s(base), (1,), (4, 16)))
    trained = _randomised(with_residual_blocks(_g_s(base), (1,), (4, 16)), std=0.5, gain=3.5)
    export_denoiser(LatentDenoiser(TINY_DENOISER), diffusion_path_for(base), sha, "base", synthesis=trained)
    with safe_open(str(diffusion_path_for(base)), "pt") as f:
        assert f.metadata()[LATENT_STAGE_KEY] == "[4, 16]"

    codec = ldcodec.load(base)
    assert codec.decode(blob).tobytes() == plain.decode(blob).tobytes()  # steps 0 never sees the stage
    staged = np.asarray(codec.decode(blob, steps=1))
    loaded = codec._diffusion_synthesis
    assert isinstance(loaded.stage, LatentStage) and stage_of(loaded) == (4, 16)
    for k, v in trained.state_dict().items():
        if k.startswith("stage."):
            assert torch.equal(loaded.state_dict()[k], v.half().float()), k
    identity = np.asarray(ldcodec.load(base, diffusion=identity_file).decode(blob, steps=1))
    assert np.abs(identity.astype(int) - staged.astype(int)).max() > 1  # the stage really decodes
    # Tiles of 2 latents: the stage's 8 latents of reach come on top of the g_s margin
    # (with the g_s margin alone this synthesis is 17 levels off).
    tiled = np.asarray(ldcodec.load(base, tile=2).decode(blob, steps=1))
    assert np.abs(tiled.astype(int) - staged.astype(int)).max() <= 1


def test_training_adds_a_latent_stage_to_a_files_synthesis_and_keeps_it_on_resume(tmp_path):
    pytest.importorskip("lpips")
    from ldcodec.train.diffusion_trainer import DiffusionTrainConfig, DiffusionTrainer

    images = _image_folder(tmp_path)
    base = tiny_base(tmp_path)
    init_file = tmp_path / "blocks.safetensors"
    export_denoiser(LatentDenoiser(TINY_DENOISER), init_file, load_weights(base).sha256, "base",
                    info={"steps": 10}, synthesis=with_residual_blocks(_g_s(base), (1,)))
    export = tmp_path / "staged.safetensors"

    def config(steps, stage=(2, 16), run="s"):
        return DiffusionTrainConfig(data=str(images), base=str(base), run=run, steps=steps, batch=2, crop=64,
                                    warmup=1, threads=1, precision="fp32", checkpoint_dir=str(tmp_path / "ckpt"),
                                    log_every=1, validate_every=100, scale_batches=1, export=str(export),
                                    denoiser=TINY_DENOISER, lpips_weights=str(_fake_lpips_file(tmp_path)),
                                    perceptual_steps=(1,), init_from=str(init_file), synthesis_blocks=(1,),
                                    synthesis_latent_stage=stage)

    trainer = DiffusionTrainer(config(13))
    assert stage_of(trainer.synthesis) == (2, 16)
    y = torch.randn(1, 24, 4, 4)
    with torch.no_grad():
        unstaged = copy.deepcopy(trainer.synthesis)
        unstaged.stage = None
        assert torch.equal(trainer.synthesis(y), unstaged(y))  # the new stage starts as the identity
    trainer.run()
    assert trainer.synthesis.stage.project.weight.abs().sum() > 0  # and it trains
    with safe_open(str(export), "pt") as f:
        assert f.metadata()[LATENT_STAGE_KEY] == "[2, 16]"
    with pytest.raises(SystemExit, match="latent stage"):
        DiffusionTrainer(config(14, stage=(3, 16)))
    resumed = DiffusionTrainer(config(14))
    assert resumed.step == 13
    for k, v in trainer.synthesis.state_dict().items():
        assert torch.equal(resumed.synthesis.state_dict()[k], v), k
    with pytest.raises(SystemExit, match="not all of them"):  # a file's stage is never dropped
        DiffusionTrainer(DiffusionTrainConfig(**{**config(1).__dict__, "run": "drop", "init_from": str(export),
                                                 "synthesis_latent_stage": ()}))


@pytest.mark.parametrize("value", ["4", "4,x", "0,8", "2,8,1"])
def test_cli_refuses_a_bad_latent_stage(tmp_path, value):
    from ldcodec.cli.main import cli

    result = CliRunner().invoke(cli, ["train-diffusion", str(tmp_path), "--synthesis-latent-stage", value])
    assert result.exit_code == 2 and "--synthesis-latent-stage" in result.output and "Traceback" not in result.output
