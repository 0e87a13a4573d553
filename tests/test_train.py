"""The trainer on a tiny model and tiny images: it learns, checkpoints, resumes and exports."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from ldcodec.codec.model import ModelConfig
from ldcodec.train.data import split_images
from ldcodec.train.trainer import TrainConfig, Trainer, learning_rate


@pytest.fixture
def image_dir(tmp_path, image_factory):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(image_factory(72, 80, seed=i)).save(folder / f"img{i}.png")
    return folder


def config(image_dir, tmp_path, steps, **kw):
    return TrainConfig(data=str(image_dir), run="t", steps=steps, batch=2, crop=64, warmup=2, validate_every=50,
                       checkpoint_dir=str(tmp_path / "ckpt"), threads=1, precision="fp32",
                       model=ModelConfig(channels=8, latent_channels=8, gain_levels=2), **kw)


def test_train_checkpoint_resume_export(image_dir, tmp_path):
    import ldcodec

    export = tmp_path / "w.safetensors"
    Trainer(config(image_dir, tmp_path, 3, export=str(export))).run()
    trainer = Trainer(config(image_dir, tmp_path, 5, export=str(export)))
    assert trainer.step == 3  # resumed from the checkpoint
    trainer.run()
    assert trainer.step == 5
    codec = ldcodec.load(export)
    img = np.asarray(Image.open(image_dir / "img0.png"))
    assert codec.decode(codec.encode(img)).size == (80, 72)
    # a run whose checkpoint is gone starts from exported weights
    fresh = Trainer(config(image_dir, tmp_path / "other", 6, init_from=str(export)))
    assert fresh.step == 5


def test_rewarm_restarts_the_warm_up_at_the_resumed_step(image_dir, tmp_path):
    Trainer(config(image_dir, tmp_path, 3)).run()
    assert Trainer(config(image_dir, tmp_path, 10)).warmup_start == 0  # plain resume keeps the schedule
    rewarmed = Trainer(config(image_dir, tmp_path, 10, rewarm=True))
    assert (rewarmed.step, rewarmed.warmup_start) == (3, 3)
    cfg = rewarmed.cfg
    assert learning_rate(cfg, 3, rewarmed.warmup_start) == pytest.approx(cfg.lr / cfg.warmup)


def test_training_reduces_the_loss(image_dir, tmp_path):
    cfg = config(image_dir, tmp_path, 60, lr=3e-3, log_every=10)
    Trainer(cfg).run()
    with open(tmp_path / "ckpt" / "t" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert float(rows[-1]["loss"]) < 0.8 * float(rows[0]["loss"])


def test_learning_rate_schedule_warms_up_and_decays():
    cfg = TrainConfig(data="x", steps=100, lr=1e-3, min_lr=1e-5, warmup=10, decay_fraction=0.5)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 20) == pytest.approx(1e-3)
    assert learning_rate(cfg, 100) == pytest.approx(1e-5)
    assert learning_rate(cfg, 75) < 1e-3


def test_a_warm_up_that_starts_inside_the_decay_ramps_to_the_decayed_lr_without_overshooting_it():
    """``--init-from`` a file past the decay's start: the lr must not jump to the full lr and fall back."""
    cfg = TrainConfig(data="x", steps=100, lr=1e-3, min_lr=1e-5, warmup=10, decay_fraction=0.5)
    plain = [learning_rate(cfg, s) for s in range(60, 101)]
    rewarmed = [learning_rate(cfg, s, warmup_start=60) for s in range(60, 101)]
    assert rewarmed[0] == pytest.approx(plain[0] / 10)
    assert rewarmed[9] == pytest.approx(plain[9])  # the ramp ends on the schedule
    assert rewarmed[10:] == plain[10:]
    assert all(r <= p for r, p in zip(rewarmed, plain))
    assert all(a <= b for a, b in zip(rewarmed[:10], rewarmed[1:10]))  # rises during the warm-up


def test_held_out_split_is_stable_and_disjoint(tmp_path):
    for i in range(60):
        (tmp_path / f"{i:03d}.png").write_bytes(b"x")
    train, held = split_images(tmp_path)
    assert not set(train) & set(held)
    assert len(train) + len(held) == 60
    assert split_images(tmp_path) == (train, held)


def test_sigterm_stops_at_a_step_boundary_with_checkpoint_and_export(image_dir, tmp_path, monkeypatch):
    """kill -TERM ends a long run early without losing its steps (used to re-plan runs mid-session)."""
    import os
    import signal

    import torch

    from ldcodec.train import data

    calls = {"n": 0}
    real_batch = data.CropSampler.batch

    def batch_then_terminate(self, n):
        calls["n"] += 1
        if calls["n"] == 4:  # the val batch is call 1, so this is during training step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return real_batch(self, n)

    monkeypatch.setattr(data.CropSampler, "batch", batch_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    export = tmp_path / "w.safetensors"
    trainer = Trainer(config(image_dir, tmp_path, 1000, export=str(export)))
    trainer.run()
    assert trainer.step == 3  # the step in flight finished, no more began
    state = torch.load(tmp_path / "ckpt" / "t" / "last.pt", weights_only=False)
    assert state["step"] == 3 and export.exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is removed again


def test_a_new_lambda_range_moves_the_gain_levels_to_their_new_lambdas(image_dir, tmp_path):
    """``--init-from`` with another λ range: each level starts with the old gains at its new λ."""
    import dataclasses

    import torch

    from ldcodec.codec.weights import load_weights

    export = tmp_path / "w.safetensors"
    base = config(image_dir, tmp_path, 2, export=str(export))
    base = dataclasses.replace(base, model=ModelConfig(channels=8, latent_channels=8, gain_levels=4,
                                                       lambda_min=0.001, lambda_max=0.008))
    Trainer(base).run()
    old = load_weights(export).model
    with torch.no_grad():  # make the levels distinct so that a wrong mapping shows
        old.gain.log_gain.copy_(torch.randn_like(old.gain.log_gain))
        old.gain.log_inverse_gain.copy_(torch.randn_like(old.gain.log_inverse_gain))
    from ldcodec.codec.weights import export_weights
    export_weights(old, export, model_id="t", info={"steps": 2})
    wider = ModelConfig(channels=8, latent_channels=8, gain_levels=4, lambda_min=0.0005, lambda_max=0.004)
    fresh = Trainer(dataclasses.replace(base, checkpoint_dir=str(tmp_path / "other"), init_from=str(export),
                                        model=wider))
    new_gain = fresh.model.gain
    assert wider.level_lambdas().tolist() == pytest.approx([0.0005, 0.001, 0.002, 0.004])
    # Levels 1-3 of the new range (λ 0.001, 0.002, 0.004) sit inside the old one: the old gains there.
    for level, lam in ((1, 0.001), (2, 0.002), (3, 0.004)):
        q_old = torch.tensor([old.config.quality_for_lambda(torch.tensor(lam)).item()])
        assert torch.allclose(new_gain.log_gain[level].exp(), old.gain.gain(q_old)[0, :, 0, 0], atol=1e-5)
        assert torch.allclose(new_gain.log_inverse_gain[level].exp(), old.gain.inverse_gain(q_old)[0, :, 0, 0],
                              atol=1e-5)
    # Level 0 (λ 0.0005) lies one old level below the old range: linear extrapolation in log-gain.
    table = old.gain.log_gain
    assert torch.allclose(new_gain.log_gain[0], table[0] - (table[1] - table[0]), atol=1e-5)
    assert wider.quality_for_lambda(wider.rate_lambda(torch.tensor(0.3))).item() == pytest.approx(0.3)
