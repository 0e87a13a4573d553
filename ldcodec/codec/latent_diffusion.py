"""Few-step sampling of the diffusion decoder with diffusers' schedulers.

Both samplers use the cosine schedule ("squaredcos_cap_v2", 1000 training
timesteps) and x0 prediction (``prediction_type="sample"``), the objective the
denoiser is trained on. Two starts:

* ``"matched"`` (Relic et al. 2024): start at the timestep t whose noise level
  σ_t = sqrt((1−ᾱ_t)/ᾱ_t) matches the quantization noise (uniform, variance 1/12
  in gained units, see :meth:`LatentDenoiser.quantization_sigma`), from
  x_t = sqrt(ᾱ_t)·ŷ + sqrt(1−ᾱ_t)·ε;
* ``"noise"``: pure noise at the last training timestep, the full schedule.

The K timesteps are evenly spaced from the start down, ``round(t_start·(K−i)/K)``,
and the last step lands on the clean latent. DPM-Solver++ takes them through
``set_timesteps(timesteps=...)``. diffusers' DDIM has no custom timesteps: it
steps from t to ``t − num_train_timesteps // num_inference_steps``, which assumes
even spacing from T. :func:`_ddim_step` therefore sets ``num_inference_steps`` to
the exact fraction T/(t − t_next) before each step, so that this expression is the
next timestep of our schedule (checked against the closed-form DDIM update in the
tests).

All noise comes from a CPU ``torch.Generator`` seeded with ``seed``: the same
stream and seed give the same noise on any device and thread count.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from ldcodec.codec.denoiser import LatentDenoiser
from ldcodec.errors import LdcodecError

SAMPLERS = ("ddim", "dpmpp")
STARTS = ("matched", "noise")
MAX_STEPS = 8
BETA_SCHEDULE = "squaredcos_cap_v2"


def make_scheduler(sampler: str, num_train_timesteps: int = 1000):
    """A fresh scheduler (they hold per-run state) for ``sampler``."""
    common = dict(num_train_timesteps=num_train_timesteps, beta_schedule=BETA_SCHEDULE, prediction_type="sample")
    if sampler == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common)
    if sampler == "dpmpp":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                           final_sigmas_type="zero", **common)
    raise LdcodecError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")


def training_alphas_cumprod(num_train_timesteps: int = 1000) -> torch.Tensor:
    """ᾱ_t of the cosine schedule (the same for both samplers and for training)."""
    return make_scheduler("ddim", num_train_timesteps).alphas_cumprod.clone()


def matched_timestep(sigma: float, alphas_cumprod: torch.Tensor) -> int:
    """The first timestep whose noise level σ_t = sqrt((1−ᾱ_t)/ᾱ_t) reaches ``sigma``.

    σ_t increases with t, so this is monotone in ``sigma``.
    """
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    index = int(torch.searchsorted(sigmas.double(), torch.tensor([float(sigma)], dtype=torch.float64)).item())
    return min(index, len(alphas_cumprod) - 1)


def timestep_schedule(t_start: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps from ``t_start`` down (fewer if t_start < steps)."""
    ts = [round(t_start * (steps - i) / steps) for i in range(steps)]
    return sorted(set(ts), reverse=True)


def _ddim_step(scheduler: DDIMScheduler, x0: torch.Tensor, t: int, t_next: int, sample: torch.Tensor) -> torch.Tensor:
    gap = t - t_next
    scheduler.num_inference_steps = Fraction(scheduler.config.num_train_timesteps, gap)  # T // (T/gap) == gap
    return scheduler.step(x0, t, sample, eta=0.0).prev_sample


def check_options(steps: int, sampler: str, start: str) -> None:
    if not 1 <= steps <= MAX_STEPS:
        raise LdcodecError(f"diffusion steps must be in 1..{MAX_STEPS}, got {steps}")
    if sampler not in SAMPLERS:
        raise LdcodecError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    if start not in STARTS:
        raise LdcodecError(f"unknown start {start!r}; use one of {', '.join(STARTS)}")


def sample_latents(denoiser: LatentDenoiser, y_hat: torch.Tensor, quality: torch.Tensor, quant_sigma: float,
                   steps: int, seed: int = 0, sampler: str = "dpmpp", start: str = "matched") -> torch.Tensor:
    """Denoise normalised latents ``y_hat`` (1×M×h×w) in ``steps`` steps; returns x0 (float32).

    ``quant_sigma``: the quantization noise level in normalised units (sets the matched start).
    """
    check_options(steps, sampler, start)
    scheduler = make_scheduler(sampler, denoiser.config.num_train_timesteps)
    alphas = scheduler.alphas_cumprod
    if start == "matched":
        t_start = matched_timestep(quant_sigma, alphas)
    else:
        t_start = denoiser.config.num_train_timesteps - 1
    timesteps = timestep_schedule(t_start, steps)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    eps = torch.randn(y_hat.shape, generator=generator, dtype=torch.float32).to(y_hat.device)
    y_hat = y_hat.float()
    a = alphas[timesteps[0]].to(y_hat.device)
    x = a.sqrt() * y_hat + (1 - a).sqrt() * eps if start == "matched" else eps
    if sampler == "dpmpp":
        scheduler.set_timesteps(timesteps=timesteps)
    for i, t in enumerate(timesteps):
        x0 = denoiser(x, torch.tensor([t], dtype=torch.long), y_hat, quality).float()
        if sampler == "dpmpp":
            x = scheduler.step(x0, t, x).prev_sample
        else:
            x = _ddim_step(scheduler, x0, t, timesteps[i + 1] if i + 1 < len(timesteps) else -1, x)
    return x.float()
