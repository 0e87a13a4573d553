"""Checkerboard spatial context (He et al. 2021): a two-pass, parallel entropy model.

The latent grid is split like a checkerboard. *Anchors* ((row + column) even) are
coded with the hyperprior's parameters alone; the other half is coded with
parameters refined from the hyperprior's and from the already decoded anchors
around each position. Both passes are whole-tensor convolutions, so decoding stays
parallel (unlike a serial autoregressive context, too slow on a CPU), and the
non-anchors, which see their four decoded neighbours, cost fewer bits.
"""

from __future__ import annotations

import torch
from torch import nn

#: Names of the context modes a model config may ask for ("checkerboard-channel":
#: :mod:`ldcodec.codec.channel_context`).
CONTEXT_MODES = ("none", "checkerboard", "checkerboard-channel")


def anchor_mask(height: int, width: int, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """1 at anchor positions ((row + column) even), 0 elsewhere; shape (1, 1, height, width)."""
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return ((rows + cols) % 2 == 0).to(dtype)[None, None]


class CheckerboardContext(nn.Module):
    """Hyperprior parameters + decoded anchors -> refined (scales, means) for the non-anchors.

    ``context`` is a 5×5 convolution over the anchors (non-anchors are zero in its
    input, so at a non-anchor it sees only decoded values). ``refine`` is a 1×1
    network whose last layer starts at zero: a freshly added context leaves the
    hyperprior model exactly as it was, and training moves it from there.
    """

    def __init__(self, latent_channels: int):
        super().__init__()
        m = latent_channels
        self.context = nn.Conv2d(m, m, kernel_size=5, padding=2)
        self.refine = nn.Sequential(
            nn.Conv2d(3 * m, 2 * m, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(2 * m, 2 * m, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(2 * m, 2 * m, 1),
        )
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def forward(self, hyper_params: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``hyper_params``: h_s output (B, 2M, H, W); ``anchors``: ŷ at anchors, 0 elsewhere (B, M, H, W)."""
        ctx = self.context(anchors)
        return hyper_params + self.refine(torch.cat([hyper_params, ctx], dim=1))
