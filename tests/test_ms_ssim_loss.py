"""The MS-SSIM term of a decoder-only run's loss (``ldcodec train --msssim-weight``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ldcodec.cli.main import cli
from ldcodec.codec.model import ModelConfig
from ldcodec.eval.metrics import ms_ssim
from ldcodec.train.ms_ssim import ms_ssim_per_sample
from ldcodec.train.trainer import TrainConfig, Trainer
from tests.conftest import synthetic_image

TINY = dict(channels=16, latent_channels=24, gain_levels=4)
CROP = 192  # MS-SSIM's five scales need more than 160 px; the hyperprior, a multiple of 64


@pytest.fixture(scope="module")
def large_image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    for i in range(4):
        Image.fromarray(synthetic_image(200, 208, seed=i)).save(folder / f"img{i}.png")
    return folder


def _config(folder, tmp_path, steps, **kw):
    kw.setdefault("train_only", "synthesis")
    return TrainConfig(data=str(folder), run="m", steps=steps, batch=2, crop=CROP, warmup=2, validate_every=50,
                       checkpoint_dir=str(tmp_path / "ckpt"), threads=1, precision="fp32",
                       model=ModelConfig(**TINY, synthesis_blocks=(1, 3)), **kw)


def test_the_training_term_is_the_eval_suites_ms_ssim():
    a, b = synthetic_image(176, 184, seed=1), synthetic_image(176, 184, seed=2)
    as_batch = lambda im: torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255.0  # noqa: E731
    term = ms_ssim_per_sample(as_batch(b), as_batch(a))
    assert term.shape == (1,)
    assert term.item() == pytest.approx(ms_ssim(a, b), abs=1e-5)


def test_the_loss_mixes_log_mse_and_log_one_minus_ms_ssim(large_image_dir, tmp_path):
    x = torch.from_numpy(np.stack([synthetic_image(CROP, CROP, seed=s) for s in (5, 6)])).permute(0, 3, 1, 2)
    x = x.float() / 255.0
    quality = torch.tensor([0.2, 0.9])
    losses = {}
    for w in (0.0, 0.3, 1.0):
        trainer = Trainer(_config(large_image_dir, tmp_path / str(w), 1, msssim_weight=w))
        trainer.model.eval()
        with torch.no_grad():
            loss, _, mse = trainer.loss(x, quality)
            x_hat = trainer.model(x, quality).x_hat
        one_minus = 1.0 - ms_ssim_per_sample(x_hat, x)
        expected = ((1 - w) * torch.log(mse) + w * torch.log(one_minus)).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        losses[w] = loss.item()
    assert len(set(losses.values())) == 3  # the weight is not ignored


def test_an_ms_ssim_run_raises_ms_ssim_and_keeps_its_loss(large_image_dir, tmp_path):
    cfg = _config(large_image_dir, tmp_path, 30, lr=3e-3, log_every=10, msssim_weight=1.0)
    Trainer(cfg).run()
    rows = (tmp_path / "ckpt" / "m" / "log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[3]) for r in rows]  # mean log(1 - MS-SSIM)
    assert losses[-1] < losses[0]
    with pytest.raises(SystemExit, match="a run keeps its loss"):
        Trainer(_config(large_image_dir, tmp_path, 40, msssim_weight=0.5))


@pytest.mark.parametrize("kw, message", [
    (dict(msssim_weight=0.3, train_only="all"), "use it with train_only='synthesis'"),
    (dict(msssim_weight=1.5), "0 < w <= 1"),
    (dict(msssim_weight=0.3, crop=128), "crops larger than 160 px"),
])
def test_bad_ms_ssim_settings_are_refused(large_image_dir, tmp_path, kw, message):
    crop = kw.pop("crop", CROP)
    cfg = _config(large_image_dir, tmp_path, 1, **kw)
    cfg.crop = crop
    with pytest.raises(SystemExit, match=message):
        Trainer(cfg)


def test_the_cli_refuses_a_small_crop_cleanly(large_image_dir, tmp_path):
    result = CliRunner().invoke(cli, ["train", str(large_image_dir), "--train-only", "synthesis", "--msssim-weight",
                                      "0.3", "--crop", "128", "--steps", "1",
                                      "--checkpoint-dir", str(tmp_path / "ckpt")])
    assert result.exit_code != 0 and "crops larger than 160 px" in result.output
    assert "Traceback" not in result.output
