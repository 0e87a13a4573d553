"""Analysis/synthesis transforms (the VAE) and the hyper transforms.

Built from CompressAI layers, as in Minnen et al. 2018 (mean-scale hyperprior):
four stride-2 convolutions with GDN give a downsampling factor of 16 for the
latents ``y``; two more give 64 for the hyper-latents ``z``.
"""

from __future__ import annotations

from compressai.layers import GDN
from compressai.models.utils import conv, deconv
import torch
import torch.nn.functional as F
from torch import nn

#: Spatial downsampling of the latents relative to the image.
LATENT_STRIDE = 16
#: Spatial downsampling of the hyper-latents relative to the image.
HYPER_STRIDE = 64


def analysis_transform(channels: int, latent_channels: int) -> nn.Sequential:
    """g_a: image (3 channels, in [0,1]) -> latents y."""
    n, m = channels, latent_channels
    return nn.Sequential(
        conv(3, n), GDN(n),
        conv(n, n), GDN(n),
        conv(n, n), GDN(n),
        conv(n, m),
    )


def synthesis_transform(channels: int, latent_channels: int) -> nn.Sequential:
    """g_s: latents y -> image (3 channels, roughly in [0,1])."""
    n, m = channels, latent_channels
    return nn.Sequential(
        deconv(m, n), GDN(n, inverse=True),
        deconv(n, n), GDN(n, inverse=True),
        deconv(n, n), GDN(n, inverse=True),
        deconv(n, 3),
    )


def hyper_analysis_transform(channels: int, latent_channels: int) -> nn.Sequential:
    """h_a: gained latents -> hyper-latents z."""
    n, m = channels, latent_channels
    return nn.Sequential(
        conv(m, n, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
        conv(n, n), nn.LeakyReLU(inplace=True),
        conv(n, n),
    )


def hyper_synthesis_transform(channels: int, latent_channels: int) -> nn.Sequential:
    """h_s: hyper-latents -> (means, scales) of the gained latents, 2*M channels."""
    n, m = channels, latent_channels
    return nn.Sequential(
        deconv(n, m), nn.LeakyReLU(inplace=True),
        deconv(m, m * 3 // 2), nn.LeakyReLU(inplace=True),
        conv(m * 3 // 2, m * 2, stride=1, kernel_size=3),
    )


class FrozenGDN(nn.Module):
    """A trained GDN for inference: β and γ reparametrised once, not on every call.

    compressai's GDN recomputes them from their parameters at each forward (for training);
    at inference that is ~1.5 ms of a 768×512 encode for nothing. Same arithmetic, same outputs.
    """

    def __init__(self, gdn: GDN):
        super().__init__()
        channels = gdn.beta.shape[0]
        with torch.no_grad():
            self.register_buffer("beta", gdn.beta_reparam(gdn.beta).detach().clone())
            self.register_buffer("gamma", gdn.gamma_reparam(gdn.gamma).reshape(channels, channels, 1, 1).detach().clone())
        self.inverse = gdn.inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = F.conv2d(x**2, self.gamma, self.beta)
        return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))


def freeze_gdn(transform: nn.Module) -> None:
    """Swap each GDN inside ``transform`` for its :class:`FrozenGDN` (in place; for inference only)."""
    for name, layer in transform.named_children():
        if isinstance(layer, GDN):
            setattr(transform, name, FrozenGDN(layer))
        else:
            freeze_gdn(layer)
