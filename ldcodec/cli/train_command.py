"""``ldcodec train``: thin wrapper over :mod:`ldcodec.train.trainer`."""

from __future__ import annotations

import click

from ldcodec.codec.checkerboard import CONTEXT_MODES
from ldcodec.codec.model import PARAMETER_ARITHMETICS, RATE_ESTIMATES, SYMBOL_MODELS, TRAINED_PARTS, ModelConfig
from ldcodec.codec.precision import PRECISIONS
from ldcodec.codec.release import DEFAULT_MODEL_ID


def synthesis_blocks_option(help_text: str):
    """``--synthesis-blocks``: comma-separated g_s layer indexes, parsed to a tuple of ints."""
    def parse(ctx, param, value):
        try:
            return tuple(int(part) for part in value.split(",") if part.strip())
        except ValueError:
            raise click.BadParameter(f"a comma-separated list of layer indexes, not {value!r}") from None
    return click.option("--synthesis-blocks", default="", show_default=True, callback=parse, help=help_text)


@click.command("train")
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--run", default=DEFAULT_MODEL_ID, show_default=True, help="Run name: checkpoint folder and model id.")
@click.option("--steps", default=6000, show_default=True, help="Total optimizer steps (the lr schedule is laid over these).")
@click.option("--batch", default=16, show_default=True)
@click.option("--crop", default=128, show_default=True, help="Random crop size in pixels.")
@click.option("--lr", default=5e-4, show_default=True)
@click.option("--decay-fraction", default=0.3, show_default=True, help="Final fraction of steps with cosine lr decay.")
@click.option("--channels", default=96, show_default=True, help="N: transform width.")
@click.option("--latent-channels", default=128, show_default=True, help="M: latent channels.")
@click.option("--context", type=click.Choice(CONTEXT_MODES), default="checkerboard-channel", show_default=True,
              help="Context of the latents' entropy model (checkerboard: two parallel passes; "
                   "checkerboard-channel: each pass in four channel slices, eight passes).")
@click.option("--lambda-min", default=0.00003, show_default=True, help="λ at quality 0.")
@click.option("--lambda-max", default=0.27, show_default=True, help="λ at quality 1.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: bf16 autocast on CUDA or on CPUs with native bf16, else fp32.")
@click.option("--threads", default=0, help="CPU threads (0: torch default).")
@click.option("--checkpoint-dir", default=None, help="Where resumable checkpoints live [~/.cache/ldcodec-train].")
@click.option("--max-minutes", default=0.0, help="Stop (checkpointed) after this many minutes; 0 = no limit.")
@click.option("--export", "export_path", default="", help="Write safetensors weights here at every checkpoint and at the end.")
@click.option("--init-from", default="", help="Weights file to start from when the run has no checkpoint "
              "(e.g. the committed ldcodec/weights/hp-v6.safetensors).")
@click.option("--rewarm", is_flag=True, help="Restart the lr warm-up at the resumed step (a new schedule over a "
              "run whose lr had already decayed).")
@click.option("--rate-estimate", type=click.Choice(RATE_ESTIMATES), default="noise", show_default=True,
              help="The latents' rate term: uniform noise, or the rounded latents the coder codes "
                   "(straight-through; for fine-tuning a trained model).")
@click.option("--parameter-arithmetic", type=click.Choice(PARAMETER_ARITHMETICS), default="exact", show_default=True,
              help="How the coder of the exported model computes its entropy parameters: exact integer "
                   "arithmetic (the same on every machine) or the float32 path of hp-v1..hp-v6. Training is "
                   "the same either way.")
@click.option("--symbol-model", type=click.Choice(SYMBOL_MODELS), default="tables-v1", show_default=True,
              help="How the coder of the exported model codes a latent symbol: tabulated Gaussians (about 20x "
                   "faster to range-code) or constriction's quantized Gaussians of hp-v1..hp-v7. Training is the "
                   "same either way.")
@synthesis_blocks_option("Comma-separated g_s layer indexes to follow with a residual block (e.g. 1,3: at 1/8 and "
                         "1/4 resolution); empty = the plain g_s. Blocks added to --init-from weights start as the "
                         "identity.")
@click.option("--train-only", type=click.Choice(TRAINED_PARTS), default="all", show_default=True,
              help="synthesis: train g_s alone on the mean log-MSE; the encoder, the gains, the entropy "
                   "model and so the bitstream stay those of --init-from.")
@click.option("--msssim-weight", default=0.0, show_default=True,
              help="With --train-only synthesis: share w of the MS-SSIM term in the loss "
                   "(1-w)·log MSE + w·log(1-MS-SSIM); needs --crop > 160.")
@click.option("--seed", default=0, show_default=True)
def train_command(data, run, steps, batch, crop, lr, decay_fraction, channels, latent_channels, context, lambda_min,
                  lambda_max, device, precision, threads, checkpoint_dir, max_minutes, export_path, init_from, rewarm,
                  rate_estimate, parameter_arithmetic, symbol_model, synthesis_blocks, train_only, msssim_weight,
                  seed):
    """Train a variable-rate model on the images in DATA (resumes from the run's checkpoint).

    A held-out split (about 1 image in 20, chosen by a hash of its path) is never
    trained on; it is used for validation. Example:

        ldcodec train ../shared/data/train --run hp-v6 --steps 6000 --export ldcodec/weights/hp-v6.safetensors
    """
    from ldcodec.train.trainer import DEFAULT_CHECKPOINT_DIR, TrainConfig, Trainer

    cfg = TrainConfig(
        data=data, run=run, steps=steps, batch=batch, crop=crop, lr=lr, decay_fraction=decay_fraction,
        device=device, precision=precision, threads=threads,
        checkpoint_dir=checkpoint_dir or str(DEFAULT_CHECKPOINT_DIR), max_minutes=max_minutes,
        export=export_path, init_from=init_from, rewarm=rewarm, rate_estimate=rate_estimate, seed=seed,
        train_only=train_only, msssim_weight=msssim_weight,
        model=ModelConfig(channels=channels, latent_channels=latent_channels, context=context,
                          lambda_min=lambda_min, lambda_max=lambda_max, parameter_arithmetic=parameter_arithmetic,
                          symbol_model=symbol_model, synthesis_blocks=synthesis_blocks),
    )
    Trainer(cfg).run()
