"""Rate–distortion training loop: resumable, CPU or CUDA, exports safetensors.

Each sample in a batch gets its own quality t ~ U[0,1] and the matching
λ(t) (log-linear between the config's λ_min and λ_max), so one set of weights
learns the whole rate range. Loss = mean over samples of λ·255²·MSE + bpp.

``train_only="synthesis"`` trains g_s alone: the encoder, the entropy model and so the
bitstream stay as they are, and so do the gains (the diffusion decoder's inputs, ŷ times
the inverse gain, stay those of the weights the run starts from). With the rate fixed,
λ would only weigh the rates against each other (the highest would dominate); the loss
is then the mean log-MSE, which counts a dB gained at any rate alike. ``msssim_weight`` w
mixes in MS-SSIM the same way: (1 − w)·log MSE + w·log(1 − MS-SSIM), each term a dB scale.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ldcodec.codec.allocator import keep_large_allocations
from ldcodec.codec.checkerboard import CONTEXT_MODES
from ldcodec.codec.model import TRAINED_PARTS, HyperpriorModel, ModelConfig
from ldcodec.codec.residual_synthesis import load_synthesis
from ldcodec.codec.precision import resolve_precision
from ldcodec.codec.release import DEFAULT_MODEL_ID
from ldcodec.codec.weights import export_weights
from ldcodec.train.data import CropSampler, split_images
from ldcodec.train.ms_ssim import check_ms_ssim_crop, ms_ssim_per_sample

DEFAULT_CHECKPOINT_DIR = Path(os.environ.get("LDCODEC_TRAIN_DIR", Path.home() / ".cache" / "ldcodec-train"))


@dataclass
class TrainConfig:
    data: str
    run: str = DEFAULT_MODEL_ID
    steps: int = 6000
    batch: int = 16
    crop: int = 128
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup: int = 200
    #: The last ``decay_fraction`` of the steps decay the learning rate (cosine) to ``min_lr``.
    decay_fraction: float = 0.3
    clip_norm: float = 1.0
    seed: int = 0
    device: str = "auto"
    #: "auto" uses bf16 autocast only where the CPU has native bf16 (AVX512-BF16/AMX) or on CUDA.
    precision: str = "auto"
    threads: int = 0
    checkpoint_dir: str = str(DEFAULT_CHECKPOINT_DIR)
    checkpoint_minutes: float = 5.0
    validate_every: int = 500
    log_every: int = 50
    max_minutes: float = 0.0
    export: str = ""
    #: Weights file to start from when the run has no checkpoint yet (e.g. the committed weights).
    init_from: str = ""
    #: Restart the lr warm-up at the resumed step: for a new schedule laid over a run whose lr had decayed.
    rewarm: bool = False
    #: The latents' rate term: "noise" or "rounded" (see :data:`ldcodec.codec.model.RATE_ESTIMATES`).
    rate_estimate: str = "noise"
    #: One of :data:`TRAINED_PARTS`.
    train_only: str = "all"
    #: Share of the MS-SSIM term in a decoder-only run's loss (0: log-MSE alone).
    msssim_weight: float = 0.0
    model: ModelConfig = field(default_factory=ModelConfig)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    return resolve_precision(precision, device) == "bf16"


def atomic_torch_save(state: dict, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def stop_on_sigterm() -> tuple[list, object]:
    """Turn SIGTERM into a flag the training loop checks between steps: ``(flag list, previous handler)``.

    A ``kill`` then ends a run at a step boundary with a checkpoint and export, so a long
    run can be cut short, or re-planned, without losing the steps since the last checkpoint.
    """
    stop_requested: list = []
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    except ValueError:  # not the main thread: no handler
        previous = None
    return stop_requested, previous


def restore_sigterm(previous, stop_requested: list, step: int) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    if stop_requested:
        print(f"\nstopping at step {step}: SIGTERM", flush=True)


def learning_rate(cfg: TrainConfig, step: int, warmup_start: int = 0) -> float:
    """Constant lr, then cosine decay over the last ``decay_fraction`` of ``steps``, scaled by a linear
    warm-up from ``warmup_start`` (0, or the step a fresh optimizer began).

    The warm-up ramps towards the scheduled lr, so a run resumed inside the decay (``--init-from`` a
    file past the decay's start) never overshoots it. ``cfg`` needs ``lr``, ``min_lr``, ``warmup``,
    ``steps`` and ``decay_fraction`` (shared with
    :class:`ldcodec.train.diffusion_trainer.DiffusionTrainConfig`).
    """
    decay_start = int(cfg.steps * (1.0 - cfg.decay_fraction))
    if step < decay_start:
        scheduled = cfg.lr
    else:
        progress = min(1.0, (step - decay_start) / max(1, cfg.steps - decay_start))
        scheduled = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
    if step - warmup_start < cfg.warmup:
        return scheduled * (step - warmup_start + 1) / cfg.warmup
    return scheduled


def rd_terms(model: HyperpriorModel, x: torch.Tensor, quality: torch.Tensor, bf16: bool,
             rate_estimate: str = "noise", with_ms_ssim: bool = False):
    """Per-sample (bpp, mse) of a batch, and its MS-SSIM (``with_ms_ssim``) as a third term."""
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x, quality, rate_estimate=rate_estimate)
    pixels = x.shape[2] * x.shape[3]
    bits = -(out.y_likelihoods.log2().sum(dim=(1, 2, 3)) + out.z_likelihoods.log2().sum(dim=(1, 2, 3)))
    bpp = bits / pixels
    x_hat = out.x_hat.float()
    mse = ((x_hat - x) ** 2).mean(dim=(1, 2, 3))
    if with_ms_ssim:
        return bpp, mse, ms_ssim_per_sample(x_hat, x)
    return bpp, mse


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
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
        # channels_last: 1.6x faster bf16 training steps on this CPU (oneDNN's native layout).
        try:
            self.model = HyperpriorModel(cfg.model).to(self.device, memory_format=torch.channels_last)
        except ValueError as exc:  # e.g. residual blocks after layers g_s does not have
            raise SystemExit(f"model: {exc}") from None
        if cfg.train_only not in TRAINED_PARTS:
            raise SystemExit(f"train_only must be one of {', '.join(TRAINED_PARTS)}, not {cfg.train_only!r}")
        if cfg.msssim_weight:
            if cfg.train_only != "synthesis" or not 0.0 < cfg.msssim_weight <= 1.0:
                raise SystemExit("msssim_weight (0 < w <= 1) weighs a decoder-only run's loss: "
                                 "use it with train_only='synthesis'")
            check_ms_ssim_crop(cfg.crop)
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._trains(name))
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.trained, lr=cfg.lr)
        self.step = 0
        self.elapsed = 0.0
        #: Step at which the optimizer state began (warm-up restarts there after ``--init-from``).
        self.warmup_start = 0
        self._resume()

    def _trains(self, name: str) -> bool:
        """Whether the parameter ``name`` is trained in this run."""
        if self.cfg.train_only == "synthesis":
            return name.startswith("g_s.")
        return not name.endswith("quantiles")

    # Checkpoints ----------------------------------------------------------------------
    def _resume(self) -> None:
        if not self.checkpoint_path.exists():
            if self.cfg.init_from:
                self._init_from_weights(self.cfg.init_from)
            return
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        self._check_shape(ModelConfig(**state["model_config"]), str(self.checkpoint_path))
        saved_parts = state.get("train_config", {}).get("train_only", "all")
        if saved_parts != self.cfg.train_only:
            raise SystemExit(f"{self.checkpoint_path} trained {saved_parts!r}, not {self.cfg.train_only!r}: "
                             "a run keeps what it trains (start a new --run)")
        saved_weight = state.get("train_config", {}).get("msssim_weight", 0.0)
        if saved_weight != self.cfg.msssim_weight:
            raise SystemExit(f"{self.checkpoint_path} trained with MS-SSIM weight {saved_weight}, not "
                             f"{self.cfg.msssim_weight}: a run keeps its loss (start a new --run)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.elapsed = state.get("elapsed", 0.0)
        self.warmup_start = state.get("warmup_start", 0)
        torch.set_rng_state(state["torch_rng"])
        if self.cfg.rewarm:
            self.warmup_start = self.step
        print(f"resumed {self.checkpoint_path} at step {self.step} ({self.elapsed / 3600:.2f} h trained)", flush=True)

    def _check_shape(self, saved: ModelConfig, source: str, adding: bool = False) -> None:
        """The network's shape must match; the λ range may change (it only shapes the loss).

        With ``adding``, weights may start a model with a richer context (each of
        :data:`CONTEXT_MODES` extends the one before it) or with more synthesis blocks: what
        is added starts as a no-op (the last layers of the checkerboard and channel contexts,
        and of each residual block, start at zero).
        """
        wanted = self.cfg.model.context
        if (adding and saved.shape()[:3] == self.cfg.model.shape()[:3]
                and CONTEXT_MODES.index(saved.context) < CONTEXT_MODES.index(wanted)):
            print(f"{source}: adding a {wanted} context to its {saved.context} entropy model", flush=True)
            saved = ModelConfig(**{**saved.to_dict(), "context": wanted})
        blocks = self.cfg.model.synthesis_blocks
        if adding and set(saved.synthesis_blocks) < set(blocks):
            print(f"{source}: adding residual blocks after g_s layers "
                  f"{sorted(set(blocks) - set(saved.synthesis_blocks))}", flush=True)
            saved = ModelConfig(**{**saved.to_dict(), "synthesis_blocks": blocks})
        if saved.shape() != self.cfg.model.shape():
            raise SystemExit(f"{source} has model {saved}, not {self.cfg.model}")
        if (saved.lambda_min, saved.lambda_max) != (self.cfg.model.lambda_min, self.cfg.model.lambda_max):
            print(f"{source}: λ range {saved.lambda_min}..{saved.lambda_max} -> "
                  f"{self.cfg.model.lambda_min}..{self.cfg.model.lambda_max}", flush=True)
        for field in ("parameter_arithmetic", "symbol_model"):  # the coder's choices; training is the same
            old, new = getattr(saved, field), getattr(self.cfg.model, field)
            if old != new:
                print(f"{source}: {field.replace('_', ' ')} {old} -> {new} (the coder's; training is the same)",
                      flush=True)

    def _init_from_weights(self, path: str) -> None:
        """Start from exported weights (no optimizer state): resumes a run whose checkpoint was lost."""
        from ldcodec.codec.weights import load_weights

        loaded = load_weights(path)
        self._check_shape(loaded.model.config, path, adding=True)
        # Same shapes (checked above); only a newly added context is missing and keeps its init.
        others = {k: v for k, v in loaded.model.state_dict().items() if not k.startswith("g_s.")}
        self.model.load_state_dict(others, strict=False)
        load_synthesis(self.model.g_s, loaded.model.g_s)  # new blocks stay the identity
        saved = loaded.model.config
        if (saved.lambda_min, saved.lambda_max) != (self.cfg.model.lambda_min, self.cfg.model.lambda_max):
            # A new λ range: each gain level starts with the gains the old model had at its new λ.
            self.model.gain.relocate(saved.quality_for_lambda(self.cfg.model.level_lambdas()))
            print(f"{path}: gain levels moved to the new λ range", flush=True)
        info = json.loads(loaded.metadata.get("training", "{}"))
        self.step = self.warmup_start = int(info.get("steps", 0))
        self.elapsed = float(info.get("hours", 0.0)) * 3600
        print(f"initialised from {path} (step {self.step}, fresh optimizer)", flush=True)

    def save_checkpoint(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "model_config": asdict(self.cfg.model),
            "train_config": {k: v for k, v in asdict(self.cfg).items() if k != "model"},
            "torch_rng": torch.get_rng_state(),
            "warmup_start": self.warmup_start,
        }
        atomic_torch_save(state, self.checkpoint_path)

    def export(self, path: str | Path) -> Path:
        info = {
            "steps": self.step,
            "hours": round(self.elapsed / 3600, 3),
            "data": self.cfg.data,
            "batch": self.cfg.batch,
            "crop": self.cfg.crop,
            "lr": self.cfg.lr,
            "device": str(self.device),
            "precision": "bf16" if self.bf16 else "fp32",
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        }
        model = HyperpriorModel(self.cfg.model)
        model.load_state_dict(self.model.state_dict())
        return export_weights(model, path, model_id=self.cfg.run, info=info)

    # Loop ---------------------------------------------------------------------------
    #: Columns of log.csv; validation columns stay empty on rows without validation.
    LOG_FIELDS = ["step", "hours", "lr", "loss", "bpp", "psnr"] + [
        f"val_{m}_q{q}" for q in (0.0, 0.5, 1.0) for m in ("bpp", "psnr")]

    def _log(self, row: dict) -> None:
        new = not self.log_path.exists()
        with open(self.log_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def validate(self, batch: torch.Tensor) -> dict:
        self.model.eval()
        row = {}
        with torch.no_grad():
            for q in (0.0, 0.5, 1.0):
                quality = torch.full((batch.shape[0],), q, device=self.device)
                bpp, mse = rd_terms(self.model, batch, quality, self.bf16)
                row[f"val_bpp_q{q}"] = round(bpp.mean().item(), 4)
                row[f"val_psnr_q{q}"] = round((10 * torch.log10(1.0 / mse.mean())).item(), 3)
        self.model.train()
        return row

    def loss(self, x: torch.Tensor, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's loss, and its per-sample (bpp, mse)."""
        cfg = self.cfg
        if cfg.msssim_weight:
            bpp, mse, ms_ssim = rd_terms(self.model, x, quality, self.bf16, cfg.rate_estimate, with_ms_ssim=True)
            w = cfg.msssim_weight
            return ((1.0 - w) * torch.log(mse) + w * torch.log((1.0 - ms_ssim).clamp_min(1e-6))).mean(), bpp, mse
        bpp, mse = rd_terms(self.model, x, quality, self.bf16, cfg.rate_estimate)
        if cfg.train_only == "synthesis":  # the rate is fixed: every rate's dB counts alike
            return torch.log(mse).mean(), bpp, mse
        return (cfg.model.rate_lambda(quality) * 255.0**2 * mse + bpp).mean(), bpp, mse

    def run(self) -> None:
        cfg = self.cfg
        train_files, held_files = split_images(cfg.data)
        print(f"data: {len(train_files)} training images, {len(held_files)} held out; device {self.device}, "
              f"{'bf16 autocast' if self.bf16 else 'fp32'}, {torch.get_num_threads()} threads", flush=True)
        sampler = CropSampler(train_files, cfg.crop, seed=cfg.seed + self.step)
        val_files = held_files or train_files[:4]
        try:
            val = CropSampler(val_files, 256, seed=1234).batch(8)
        except ValueError:  # small images: validate at the training crop size
            val = CropSampler(val_files, cfg.crop, seed=1234).batch(8)
        val = torch.from_numpy(val).to(self.device)
        self.model.train()
        start = time.time()
        last_ckpt = time.time()
        bar = tqdm(total=cfg.steps, initial=self.step, mininterval=20, dynamic_ncols=True, desc="train")
        stats = []
        stop_requested, previous_handler = stop_on_sigterm()
        while self.step < cfg.steps and not stop_requested:
            t0 = time.time()
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(cfg, self.step, self.warmup_start)
            x = torch.from_numpy(sampler.batch(cfg.batch)).to(self.device).contiguous(memory_format=torch.channels_last)
            quality = torch.rand(cfg.batch, device=self.device)
            loss, bpp, mse = self.loss(x, quality)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trained, cfg.clip_norm)
            self.optimizer.step()
            self.step += 1
            self.elapsed += time.time() - t0
            stats.append((loss.item(), bpp.mean().item(), mse.mean().item()))
            bar.update(1)
            if self.step % cfg.log_every == 0:
                l, b, m = np.mean(stats, axis=0)
                stats = []
                row = {"step": self.step, "hours": round(self.elapsed / 3600, 4), "lr": learning_rate(cfg, self.step, self.warmup_start),
                       "loss": round(l, 4), "bpp": round(b, 4), "psnr": round(10 * math.log10(1 / m), 3)}
                if self.step % cfg.validate_every == 0:
                    row.update(self.validate(val))
                self._log(row)
                bar.set_postfix(loss=f"{l:.3f}", bpp=f"{b:.3f}", psnr=f"{row['psnr']:.2f}")
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
