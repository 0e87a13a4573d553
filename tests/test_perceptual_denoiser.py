"""``denoiser_perceptual_weight``: the perceptual loss reaches the denoiser through the sampler,
scaled by the weight, without changing what the decode is; at 0 the denoiser learns from the
diffusion objective only, as before."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from tests.test_adversarial_term import _config
from tests.test_diffusion_decoder import _image_folder, tiny_base


def _perceptual_grads(tmp_path, images, base, weight):
    """LPIPS of one fixed batch and the gradient it leaves on the denoiser (None where it leaves none)."""
    from ldcodec.train.diffusion_trainer import DiffusionTrainer

    torch.manual_seed(0)
    trainer = DiffusionTrainer(_config(tmp_path, images, base, 1, 0.0, run=f"w{weight}",
                                       denoiser_perceptual_weight=weight))
    # A denoiser whose output depends on its weights everywhere (a fresh one returns ŷ exactly).
    with torch.no_grad():
        for p in trainer.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    terms = trainer.loss_terms(x, torch.full((2,), 0.3), generator=torch.Generator().manual_seed(2))
    terms["lpips"].backward()
    grads = [None if p.grad is None else p.grad.clone() for p in trainer.denoiser.parameters()]
    synthesis_grads = [p.grad for p in trainer.synthesis.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in synthesis_grads)  # the synthesis learns either way
    return terms["lpips"].item(), grads


def test_the_perceptual_loss_reaches_the_denoiser_scaled_by_its_weight(tmp_path):
    pytest.importorskip("lpips")
    images, base = _image_folder(tmp_path), tiny_base(tmp_path)
    lpips_off, off = _perceptual_grads(tmp_path, images, base, 0.0)
    lpips_one, one = _perceptual_grads(tmp_path, images, base, 1.0)
    lpips_two, two = _perceptual_grads(tmp_path, images, base, 2.0)

    assert all(g is None for g in off)  # weight 0: the sampler runs without gradients
    assert lpips_off == lpips_one == lpips_two  # the weight scales the gradient, not the decode
    assert any(g is not None and g.abs().sum() > 0 for g in one)
    for g1, g2 in zip(one, two):
        assert (g1 is None) == (g2 is None)
        if g1 is not None:
            torch.testing.assert_close(g2, 2 * g1, rtol=1e-4, atol=1e-7)


def test_the_weight_is_recorded_in_the_exported_file(tmp_path):
    pytest.importorskip("lpips")
    from ldcodec.train.diffusion_trainer import DiffusionTrainer

    images, base = _image_folder(tmp_path), tiny_base(tmp_path)
    export = tmp_path / "d.safetensors"
    trainer = DiffusionTrainer(_config(tmp_path, images, base, 2, 0.0, run="e", export=str(export),
                                       denoiser_perceptual_weight=0.5))
    trainer.run()
    with safe_open(str(export), "pt") as f:
        assert '"denoiser_perceptual_weight": 0.5' in f.metadata()["training"]


@pytest.mark.parametrize("weight, perceptual", [(-0.5, 1.0), (0.5, 0.0)])
def test_bad_denoiser_perceptual_settings_are_refused(tmp_path, weight, perceptual):
    pytest.importorskip("lpips")
    from ldcodec.train.diffusion_trainer import DiffusionTrainer

    images, base = _image_folder(tmp_path), tiny_base(tmp_path)
    with pytest.raises(SystemExit, match="denoiser's perceptual weight"):
        DiffusionTrainer(_config(tmp_path, images, base, 1, 0.0, run="bad", perceptual_weight=perceptual,
                                 denoiser_perceptual_weight=weight))


def test_the_cli_passes_the_denoiser_perceptual_weight(tmp_path):
    pytest.importorskip("lpips")
    from click.testing import CliRunner

    from ldcodec.cli.main import cli

    result = CliRunner().invoke(cli, ["train-diffusion", str(_image_folder(tmp_path)), "--base",
                                      str(tiny_base(tmp_path)), "--denoiser-perceptual-weight", "0.5",
                                      "--perceptual-weight", "0", "--checkpoint-dir", str(tmp_path / "c")])
    assert result.exit_code != 0 and "denoiser's perceptual weight" in result.output
    assert "Traceback" not in result.output
