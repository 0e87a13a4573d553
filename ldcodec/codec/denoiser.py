"""The conditional denoiser of the diffusion decoder: a small UNet in latent space.

It never sees pixels: it works on the base model's latents (16× downsampled),
which is what makes the diffusion decoder affordable on a CPU. Input is the
noisy latent x_t concatenated with the decoded latent ŷ (2·M channels); the
rate enters as the quality q, embedded like a timestep and added to the time
embedding (diffusers' ``class_embed_type="timestep"``).

It predicts x0 as a *residual* on ŷ (x0 = ŷ + UNet(...)) with a zero-initialised
output convolution, so an untrained denoiser returns ŷ exactly and training
starts from the distortion-optimal decode instead of from noise.

Diffusion runs on *normalised* latents: the ungained latent (ŷ_g · inverse_gain(q),
what g_s consumes) divided by a fixed per-channel scale (``latent_scale``, the
standard deviation of the training latents, measured once when training starts and
shipped with the weights). Clean latents then have about unit variance whatever
the quality, and the quantization noise is smaller the higher the quality.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import nn

#: Scale of q in the embedding: q ∈ [0, 1] becomes a "timestep" in [0, 1000].
QUALITY_EMBED_SCALE = 1000.0


class Float32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32, returned in its input's dtype.

    Why: on CPU the bf16 channels-last group-norm kernel is several times slower than
    the float32 one at the denoiser's sizes (128 channels at 16×24: ~320 µs against
    ~50), and float32 statistics are the more accurate ones anyway.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


@dataclass(frozen=True)
class DenoiserConfig:
    """Shape of the denoiser; stored in the diffusion weights' metadata."""

    latent_channels: int = 128
    block_out_channels: tuple[int, ...] = (96, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 32
    num_train_timesteps: int = 1000

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DenoiserConfig":
        return cls(**json.loads(text))

    @property
    def multiple(self) -> int:
        """Latent sides must be multiples of this (one 2× downsampling per extra level)."""
        return 2 ** (len(self.block_out_channels) - 1)


class LatentDenoiser(nn.Module):
    """x0-predicting denoiser: (x_t, t, ŷ, q) -> x0, all latents normalised."""

    def __init__(self, config: DenoiserConfig | None = None):
        super().__init__()
        self.config = config or DenoiserConfig()
        c = self.config
        levels = len(c.block_out_channels)
        self.unet = UNet2DModel(
            in_channels=2 * c.latent_channels, out_channels=c.latent_channels,
            block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
            down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
            add_attention=False, norm_num_groups=c.norm_num_groups, class_embed_type="timestep",
        )
        for module in self.unet.modules():
            if type(module) is nn.GroupNorm:
                module.__class__ = Float32GroupNorm  # same parameters and state-dict keys
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)
        #: Per-channel scale of the ungained latents (fixed after the start of training).
        self.register_buffer("latent_scale", torch.ones(c.latent_channels))

    # Latent normalisation --------------------------------------------------------------
    def _factor(self, inverse_gain: torch.Tensor) -> torch.Tensor:
        return inverse_gain.float() / self.latent_scale.float()[None, :, None, None]

    def normalise(self, y_gained: torch.Tensor, inverse_gain: torch.Tensor) -> torch.Tensor:
        """Gained latents (B×M×h×w) -> normalised diffusion latents."""
        return y_gained.float() * self._factor(inverse_gain)

    def denormalise(self, x: torch.Tensor, inverse_gain: torch.Tensor) -> torch.Tensor:
        """Normalised diffusion latents -> gained latents, as the synthesis expects."""
        return x.float() / self._factor(inverse_gain)

    def quantization_sigma(self, inverse_gain: torch.Tensor) -> torch.Tensor:
        """Std of the quantization noise in normalised units, per sample (B,).

        Rounding in gained units adds uniform noise of variance 1/12; normalising
        scales channel c by inverse_gain_c / latent_scale_c. One level per image:
        the root mean square over channels.
        """
        factor = self._factor(inverse_gain)[:, :, 0, 0]
        return torch.sqrt((factor**2).mean(dim=1) / 12.0)

    # Prediction -----------------------------------------------------------------------
    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor, y_hat: torch.Tensor,
                quality: torch.Tensor) -> torch.Tensor:
        """Predicted clean latent x0 (same shape as ``y_hat``); pads to the UNet's multiple."""
        h, w = y_hat.shape[2:]
        m = self.config.multiple
        ph, pw = (-h) % m, (-w) % m
        inputs = torch.cat([x_t, y_hat], dim=1)
        if ph or pw:
            inputs = F.pad(inputs, (0, pw, 0, ph), mode="replicate")
        batch = y_hat.shape[0]
        timestep = torch.as_tensor(timestep, device=y_hat.device).reshape(-1).expand(batch)
        labels = quality.to(y_hat.device).float().reshape(-1).expand(batch) * QUALITY_EMBED_SCALE
        residual = self.unet(inputs.to(self._dtype()), timestep, class_labels=labels).sample
        return y_hat + residual[:, :, :h, :w].to(y_hat.dtype)

    def cast_for_inference(self, dtype: torch.dtype) -> "LatentDenoiser":
        """Store the UNet's weights in ``dtype`` (its group norms stay float32), for decoding.

        Why: under bf16 autocast in inference mode, float32 weights are cast again at every
        call (a profile shows a copy of every convolution weight per step); storing them in
        bf16 once saves those copies. Inference only: training keeps float32 master weights.
        """
        self.unet.to(dtype)
        for module in self.unet.modules():
            if isinstance(module, nn.GroupNorm):
                module.float()
        return self

    def _dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
