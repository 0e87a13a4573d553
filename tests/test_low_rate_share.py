"""``low_rate_share``: a share of the training batches draws its quality from the low rates only, the
rest (and every batch at share 0, as before) uniformly from [0, 1]."""

from __future__ import annotations

import pytest
import torch

from tests.test_adversarial_term import _config
from tests.test_diffusion_decoder import _image_folder, tiny_base


@pytest.fixture
def setup(tmp_path):
    pytest.importorskip("lpips")
    return tmp_path, _image_folder(tmp_path), tiny_base(tmp_path)


def _draws(setup, n=4000, **extra):
    from ldcodec.train.diffusion_trainer import DiffusionTrainer

    trainer = DiffusionTrainer(_config(*setup, 1, 0.0, run="q", **extra))
    torch.manual_seed(5)
    return torch.cat([trainer.draw_quality() for _ in range(n)])


def test_share_zero_draws_uniformly_as_before(setup):
    q = _draws(setup)
    torch.manual_seed(5)
    assert torch.equal(q, torch.cat([torch.rand(1) for _ in range(len(q))]))  # the same stream as before


def test_a_share_of_batches_draws_from_the_low_rates(setup):
    q = _draws(setup, low_rate_share=0.5, low_rate_quality=0.4)
    assert 0.0 <= q.min() and q.max() <= 1.0
    # Uniform: 40 % of the draws below 0.4; with half the batches from [0, 0.4]: 0.5 + 0.5 * 0.4 = 70 %.
    assert abs((q < 0.4).float().mean().item() - 0.70) < 0.03
    # Above 0.4 the density is halved but still uniform: as many in (0.4, 0.7] as in (0.7, 1].
    high = q[q > 0.4]
    assert abs((high <= 0.7).float().mean().item() - 0.5) < 0.05
    q_all = _draws(setup, low_rate_share=1.0, low_rate_quality=0.25)
    assert q_all.max() <= 0.25


@pytest.mark.parametrize("share, quality", [(-0.1, 0.45), (1.5, 0.45), (0.5, 0.0), (0.5, 1.2)])
def test_bad_low_rate_settings_are_refused(setup, share, quality):
    with pytest.raises(SystemExit, match="low-rate share"):
        _draws(setup, n=1, low_rate_share=share, low_rate_quality=quality)


def test_the_settings_are_recorded_in_the_exported_file(setup):
    from safetensors import safe_open

    from ldcodec.train.diffusion_trainer import DiffusionTrainer

    export = setup[0] / "d.safetensors"
    trainer = DiffusionTrainer(_config(*setup, 1, 0.0, run="e",
                                       export=str(export), low_rate_share=0.5, low_rate_quality=0.3))
    trainer.run()
    with safe_open(str(export), "pt") as f:
        training = f.metadata()["training"]
    assert '"low_rate_share": 0.5' in training and '"low_rate_quality": 0.3' in training


def test_the_cli_refuses_a_bad_share_without_a_traceback(tmp_path):
    pytest.importorskip("lpips")
    from click.testing import CliRunner

    from ldcodec.cli.main import cli

    result = CliRunner().invoke(cli, ["train-diffusion", str(_image_folder(tmp_path)), "--base",
                                      str(tiny_base(tmp_path)), "--low-rate-share", "2",
                                      "--checkpoint-dir", str(tmp_path / "c")])
    assert result.exit_code != 0 and "low-rate share" in result.output
    assert "Traceback" not in result.output
