"""Training the diffusion decoder on a frozen base model's latents.

Each step takes random crops, **one quality q ~ U[0,1] for the batch** (like λ per
batch in the base trainer; the sampler below needs one noise level per batch), the
base model's gained latents y_g and their quantized version ŷ_g = round(y_g − μ) + μ
(μ snapped as the coder does), both normalised (see :mod:`ldcodec.codec.denoiser`).

* **Denoiser** — a real diffusion objective: t is drawn uniformly from the whole
  schedule for half the batch and uniformly from [0, t_match(q)] (the matched start
  the default sampler uses) for the other half; the clean latent is noised with the
  cosine schedule and the denoiser predicts it (x0 MSE in latent space) from
  (x_t, t, ŷ, q).
* **Perceptual synthesis** (``perceptual_weight`` > 0) — a copy of the base g_s is
  fine-tuned on what the decoder will feed it: the output of the actual sampler
  (DPM-Solver++, matched start, K ∈ ``perceptual_steps``, a random seed), computed
  without gradients, so the denoiser learns from the diffusion loss only (unless
  ``denoiser_perceptual_weight`` > 0, below). Its loss is
  ``mse_weight``·MSE + ``perceptual_weight``·LPIPS(AlexNet) against the crop. With
  ``mse_weight_low`` the MSE weight follows the batch's quality, log-interpolated from
  ``mse_weight_low`` at q = 0 to ``mse_weight`` at q = 1: at low rates, where a decode
  keeps little of the image, it leans towards LPIPS; at high rates towards PSNR.
  With ``adversarial_weight`` > 0 the loss also has an adversarial term from a conditional
  patch discriminator (:mod:`ldcodec.train.discriminator`), trained in turn on the same batch.
  With ``grid_weight`` > 0 it also has ``grid_weight``·(mean square of the error's 16-pixel periodic
  component), :mod:`ldcodec.eval.grid_artifact`: LPIPS alone taught g_s' a fixed pattern of the
  synthesis' period, which it scores as texture and a viewer sees as a screen over the image.
* **Perceptual denoiser** (``denoiser_perceptual_weight`` > 0) — the sampler runs with
  gradients, and that loss reaches the denoiser too, scaled by the weight, on top of its
  diffusion objective (as CDC, Yang & Mandt 2023, adds LPIPS to the x0-parameterised
  diffusion loss). The denoiser already runs at every steps > 0 decode, at 1/16 resolution:
  this puts its capacity to work on what the decode looks like at no cost in decode time.

The base model never changes: the encoder, the bitstream and steps 0 stay as they are.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ldcodec.codec.allocator import keep_large_allocations
from ldcodec.codec.denoiser import DenoiserConfig, LatentDenoiser
from ldcodec.codec.diffusion_weights import export_denoiser, load_denoiser
from ldcodec.codec.entropy_parameters import MEAN_GRID
from ldcodec.codec.latent_diffusion import matched_timestep, sample_latents, training_alphas_cumprod
from ldcodec.codec.residual_synthesis import (block_positions, blocks_of, check_stage_shape, load_synthesis, stage_of,
                                              with_residual_blocks)
from ldcodec.codec.release import DEFAULT_MODEL_ID
from ldcodec.codec.weights import load_weights
from ldcodec.eval.grid_artifact import grid_power
from ldcodec.train.data import CropSampler, split_images
from ldcodec.train.discriminator import PatchDiscriminator, discriminator_loss, generator_loss
from ldcodec.train.trainer import (
    DEFAULT_CHECKPOINT_DIR,
    atomic_torch_save,
    learning_rate,
    pick_device,
    restore_sigterm,
    stop_on_sigterm,
    use_bf16,
)


#: Where the perceptual synthesis may start when ``init_from`` is set (see ``synthesis_from``).
SYNTHESIS_STARTS = ("init", "base")


@dataclass
class DiffusionTrainConfig:
    data: str
    #: Base model id or weights path; it stays frozen.
    base: str = DEFAULT_MODEL_ID
    run: str = f"{DEFAULT_MODEL_ID}-diffusion"
    steps: int = 4000
    batch: int = 16
    crop: int = 256
    lr: float = 2e-4
    min_lr: float = 1e-6
    warmup: int = 200
    decay_fraction: float = 0.3
    clip_norm: float = 1.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0
    checkpoint_dir: str = str(DEFAULT_CHECKPOINT_DIR)
    checkpoint_minutes: float = 5.0
    validate_every: int = 500
    log_every: int = 50
    max_minutes: float = 0.0
    export: str = ""
    #: Diffusion weights to start from when the run has no checkpoint yet.
    init_from: str = ""
    #: Where the perceptual synthesis starts with ``init_from``: "init" (that file's synthesis) or "base"
    #: (a fresh copy of the base g_s; only the denoiser comes from the file), for when the base g_s has
    #: moved past the one the file's synthesis was tuned from.
    synthesis_from: str = "init"
    #: Batches used once, at a fresh start, to measure the per-channel latent scale.
    scale_batches: int = 4
    #: Weight of LPIPS in the perceptual synthesis' loss; 0 = no perceptual synthesis (base g_s at steps > 0).
    perceptual_weight: float = 1.0
    #: Weight of the pixel MSE (images in [0, 1]) in that loss.
    mse_weight: float = 150.0
    #: MSE weight at quality 0 (log-interpolated to ``mse_weight`` at quality 1); 0 = ``mse_weight`` at every rate.
    mse_weight_low: float = 0.0
    #: Share of batches whose quality is drawn from [0, ``low_rate_quality``] instead of [0, 1]: more of the
    #: scarce training at the low rates, where the diffusion decoder matters (0: uniform on [0, 1]).
    low_rate_share: float = 0.0
    low_rate_quality: float = 0.45
    #: Weight of the adversarial term in the perceptual synthesis' loss (0: none, no discriminator).
    adversarial_weight: float = 0.0
    #: Weight of the synthesis grid (the error's 16-pixel periodic component, mean square, images in [0, 1])
    #: in the perceptual synthesis' loss (0: none; the term is still logged).
    grid_weight: float = 0.0
    #: Learning rate of the discriminator (Adam, betas 0.5 / 0.999).
    discriminator_lr: float = 1e-4
    #: Scale of the perceptual synthesis' loss as it reaches the denoiser through the sampler
    #: (0: the sampler runs without gradients; the denoiser learns from the diffusion loss only).
    denoiser_perceptual_weight: float = 0.0
    #: Learning rate of the perceptual synthesis (it starts from the trained base g_s).
    synthesis_lr: float = 5e-5
    #: g_s layer indexes followed by a residual block in the perceptual synthesis (empty: the plain g_s;
    #: see :mod:`ldcodec.codec.residual_synthesis`).
    synthesis_blocks: tuple[int, ...] = ()
    #: (blocks, width) of a latent stage before g_s's first layer in the perceptual synthesis (empty: none;
    #: see :class:`ldcodec.codec.residual_synthesis.LatentStage`).
    synthesis_latent_stage: tuple[int, ...] = ()
    #: Sampler step counts whose outputs the perceptual synthesis is trained on (one drawn per step).
    perceptual_steps: tuple[int, ...] = (1, 2, 4)
    #: LPIPS weights file (default: the provisioned cache, see ldcodec.eval.lpips_weights).
    lpips_weights: str = ""
    #: The denoiser's shape; ``latent_channels`` is taken from the base model.
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)


class DiffusionTrainer:
    LOG_FIELDS = ["step", "hours", "lr", "loss", "yhat_loss", "psnr", "lpips", "val_loss", "val_psnr", "val_lpips",
                  "val_base_psnr", "val_base_lpips", "adv", "disc", "grid", "val_grid"]
    #: Fixed validation qualities of the perceptual check (the low rates the issue targets, and one higher).
    VALIDATION_QUALITIES = (0.1, 0.4)

    def __init__(self, cfg: DiffusionTrainConfig):
        self.cfg = cfg
        if cfg.synthesis_from not in SYNTHESIS_STARTS:
            raise SystemExit(f"synthesis_from must be one of {', '.join(SYNTHESIS_STARTS)}, not {cfg.synthesis_from!r}")
        if not 0.0 <= cfg.low_rate_share <= 1.0 or not 0.0 < cfg.low_rate_quality <= 1.0:
            raise SystemExit(f"the low-rate share must be in [0, 1] and its quality in (0, 1], not "
                             f"{cfg.low_rate_share} and {cfg.low_rate_quality}")
        self.device = pick_device(cfg.device)
        self.bf16 = use_bf16(cfg.precision, self.device)
        keep_large_allocations()  # large batches' activations reused, not page-faulted in each step
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.run_dir = Path(cfg.checkpoint_dir) / cfg.run
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.run_dir / "last.pt"
        self.log_path = self.run_dir / "log.csv"
        torch.manual_seed(cfg.seed)
        self.base_weights = load_weights(cfg.base)
        self.base = self.base_weights.model.to(self.device).eval()
        for p in self.base.parameters():
            p.requires_grad_(False)
        m = self.base.config.latent_channels
        self.denoiser_config = DenoiserConfig(**{**asdict(cfg.denoiser), "latent_channels": m})
        self.denoiser = LatentDenoiser(self.denoiser_config).to(self.device)
        groups = [{"params": list(self.denoiser.parameters()), "lr_scale": 1.0}]
        self.synthesis = None
        self.lpips = None
        if cfg.perceptual_weight > 0:
            from ldcodec.eval.metrics import lpips_network  # needs the eval extra and the LPIPS weights

            self.lpips = lpips_network(cfg.lpips_weights or None).to(self.device)
            try:
                self.synthesis = with_residual_blocks(copy.deepcopy(self.base.g_s), tuple(cfg.synthesis_blocks),
                                                      check_stage_shape(cfg.synthesis_latent_stage))
            except ValueError as exc:
                raise SystemExit(f"--synthesis-blocks / --synthesis-latent-stage: {exc}") from None
            self.synthesis.to(self.device).to(memory_format=torch.channels_last)
            for p in self.synthesis.parameters():
                p.requires_grad_(True)
            groups.append({"params": list(self.synthesis.parameters()), "lr_scale": cfg.synthesis_lr / cfg.lr})
        self.optimizer = torch.optim.Adam(groups, lr=cfg.lr)
        self.discriminator = self.d_optimizer = None
        for name, weight in (("adversarial weight", cfg.adversarial_weight),
                             ("denoiser's perceptual weight", cfg.denoiser_perceptual_weight),
                             ("grid weight", cfg.grid_weight)):
            if weight < 0 or (weight > 0 and self.synthesis is None):  # all act through the synthesis' loss
                raise SystemExit(f"the {name} must be ≥ 0 and needs a perceptual synthesis "
                                 f"(perceptual weight > 0), not {weight} with {cfg.perceptual_weight}")
        if cfg.adversarial_weight > 0:
            self.discriminator = PatchDiscriminator(m).to(self.device)
            self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.discriminator_lr,
                                                betas=(0.5, 0.999))
        self._last_decode: tuple[torch.Tensor, torch.Tensor] | None = None
        self.alphas = training_alphas_cumprod(self.denoiser_config.num_train_timesteps).to(self.device)
        self.step = 0
        self.elapsed = 0.0
        self.warmup_start = 0
        self.history: list[float] = []  #: per-step training losses of this process
        self.train_files, self.held_files = split_images(cfg.data)
        self.sampler = CropSampler(self.train_files, cfg.crop, seed=cfg.seed)
        self._validation_crops: np.ndarray | None = None
        self._resume()

    # Latents of the frozen base model ---------------------------------------------------
    @torch.no_grad()
    def latents(self, x: torch.Tensor, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clean y_g, quantized ŷ_g, inverse gain) of a batch, as the codec would produce them."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            y_g, z = self.base.analyse(x, quality)
        y_g = y_g.float()
        _, means = self.base.latent_parameters(y_g, torch.round(z.float()))  # fp32, as the coder's means
        means = torch.round(means * MEAN_GRID) / MEAN_GRID
        y_hat = torch.round(y_g - means) + means
        return y_g, y_hat, self.base.gain.inverse_gain(quality).float()

    def matched_t(self, inverse_gain: torch.Tensor) -> int:
        """The matched start timestep of a batch's quality (the default sampler starts there)."""
        sigma = float(self.denoiser.quantization_sigma(inverse_gain[:1])[0])
        return matched_timestep(sigma, self.alphas.cpu())

    def sample_timesteps(self, batch: int, t_match: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Half the batch uniform over the schedule, half uniform over [0, t_match]."""
        full = torch.randint(0, self.denoiser_config.num_train_timesteps, (batch,), generator=generator)
        low = torch.randint(0, t_match + 1, (batch,), generator=generator)
        pick_low = torch.arange(batch) % 2 == 1
        return torch.where(pick_low, low, full).to(self.device)

    @property
    def mse_weight_low(self) -> float:
        """The MSE weight at quality 0 (``mse_weight`` unless ``mse_weight_low`` is set)."""
        return self.cfg.mse_weight_low or self.cfg.mse_weight

    def mse_weight_at(self, quality: float) -> float:
        """The pixel-MSE weight of the perceptual synthesis' loss at one quality."""
        return self.mse_weight_low * (self.cfg.mse_weight / self.mse_weight_low) ** float(quality)

    def loss_terms(self, x: torch.Tensor, quality: torch.Tensor, generator: torch.Generator | None = None
                   ) -> dict[str, torch.Tensor]:
        """The batch's losses: x0 MSE of the denoiser, MSE of ŷ itself (latent space), and, with a
        perceptual synthesis, its pixel MSE, LPIPS and grid (see :func:`objective`) on the sampler's output."""
        y_g, y_hat, inverse_gain = self.latents(x, quality)
        clean = self.denoiser.normalise(y_g, inverse_gain)
        cond = self.denoiser.normalise(y_hat, inverse_gain)
        terms = {"loss": self.x0_loss(clean, cond, quality, inverse_gain, generator),
                 "yhat_loss": F.mse_loss(cond, clean)}
        if self.synthesis is not None:
            steps_choices = self.cfg.perceptual_steps
            pick = int(torch.randint(0, len(steps_choices), (1,), generator=generator))
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            x_hat = self.perceptual_decode(cond, quality, inverse_gain, steps_choices[pick], seed)
            terms["mse"] = F.mse_loss(x_hat.float(), x)
            terms["grid"] = grid_power(x_hat, x)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                terms["lpips"] = self.lpips(x_hat * 2 - 1, x * 2 - 1).float().mean()
            if self.discriminator is not None:
                self.discriminator.requires_grad_(False)  # this term trains the synthesis only
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    terms["adv"] = generator_loss(self.discriminator(x_hat, cond).float())
                self.discriminator.requires_grad_(True)
                self._last_decode = (x_hat.detach(), cond.detach())
        return terms

    def objective(self, terms: dict[str, torch.Tensor], quality: torch.Tensor) -> torch.Tensor:
        """What a step minimises: the diffusion loss plus, with a perceptual synthesis, its weighted terms."""
        cfg = self.cfg
        loss = terms["loss"]
        if self.synthesis is not None:
            loss = loss + self.mse_weight_at(quality[0]) * terms["mse"] + cfg.perceptual_weight * terms["lpips"]
            loss = loss + cfg.grid_weight * terms["grid"]
        if self.discriminator is not None:
            loss = loss + cfg.adversarial_weight * terms["adv"]
        return loss

    def discriminator_step(self, x: torch.Tensor) -> float:
        """One critic update on the batch just decoded by :meth:`loss_terms`: real ``x`` against it."""
        fake, cond = self._last_decode
        self._last_decode = None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = discriminator_loss(self.discriminator(x, cond).float(), self.discriminator(fake, cond).float())
        self.d_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.cfg.clip_norm)
        self.d_optimizer.step()
        return loss.item()

    def x0_loss(self, clean: torch.Tensor, cond: torch.Tensor, quality: torch.Tensor, inverse_gain: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """The diffusion objective: noise ``clean`` to a drawn t, predict it back from (x_t, t, ŷ, q)."""
        t = self.sample_timesteps(clean.shape[0], self.matched_t(inverse_gain), generator)
        eps = torch.randn(clean.shape, generator=generator).to(self.device)
        a = self.alphas[t][:, None, None, None]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            pred = self.denoiser(a.sqrt() * clean + (1 - a).sqrt() * eps, t, cond, quality)
        return F.mse_loss(pred.float(), clean)

    def perceptual_decode(self, cond: torch.Tensor, quality: torch.Tensor, inverse_gain: torch.Tensor, steps: int,
                          seed: int) -> torch.Tensor:
        """What a decode with ``steps`` > 0 produces: sampler -> synthesis (gradient). The sampler
        passes gradients to the denoiser, scaled by ``denoiser_perceptual_weight``, only where that is > 0."""
        weight = self.cfg.denoiser_perceptual_weight
        was_training = self.denoiser.training
        self.denoiser.eval()
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0), \
                torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            sigma = float(self.denoiser.quantization_sigma(inverse_gain[:1])[0])
            x0 = sample_latents(self.denoiser, cond, quality[:1], sigma, steps, seed=seed)
        self.denoiser.train(was_training)
        if x0.requires_grad:  # the same values; the gradient into the denoiser scaled by the weight
            x0 = x0.detach() + weight * (x0 - x0.detach())
        ungained = (self.denoiser.denormalise(x0, inverse_gain) * inverse_gain).contiguous(
            memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.synthesis(ungained)

    @torch.no_grad()
    def measure_latent_scale(self) -> torch.Tensor:
        """Per-channel std of the ungained latents over a few batches (fixed afterwards)."""
        sums = None
        count = 0
        rng = np.random.default_rng(self.cfg.seed + 777)  # its own crops; the training stream is untouched
        saved, self.sampler.rng = self.sampler.rng, rng
        try:
            batches = [self.sampler.batch(self.cfg.batch) for _ in range(max(1, self.cfg.scale_batches))]
        finally:
            self.sampler.rng = saved
        for batch in batches:
            x = torch.from_numpy(batch).to(self.device)
            q = torch.rand(self.cfg.batch, device=self.device)
            y_g, _, inverse_gain = self.latents(x, q)
            y = (y_g * inverse_gain).double()
            s = torch.stack([y.sum(dim=(0, 2, 3)), (y * y).sum(dim=(0, 2, 3))])
            sums = s if sums is None else sums + s
            count += y.shape[0] * y.shape[2] * y.shape[3]
        mean, sq = sums[0] / count, sums[1] / count
        return (sq - mean * mean).clamp_min(1e-6).sqrt().float().clamp_min(1e-3)

    # Checkpoints ----------------------------------------------------------------------
    def _resume(self) -> None:
        if self.checkpoint_path.exists():
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
            if state["base_sha256"] != self.base_weights.sha256.hex():
                raise SystemExit(f"{self.checkpoint_path} was trained on other base weights than {self.cfg.base}")
            if DenoiserConfig(**state["denoiser_config"]) != self.denoiser_config:
                raise SystemExit(f"{self.checkpoint_path} has denoiser {state['denoiser_config']}, "
                                 f"not {asdict(self.denoiser_config)}")
            self.denoiser.load_state_dict(state["denoiser"])
            if (state.get("synthesis") is not None) != (self.synthesis is not None):
                raise SystemExit(f"{self.checkpoint_path} was trained with perceptual_weight "
                                 f"{'> 0' if state.get('synthesis') is not None else '0'}; keep that setting")
            if self.synthesis is not None:
                # The synthesis also has the base g_s's own blocks, whatever --synthesis-blocks said.
                saved_blocks = block_positions(tuple(state.get("train_config", {}).get("synthesis_blocks", ()))
                                               + blocks_of(self.base.g_s))
                if saved_blocks != blocks_of(self.synthesis):
                    raise SystemExit(f"{self.checkpoint_path} has synthesis blocks {list(saved_blocks)}, "
                                     f"not {list(blocks_of(self.synthesis))}; keep that setting")
                saved_stage = tuple(state.get("train_config", {}).get("synthesis_latent_stage", ()))
                if saved_stage != stage_of(self.synthesis):
                    raise SystemExit(f"{self.checkpoint_path} has latent stage {list(saved_stage)}, "
                                     f"not {list(stage_of(self.synthesis))}; keep that setting")
                self.synthesis.load_state_dict(state["synthesis"])
            if (state.get("discriminator") is not None) != (self.discriminator is not None):
                raise SystemExit(f"{self.checkpoint_path} was trained "
                                 f"{'with' if state.get('discriminator') is not None else 'without'} an adversarial "
                                 f"term; a run keeps its loss (start a new --run with --init-from its export)")
            if self.discriminator is not None:
                self.discriminator.load_state_dict(state["discriminator"])
                self.d_optimizer.load_state_dict(state["d_optimizer"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.elapsed = state["step"], state.get("elapsed", 0.0)
            self.warmup_start = state.get("warmup_start", 0)
            torch.set_rng_state(state["torch_rng"])
            self.sampler.rng = np.random.default_rng(self.cfg.seed + self.step)
            print(f"resumed {self.checkpoint_path} at step {self.step}", flush=True)
        elif self.cfg.init_from:
            # A starting point may come from another base (e.g. the previous version of this one):
            # the training below binds the result to this base.
            loaded = load_denoiser(self.cfg.init_from, None, self.denoiser_config.latent_channels,
                                   base_synthesis=self.base.g_s)
            if loaded.metadata.get("base_sha256") != self.base_weights.sha256.hex():
                print(f"{self.cfg.init_from} was trained on base {loaded.metadata.get('base_model_id', '?')} "
                      f"({loaded.metadata.get('base_sha256', '?')[:16]}); fine-tuning it for {self.cfg.base}", flush=True)
            if loaded.denoiser.config != self.denoiser_config:
                raise SystemExit(f"{self.cfg.init_from} has denoiser {loaded.denoiser.config}, not {self.denoiser_config}")
            self.denoiser.load_state_dict(loaded.denoiser.state_dict())
            if self.synthesis is not None and loaded.synthesis is not None and self.cfg.synthesis_from == "init":
                self._init_synthesis(loaded.synthesis)
            elif self.synthesis is not None:
                print(f"perceptual synthesis starts from {self.cfg.base}'s g_s", flush=True)
            info = json.loads(loaded.metadata.get("training", "{}"))
            self.step = self.warmup_start = int(info.get("steps", 0))
            print(f"initialised from {self.cfg.init_from} (step {self.step}, fresh optimizer)", flush=True)
        else:
            self.denoiser.latent_scale.copy_(self.measure_latent_scale())

    def _init_synthesis(self, loaded) -> None:
        """Start the perceptual synthesis from a file's: its g_s and blocks, plus any new blocks (the identity)."""
        ours, theirs = blocks_of(self.synthesis), blocks_of(loaded)
        try:
            load_synthesis(self.synthesis, loaded)  # refuses a file with blocks (or a latent stage) we lack
        except ValueError:
            def parts(synthesis, blocks):
                stage = stage_of(synthesis)
                return f"{list(blocks)}" + (f" and latent stage {list(stage)}" if stage else "")

            raise SystemExit(f"{self.cfg.init_from} has synthesis blocks {parts(loaded, theirs)}, "
                             f"not all of them in {parts(self.synthesis, ours)}") from None
        added = sorted(set(ours) - set(theirs))
        if added:
            print(f"residual blocks after g_s layers {added} added to {self.cfg.init_from}'s synthesis", flush=True)
        if stage_of(self.synthesis) and not stage_of(loaded):
            print(f"latent stage {list(stage_of(self.synthesis))} added to {self.cfg.init_from}'s synthesis", flush=True)

    def save_checkpoint(self) -> None:
        atomic_torch_save({
            "denoiser": self.denoiser.state_dict(),
            "synthesis": self.synthesis.state_dict() if self.synthesis is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "discriminator": self.discriminator.state_dict() if self.discriminator is not None else None,
            "d_optimizer": self.d_optimizer.state_dict() if self.d_optimizer is not None else None,
            "step": self.step,
            "elapsed": self.elapsed,
            "warmup_start": self.warmup_start,
            "denoiser_config": asdict(self.denoiser_config),
            "base_sha256": self.base_weights.sha256.hex(),
            "train_config": {k: v for k, v in asdict(self.cfg).items() if k != "denoiser"},
            "torch_rng": torch.get_rng_state(),
        }, self.checkpoint_path)

    def export(self, path: str | Path) -> Path:
        info = {"steps": self.step, "hours": round(self.elapsed / 3600, 3), "data": self.cfg.data,
                "batch": self.cfg.batch, "crop": self.cfg.crop, "lr": self.cfg.lr, "device": str(self.device),
                "perceptual_weight": self.cfg.perceptual_weight, "mse_weight": self.cfg.mse_weight,
                "mse_weight_low": self.mse_weight_low,
                "low_rate_share": self.cfg.low_rate_share, "low_rate_quality": self.cfg.low_rate_quality,
                "adversarial_weight": self.cfg.adversarial_weight, "grid_weight": self.cfg.grid_weight,
                "denoiser_perceptual_weight": self.cfg.denoiser_perceptual_weight,
                "synthesis_lr": self.cfg.synthesis_lr, "synthesis_from": self.cfg.synthesis_from,
                "synthesis_blocks": list(blocks_of(self.synthesis)),
                "synthesis_latent_stage": list(stage_of(self.synthesis)),
                "perceptual_steps": list(self.cfg.perceptual_steps),
                "precision": "bf16" if self.bf16 else "fp32", "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__}
        return export_denoiser(self.denoiser, path, self.base_weights.sha256, self.base_weights.model_id, info,
                               synthesis=self.synthesis)

    def draw_quality(self) -> torch.Tensor:
        """The quality of the next batch (shape (1,)): uniform on [0, 1], or, in a share
        ``low_rate_share`` of batches, uniform on [0, ``low_rate_quality``]."""
        quality = torch.rand(1)
        if self.cfg.low_rate_share > 0 and float(torch.rand(1)) < self.cfg.low_rate_share:
            quality = quality * self.cfg.low_rate_quality
        return quality.to(self.device)

    # Validation ---------------------------------------------------------------------
    def _validation_batch(self, images: int) -> torch.Tensor:
        if self._validation_crops is None:  # decoded once: held-out images, else a few training ones
            files = self.held_files or self.train_files[:4]
            try:
                self._validation_crops = CropSampler(files, self.cfg.crop, seed=1234).batch(images)
            except ValueError:  # held-out images smaller than the crop
                self._validation_crops = CropSampler(self.train_files[:4], self.cfg.crop, seed=1234).batch(images)
        return torch.from_numpy(self._validation_crops).to(self.device)

    @torch.no_grad()
    def validation_loss(self, images: int = 8) -> float:
        """x0 MSE on fixed held-out crops, qualities, timesteps and noise (comparable across steps)."""
        x = self._validation_batch(images)
        generator = torch.Generator().manual_seed(1234)
        was_training = self.denoiser.training
        self.denoiser.eval()
        losses = []
        for q in self.VALIDATION_QUALITIES:
            quality = torch.full((images,), q, device=self.device)
            y_g, y_hat, inverse_gain = self.latents(x, quality)
            clean = self.denoiser.normalise(y_g, inverse_gain)
            cond = self.denoiser.normalise(y_hat, inverse_gain)
            losses.append(self.x0_loss(clean, cond, quality, inverse_gain, generator).item())
        self.denoiser.train(was_training)
        return float(np.mean(losses))

    @torch.no_grad()
    def perceptual_validation(self, images: int = 8, steps: int = 4) -> dict[str, float]:
        """PSNR, LPIPS and the grid (RMS, 8-bit levels) of a steps-4 decode (seed 0) on the fixed crops,
        averaged over the validation qualities; ``base_*``: PSNR and LPIPS of the distortion-optimal
        decode g_s(ŷ)."""
        x = self._validation_batch(images)
        rows = {"val_psnr": [], "val_lpips": [], "val_base_psnr": [], "val_base_lpips": [], "val_grid": []}
        was_training = self.synthesis.training
        self.synthesis.eval()
        for q in self.VALIDATION_QUALITIES:
            quality = torch.full((images,), q, device=self.device)
            _, y_hat, inverse_gain = self.latents(x, quality)
            cond = self.denoiser.normalise(y_hat, inverse_gain)
            ungained = (y_hat * inverse_gain).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                base = self.base.g_s(ungained)
            for prefix, out in (("val_", self.perceptual_decode(cond, quality, inverse_gain, steps, seed=0)),
                                ("val_base_", base)):
                out = out.float().clamp(0, 1)
                rows[prefix + "psnr"].append(10 * math.log10(1 / F.mse_loss(out, x).item()))
                rows[prefix + "lpips"].append(self.lpips(out * 2 - 1, x * 2 - 1).mean().item())
                if prefix == "val_":
                    rows["val_grid"].append(255 * math.sqrt(grid_power(out, x).item()))
        self.synthesis.train(was_training)
        return {k: round(float(np.mean(v)), 4) for k, v in rows.items()}

    def _log(self, row: dict) -> None:
        new = not self.log_path.exists()
        fields = self.LOG_FIELDS
        if not new:  # a log begun by an older version keeps its own columns
            with open(self.log_path, newline="") as f:
                fields = next(csv.reader(f), None) or fields
        with open(self.log_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    # Loop ---------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.cfg
        print(f"data: {len(self.train_files)} training images, {len(self.held_files)} held out; base "
              f"{self.base_weights.model_id}; denoiser {self.denoiser.parameter_count() / 1e6:.2f} M parameters; "
              f"device {self.device}, {'bf16 autocast' if self.bf16 else 'fp32'}", flush=True)
        self.denoiser.train()
        start = last_ckpt = time.time()
        bar = tqdm(total=cfg.steps, initial=self.step, mininterval=20, dynamic_ncols=True, desc="train-diffusion")
        stats = []
        stop_requested, previous_handler = stop_on_sigterm()
        while self.step < cfg.steps and not stop_requested:
            t0 = time.time()
            lr = learning_rate(cfg, self.step, self.warmup_start)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            x = torch.from_numpy(self.sampler.batch(cfg.batch)).to(self.device)
            quality = self.draw_quality().expand(cfg.batch).contiguous()
            terms = self.loss_terms(x, quality)
            loss = self.objective(terms, quality)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in self.optimizer.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], cfg.clip_norm)
            self.optimizer.step()
            if self.discriminator is not None:
                terms["disc"] = torch.tensor(self.discriminator_step(x))
            self.step += 1
            self.elapsed += time.time() - t0
            self.history.append(terms["loss"].item())
            stats.append({k: v.item() for k, v in terms.items()})
            bar.update(1)
            if self.step % cfg.log_every == 0:
                mean = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
                stats = []
                row = {"step": self.step, "hours": round(self.elapsed / 3600, 4), "lr": lr,
                       "loss": round(mean["loss"], 5), "yhat_loss": round(mean["yhat_loss"], 5)}
                if "mse" in mean:
                    row["psnr"] = round(10 * math.log10(1 / max(mean["mse"], 1e-10)), 3)
                    row["lpips"] = round(mean["lpips"], 4)
                    row["grid"] = round(255 * math.sqrt(mean["grid"]), 3)  # RMS in 8-bit levels
                if "adv" in mean:
                    row["adv"], row["disc"] = round(mean["adv"], 4), round(mean["disc"], 4)
                if self.step % cfg.validate_every == 0:
                    row["val_loss"] = round(self.validation_loss(), 5)
                    if self.synthesis is not None:
                        row.update(self.perceptual_validation())
                self._log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", yhat=f"{row['yhat_loss']:.4f}",
                                **({"lpips": f"{row['lpips']:.3f}"} if "lpips" in row else {}))
            if time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
                self.save_checkpoint()
                if cfg.export:
                    self.export(cfg.export)
                last_ckpt = time.time()
            if cfg.max_minutes and time.time() - start > cfg.max_minutes * 60:
                print(f"\nstopping at step {self.step}: --max-minutes reached", flush=True)
                break
        bar.close()
        restore_sigterm(previous_handler, stop_requested, self.step)
        self.save_checkpoint()
        if cfg.export:
            print(f"exported {self.export(cfg.export)}", flush=True)
