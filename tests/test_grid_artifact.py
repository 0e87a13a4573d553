"""The synthesis grid: the measure finds a pattern repeated in every 16×16 cell and nothing else,
and the training penalty on it reaches the perceptual synthesis, is logged and is recorded."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ldcodec.eval.grid_artifact import GRID_PERIOD, grid_power, periodic_component
from ldcodec.eval.metrics import grid_rms
from tests.test_adversarial_term import _config as adversarial_config
from tests.test_diffusion_decoder import _image_folder, tiny_base


def _pattern(seed=0) -> torch.Tensor:
    cell = torch.randn(3, GRID_PERIOD, GRID_PERIOD, generator=torch.Generator().manual_seed(seed))
    return cell - cell.mean(dim=(1, 2), keepdim=True)


def test_the_periodic_component_is_the_pattern_repeated_in_every_cell():
    pattern = _pattern()
    error = pattern.repeat(1, 4, 6)[None]  # 64×96: 4×6 cells
    assert torch.allclose(periodic_component(error)[0], pattern, atol=1e-6)
    # A constant offset is no pattern; rows and columns past the last whole cell are left out.
    assert torch.allclose(periodic_component(error + 0.3)[0], pattern, atol=1e-6)
    ragged = torch.cat([error, torch.full((1, 3, 64, 5), 9.0)], dim=3)
    assert torch.allclose(periodic_component(ragged)[0], pattern, atol=1e-6)


def test_error_that_follows_the_content_averages_away():
    noise = torch.randn(1, 3, 512, 768, generator=torch.Generator().manual_seed(1))  # 1,536 cells
    rms = periodic_component(noise).square().mean().sqrt().item()
    assert 0.5 / math.sqrt(1536) < rms < 1.5 / math.sqrt(1536)
    with pytest.raises(ValueError, match="16×16"):
        periodic_component(torch.zeros(1, 3, 15, 64))


def test_grid_rms_measures_a_pattern_in_8_bit_levels():
    rng = np.random.default_rng(0)
    reference = rng.integers(40, 216, size=(64, 96, 3), dtype=np.uint8)
    checker = np.where((np.add.outer(np.arange(64), np.arange(96)) % 2) == 0, 4, -4)  # period 2 divides 16
    decoded = (reference.astype(np.int16) + checker[..., None]).astype(np.uint8)
    assert grid_rms(reference, decoded) == pytest.approx(4.0, abs=1e-9)
    assert grid_rms(reference, reference) == 0.0
    shuffled = rng.permutation(checker.ravel()).reshape(checker.shape)  # the same error, not in step with the grid
    assert grid_rms(reference, (reference.astype(np.int16) + shuffled[..., None]).astype(np.uint8)) < 1.5
    assert math.isnan(grid_rms(reference[:8], decoded[:8]))
    with pytest.raises(ValueError, match="shapes differ"):
        grid_rms(reference, decoded[:32])


def test_the_penalty_has_a_gradient_towards_removing_the_pattern():
    target = torch.rand(2, 3, 32, 32)
    decoded = (target + 0.05 * _pattern().repeat(1, 2, 2)[None]).requires_grad_(True)
    penalty = grid_power(decoded, target)
    assert penalty.item() == pytest.approx(0.05**2 * _pattern().square().mean().item(), rel=1e-4)
    penalty.backward()
    # d(penalty)/d(pixel) = 2·component / (elements of the mean cell · cells) = component / 3072 here
    # (1,536 elements, 4 cells), so a step of 1,536 halves the pattern and quarters the penalty.
    stepped = decoded.detach() - 1536 * decoded.grad
    assert grid_power(stepped, target).item() == pytest.approx(penalty.item() / 4, rel=1e-4)


def _config(tmp_path, images, base, steps, grid_weight, run="grid", **extra):
    return adversarial_config(tmp_path, images, base, steps, 0.0, run=run, validate_every=2, grid_weight=grid_weight,
                              **extra)


def test_the_grid_penalty_trains_the_synthesis_is_logged_and_recorded(tmp_path):
    pytest.importorskip("lpips")
    from ldcodec.train.diffusion_trainer import DiffusionTrainer

    images, base = _image_folder(tmp_path), tiny_base(tmp_path)
    export = tmp_path / "grid.safetensors"
    trainer = DiffusionTrainer(_config(tmp_path, images, base, 2, 40.0, export=str(export)))
    x = torch.from_numpy(trainer.sampler.batch(2))
    quality = torch.full((2,), 0.3)
    terms = trainer.loss_terms(x, quality)
    assert terms["grid"].item() > 0
    without = dict(terms, grid=torch.zeros(()))
    assert (trainer.objective(terms, quality) - trainer.objective(without, quality)).item() == pytest.approx(
        40.0 * terms["grid"].item(), abs=1e-5)
    terms["grid"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.synthesis.parameters())
    trainer.optimizer.zero_grad(set_to_none=True)

    trainer.run()
    with open(tmp_path / "ckpt" / "grid" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["grid"]) > 0 and float(rows[-1]["val_grid"]) > 0
    with safe_open(str(export), "pt") as f:
        assert '"grid_weight": 40.0' in f.metadata()["training"]


@pytest.mark.parametrize("weight, perceptual", [(-1.0, 1.0), (5.0, 0.0)])
def test_bad_grid_settings_are_refused(tmp_path, weight, perceptual):
    pytest.importorskip("lpips")
    from ldcodec.train.diffusion_trainer import DiffusionTrainer

    images, base = _image_folder(tmp_path), tiny_base(tmp_path)
    with pytest.raises(SystemExit, match="grid weight"):
        DiffusionTrainer(_config(tmp_path, images, base, 1, weight, run="bad", perceptual_weight=perceptual))


def test_the_cli_refuses_a_negative_grid_weight(tmp_path):
    from click.testing import CliRunner

    from ldcodec.cli.main import cli

    result = CliRunner().invoke(cli, ["train-diffusion", str(tmp_path), "--grid-weight", "-1"])
    assert result.exit_code == 2 and "--grid-weight" in result.output and "Traceback" not in result.output
