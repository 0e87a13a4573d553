"""A conditional patch discriminator: the adversarial term of the perceptual synthesis.

LPIPS and MSE both reward the mean of what a latent could have been, so a synthesis trained
on them alone draws smooth texture at low rates. A discriminator that tells real crops from
decoded ones, *given the decoded latents* (HiFiC, Mentzer et al. 2020), rewards texture that
is plausible for those latents instead. It exists only in training: decoding never runs it,
and nothing of it is exported.

The critic is a PatchGAN (three stride-2 4×4 convolutions, spectral-normalised so that its
gradients stay tame against a synthesis that starts already trained), one logit per 8×8
patch. The latents enter through a 1×1 convolution, upsampled (nearest) to the image. The
losses are the non-saturating ones of Goodfellow et al. (2014).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """Per-patch real/fake logits of an image in [0, 1] given its (normalised) latents."""

    def __init__(self, latent_channels: int, width: int = 64, condition_channels: int = 12):
        super().__init__()
        self.condition = nn.Conv2d(latent_channels, condition_channels, 1)
        layers: list[nn.Module] = []
        channels = 3 + condition_channels
        for out in (width, 2 * width, 4 * width):
            layers += [spectral_norm(nn.Conv2d(channels, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            channels = out
        layers.append(spectral_norm(nn.Conv2d(channels, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        condition = F.interpolate(self.condition(latents), size=image.shape[-2:], mode="nearest")
        return self.net(torch.cat([image * 2 - 1, condition], dim=1))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The critic's loss: real patches towards +, decoded ones towards −."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The synthesis' adversarial term (non-saturating): make decoded patches look real."""
    return F.softplus(-fake_logits).mean()
