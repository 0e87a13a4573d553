"""The adversarial term of the perceptual synthesis: the critic learns, the term trains the
synthesis only, a run keeps its loss, and nothing of the critic reaches the exported file."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors import safe_open

from ldcodec.train.discriminator import PatchDiscriminator, discriminator_loss, generator_loss
from tests.test_diffusion_decoder import TINY_DENOISER, _fake_lpips_file, _image_folder, tiny_base


def test_the_critic_learns_to_tell_real_from_decoded():
    torch.manual_seed(0)
    critic = PatchDiscriminator(latent_channels=4, width=8)
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.999))
    real = torch.rand(4, 3, 32, 32)
    fake = torch.nn.functional.avg_pool2d(real, 5, stride=1, padding=2)  # a blurred decode
    latents = torch.randn(4, 4, 2, 2)
    first = discriminator_loss(critic(real, latents), critic(fake, latents)).item()
    for _ in range(60):
        loss = discriminator_loss(critic(real, latents), critic(fake, latents))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert critic(real, latents).shape == (4, 1, 4, 4)  # one logit per 8×8 patch
    assert loss.item() < 0.5 * first
    assert generator_loss(critic(fake, latents)) > generator_loss(critic(real, latents))


def _config(tmp_path, images, base, steps, adversarial_weight, run="adv", **extra):
    """A tiny training run's settings; ``extra`` adds or overrides any."""
    from ldcodec.train.diffusion_trainer import DiffusionTrainConfig

    settings = dict(data=str(images), base=str(base), run=run, steps=steps, batch=2, crop=64, warmup=1, threads=1,
                    precision="fp32", checkpoint_dir=str(tmp_path / "ckpt"), log_every=1, validate_every=100,
                    scale_batches=1, denoiser=TINY_DENOISER, lpips_weights=str(_fake_lpips_file(tmp_path)),
                    perceptual_steps=(1,), adversarial_weight=adversarial_weight)
    return DiffusionTrainConfig(**{**settings, **extra})


def test_the_adversarial_term_trains_the_synthesis_and_the_critic_and_a_run_keeps_it(tmp_path):
    pytest.importorskip("lpips")
    from ldcodec.train.diffusion_trainer import DiffusionTrainer

    images, base = _image_folder(tmp_path), tiny_base(tmp_path)
    export = tmp_path / "adv.safetensors"
    trainer = DiffusionTrainer(_config(tmp_path, images, base, 3, 0.5, export=str(export)))
    critic_before = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}

    # The term reaches the synthesis and not the critic (which learns from its own loss only).
    x = torch.from_numpy(trainer.sampler.batch(2))
    quality = torch.full((2,), 0.3)
    terms = trainer.loss_terms(x, quality)
    terms["adv"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.synthesis.parameters())
    assert all(p.grad is None for p in trainer.discriminator.parameters())
    trainer.optimizer.zero_grad(set_to_none=True)
    assert trainer.discriminator_step(x) > 0
    assert any(not torch.equal(v, critic_before[k]) for k, v in trainer.discriminator.state_dict().items())

    trainer.run()
    with open(tmp_path / "ckpt" / "adv" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["adv"] and rows[-1]["disc"]
    with safe_open(str(export), "pt") as f:  # the critic is training-only
        assert not any("discriminator" in k or k.startswith("net.") for k in f.keys())
        assert '"adversarial_weight": 0.5' in f.metadata()["training"]

    resumed = DiffusionTrainer(_config(tmp_path, images, base, 4, 0.5, export=str(export)))
    assert resumed.step == 3
    for k, v in trainer.discriminator.state_dict().items():
        assert torch.equal(resumed.discriminator.state_dict()[k], v), k
    with pytest.raises(SystemExit, match="adversarial term"):
        DiffusionTrainer(_config(tmp_path, images, base, 4, 0.0))


@pytest.mark.parametrize("weight, perceptual", [(-0.1, 1.0), (0.1, 0.0)])
def test_bad_adversarial_settings_are_refused(tmp_path, weight, perceptual):
    pytest.importorskip("lpips")
    from ldcodec.train.diffusion_trainer import DiffusionTrainer

    images, base = _image_folder(tmp_path), tiny_base(tmp_path)
    with pytest.raises(SystemExit, match="adversarial weight"):
        DiffusionTrainer(_config(tmp_path, images, base, 1, weight, run="bad", perceptual_weight=perceptual))


def test_the_cli_passes_the_adversarial_weight(tmp_path):
    pytest.importorskip("lpips")
    from click.testing import CliRunner

    from ldcodec.cli.main import cli

    result = CliRunner().invoke(cli, ["train-diffusion", str(_image_folder(tmp_path)), "--base",
                                      str(tiny_base(tmp_path)), "--adversarial-weight", "0.1",
                                      "--perceptual-weight", "0", "--checkpoint-dir", str(tmp_path / "c")])
    assert result.exit_code != 0 and "adversarial weight" in result.output and "Traceback" not in result.output
