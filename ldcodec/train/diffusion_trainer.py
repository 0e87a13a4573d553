"""Training the diffusion decoder's denoiser on a frozen base model's latents.

Each step: random crops, a quality q ~ U[0,1] per image, the base model's gained
latents y_g and their quantized version ŷ_g = round(y_g − μ) + μ (μ snapped as the
coder does), both normalised (see :mod:`ldcodec.codec.denoiser`). A timestep t is
drawn uniformly, the clean latent is noised with the cosine schedule and the
denoiser is trained to predict it (x0 MSE in latent space) from (x_t, t, ŷ, q).
The base model never changes: the encoder and the bitstream stay as they are.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ldcodec.codec.denoiser import DenoiserConfig, LatentDenoiser
from ldcodec.codec.diffusion_weights import export_denoiser, load_denoiser
from ldcodec.codec.entropy_parameters import MEAN_GRID
from ldcodec.codec.latent_diffusion import training_alphas_cumprod
from ldcodec.codec.weights import load_weights
from ldcodec.train.data import CropSampler, split_images
from ldcodec.train.trainer import DEFAULT_CHECKPOINT_DIR, atomic_torch_save, learning_rate, pick_device, use_bf16


@dataclass
class DiffusionTrainConfig:
    data: str
    #: Base model id or weights path; it stays frozen.
    base: str = "hp-v1"
    run: str = "hp-v1-diffusion"
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
    #: Batches used once, at a fresh start, to measure the per-channel latent scale.
    scale_batches: int = 4
    #: The denoiser's shape; ``latent_channels`` is taken from the base model.
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)


class DiffusionTrainer:
    LOG_FIELDS = ["step", "hours", "lr", "loss", "yhat_loss", "val_loss"]

    def __init__(self, cfg: DiffusionTrainConfig):
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.bf16 = use_bf16(cfg.precision, self.device)
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
        self.optimizer = torch.optim.Adam(self.denoiser.parameters(), lr=cfg.lr)
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
        params = self.base.h_s(torch.round(z.float()))  # fp32: the coder's means are fp32
        means = torch.round(params.chunk(2, 1)[1] * MEAN_GRID) / MEAN_GRID
        y_hat = torch.round(y_g - means) + means
        return y_g, y_hat, self.base.gain.inverse_gain(quality).float()

    def loss_terms(self, x: torch.Tensor, quality: torch.Tensor, t: torch.Tensor,
                   noise_generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 MSE of the denoiser, MSE of ŷ itself) on normalised latents."""
        y_g, y_hat, inverse_gain = self.latents(x, quality)
        clean = self.denoiser.normalise(y_g, inverse_gain)
        cond = self.denoiser.normalise(y_hat, inverse_gain)
        eps = torch.randn(clean.shape, generator=noise_generator).to(self.device) if noise_generator is not None \
            else torch.randn_like(clean)
        a = self.alphas[t][:, None, None, None]
        x_t = a.sqrt() * clean + (1 - a).sqrt() * eps
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            pred = self.denoiser(x_t, t, cond, quality)
        return F.mse_loss(pred.float(), clean), F.mse_loss(cond, clean)

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
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.elapsed = state["step"], state.get("elapsed", 0.0)
            self.warmup_start = state.get("warmup_start", 0)
            torch.set_rng_state(state["torch_rng"])
            self.sampler.rng = np.random.default_rng(self.cfg.seed + self.step)
            print(f"resumed {self.checkpoint_path} at step {self.step}", flush=True)
        elif self.cfg.init_from:
            loaded = load_denoiser(self.cfg.init_from, self.base_weights.sha256, self.denoiser_config.latent_channels)
            if loaded.denoiser.config != self.denoiser_config:
                raise SystemExit(f"{self.cfg.init_from} has denoiser {loaded.denoiser.config}, not {self.denoiser_config}")
            self.denoiser.load_state_dict(loaded.denoiser.state_dict())
            info = json.loads(loaded.metadata.get("training", "{}"))
            self.step = self.warmup_start = int(info.get("steps", 0))
            print(f"initialised from {self.cfg.init_from} (step {self.step}, fresh optimizer)", flush=True)
        else:
            self.denoiser.latent_scale.copy_(self.measure_latent_scale())

    def save_checkpoint(self) -> None:
        atomic_torch_save({
            "denoiser": self.denoiser.state_dict(),
            "optimizer": self.optimizer.state_dict(),
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
                "precision": "bf16" if self.bf16 else "fp32", "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__}
        return export_denoiser(self.denoiser, path, self.base_weights.sha256, self.base_weights.model_id, info)

    # Validation ---------------------------------------------------------------------
    @torch.no_grad()
    def validation_loss(self, images: int = 8) -> float:
        """x0 MSE on fixed held-out crops, qualities, timesteps and noise (comparable across steps)."""
        if self._validation_crops is None:  # decoded once: held-out images, else a few training ones
            files = self.held_files or self.train_files[:4]
            try:
                self._validation_crops = CropSampler(files, self.cfg.crop, seed=1234).batch(images)
            except ValueError:  # held-out images smaller than the crop
                self._validation_crops = CropSampler(self.train_files[:4], self.cfg.crop, seed=1234).batch(images)
        x = torch.from_numpy(self._validation_crops).to(self.device)
        generator = torch.Generator().manual_seed(1234)
        q = torch.rand(images, generator=generator).to(self.device)
        t = torch.randint(0, self.denoiser_config.num_train_timesteps, (images,), generator=generator).to(self.device)
        was_training = self.denoiser.training
        self.denoiser.eval()
        loss, _ = self.loss_terms(x, q, t, noise_generator=generator)
        self.denoiser.train(was_training)
        return loss.item()

    def _log(self, row: dict) -> None:
        new = not self.log_path.exists()
        with open(self.log_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.LOG_FIELDS)
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
        while self.step < cfg.steps:
            t0 = time.time()
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(cfg, self.step, self.warmup_start)
            x = torch.from_numpy(self.sampler.batch(cfg.batch)).to(self.device)
            quality = torch.rand(cfg.batch, device=self.device)
            t = torch.randint(0, self.denoiser_config.num_train_timesteps, (cfg.batch,), device=self.device)
            loss, base_loss = self.loss_terms(x, quality, t)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), cfg.clip_norm)
            self.optimizer.step()
            self.step += 1
            self.elapsed += time.time() - t0
            self.history.append(loss.item())
            stats.append((loss.item(), base_loss.item()))
            bar.update(1)
            if self.step % cfg.log_every == 0:
                l, b = np.mean(stats, axis=0)
                stats = []
                row = {"step": self.step, "hours": round(self.elapsed / 3600, 4),
                       "lr": learning_rate(cfg, self.step, self.warmup_start), "loss": round(l, 5),
                       "yhat_loss": round(b, 5)}
                if self.step % cfg.validate_every == 0:
                    row["val_loss"] = round(self.validation_loss(), 5)
                self._log(row)
                bar.set_postfix(loss=f"{l:.4f}", yhat=f"{b:.4f}")
            if time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
                self.save_checkpoint()
                if cfg.export:
                    self.export(cfg.export)
                last_ckpt = time.time()
            if cfg.max_minutes and time.time() - start > cfg.max_minutes * 60:
                print(f"\nstopping at step {self.step}: --max-minutes reached", flush=True)
                break
        bar.close()
        self.save_checkpoint()
        if cfg.export:
            print(f"exported {self.export(cfg.export)}", flush=True)

