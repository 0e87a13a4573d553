"""``ldcodec train-diffusion``: thin wrapper over :mod:`ldcodec.train.diffusion_trainer`."""

from __future__ import annotations

import click

from ldcodec.cli.train_command import synthesis_blocks_option
from ldcodec.codec.precision import PRECISIONS
from ldcodec.codec.release import DEFAULT_MODEL_ID


@click.command("train-diffusion")
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--base", default=DEFAULT_MODEL_ID, show_default=True, help="Base model id or weights path (kept frozen).")
@click.option("--run", default=None, help="Run name: the checkpoint folder [<base>-diffusion].")
@click.option("--steps", default=4000, show_default=True, help="Total optimizer steps (the lr schedule is laid over these).")
@click.option("--batch", default=16, show_default=True)
@click.option("--crop", default=256, show_default=True, help="Random crop size in pixels (latents are crop/16 a side).")
@click.option("--lr", default=2e-4, show_default=True)
@click.option("--warmup", default=200, show_default=True, help="Linear lr warm-up steps.")
@click.option("--decay-fraction", default=0.3, show_default=True, help="Final fraction of steps with cosine lr decay.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: bf16 autocast on CUDA or on CPUs with native bf16, else fp32.")
@click.option("--threads", default=0, help="CPU threads (0: torch default).")
@click.option("--checkpoint-dir", default=None, help="Where resumable checkpoints live [~/.cache/ldcodec-train].")
@click.option("--checkpoint-minutes", default=5.0, show_default=True, help="Minutes between checkpoints.")
@click.option("--max-minutes", default=0.0, help="Stop (checkpointed) after this many minutes; 0 = no limit.")
@click.option("--export", "export_path", default="", help="Write the diffusion weights here at every checkpoint and "
              "at the end (the decoder looks for <base>-diffusion.safetensors beside the base weights).")
@click.option("--init-from", default="", help="Diffusion weights to start from when the run has no checkpoint.")
@click.option("--synthesis-from", type=click.Choice(["init", "base"]), default="init", show_default=True,
              help="With --init-from: start the fine-tuned synthesis from that file's (init) or from the base "
              "model's own g_s (base; only the denoiser comes from the file).")
@click.option("--perceptual-weight", default=1.0, show_default=True,
              help="LPIPS weight of the fine-tuned synthesis used at steps > 0; 0 = keep the base g_s.")
@click.option("--mse-weight", default=150.0, show_default=True, help="Pixel-MSE weight (images in [0, 1]) of that loss.")
@click.option("--mse-weight-low", default=0.0, show_default=True,
              help="Pixel-MSE weight at quality 0, log-interpolated to --mse-weight at quality 1 (low rates lean "
              "towards LPIPS); 0 = --mse-weight at every rate.")
@click.option("--low-rate-share", default=0.0, show_default=True,
              help="Share of batches whose quality is drawn from [0, --low-rate-quality] instead of [0, 1] "
              "(more training at the low rates); 0 = uniform.")
@click.option("--low-rate-quality", default=0.45, show_default=True, help="Top quality of those batches.")
@click.option("--adversarial-weight", default=0.0, show_default=True,
              help="Weight of an adversarial term (conditional patch discriminator, trained alongside) in that "
              "loss; 0 = none.")
@click.option("--denoiser-perceptual-weight", default=0.0, show_default=True,
              help="Scale of that loss as it reaches the denoiser through the sampler (on top of its diffusion "
              "loss); 0 = the denoiser learns from the diffusion loss only.")
@click.option("--grid-weight", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Weight of the synthesis grid (the error's 16-pixel periodic component, mean square) in that "
              "loss: a penalty on the fixed pattern LPIPS alone teaches; 0 = none.")
@click.option("--discriminator-lr", default=1e-4, show_default=True, help="Learning rate of that discriminator.")
@click.option("--synthesis-lr", default=5e-5, show_default=True, help="Learning rate of the fine-tuned synthesis.")
@synthesis_blocks_option("Comma-separated g_s layer indexes to follow with a residual block in the fine-tuned "
                         "synthesis (e.g. 1,3: at 1/8 and 1/4 resolution); empty = the plain g_s.")
@click.option("--synthesis-latent-stage", default="", show_default=True, callback=lambda ctx, param, value: _stage(value),
              help="BLOCKS,WIDTH: a latent stage in the fine-tuned synthesis, BLOCKS residual blocks of WIDTH channels "
              "on the latents before g_s's first layer (cheap capacity); empty = none.")
@click.option("--seed", default=0, show_default=True)
def train_diffusion_command(data, base, run, steps, batch, crop, lr, warmup, decay_fraction, device, precision, threads,
                            checkpoint_dir, checkpoint_minutes, max_minutes, export_path, init_from, synthesis_from,
                            perceptual_weight, mse_weight, mse_weight_low, low_rate_share, low_rate_quality,
                            adversarial_weight, denoiser_perceptual_weight, grid_weight, discriminator_lr,
                            synthesis_lr, synthesis_blocks, synthesis_latent_stage, seed):
    """Train the diffusion decoder of a base model on the images in DATA (resumes from the run's checkpoint).

    The base model stays frozen (encoder and bitstream do not change); the denoiser
    learns to predict clean latents from noisy ones and the quantized latents, and a
    copy of the synthesis transform is fine-tuned (MSE + LPIPS) on the sampler's
    outputs for decodes with steps > 0. Example:

        ldcodec train-diffusion ../shared/data/train --base hp-v6 --steps 4000 \\
            --export ldcodec/weights/hp-v6-diffusion.safetensors
    """
    from pathlib import Path

    from ldcodec.train.diffusion_trainer import DiffusionTrainConfig, DiffusionTrainer
    from ldcodec.train.trainer import DEFAULT_CHECKPOINT_DIR

    cfg = DiffusionTrainConfig(
        data=data, base=base, run=run or f"{Path(base).stem}-diffusion", steps=steps, batch=batch, crop=crop, lr=lr,
        warmup=warmup, decay_fraction=decay_fraction, device=device, precision=precision, threads=threads,
        checkpoint_dir=checkpoint_dir or str(DEFAULT_CHECKPOINT_DIR), checkpoint_minutes=checkpoint_minutes,
        max_minutes=max_minutes, export=export_path, init_from=init_from,
        synthesis_from=synthesis_from, seed=seed,
        perceptual_weight=perceptual_weight, mse_weight=mse_weight, mse_weight_low=mse_weight_low,
        low_rate_share=low_rate_share, low_rate_quality=low_rate_quality,
        adversarial_weight=adversarial_weight, denoiser_perceptual_weight=denoiser_perceptual_weight,
        grid_weight=grid_weight, discriminator_lr=discriminator_lr,
        synthesis_lr=synthesis_lr, synthesis_blocks=synthesis_blocks, synthesis_latent_stage=synthesis_latent_stage,
    )
    DiffusionTrainer(cfg).run()


def _stage(value: str) -> tuple[int, ...]:
    """``--synthesis-latent-stage``: "" or "BLOCKS,WIDTH", checked here so a bad value is a usage error."""
    from ldcodec.codec.residual_synthesis import check_stage_shape

    try:
        return check_stage_shape(tuple(int(part) for part in value.split(",") if part.strip()))
    except ValueError as exc:
        raise click.BadParameter(str(exc) if "latent stage" in str(exc) else f"BLOCKS,WIDTH, not {value!r}") from None
