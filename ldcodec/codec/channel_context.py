"""Channel context on top of the checkerboard (He et al. 2022, ELIC's "SCCTX").

The latent channels are split into uneven slices (1/8, 1/8, 1/4, 1/2 of M, small ones
first). Each checkerboard pass is coded slice by slice, and the parameters of slice
``i > 0`` are refined from the values already decoded in slices ``0..i-1``:

* anchor pass: the earlier slices' anchors (non-anchors are not decoded yet);
* non-anchor pass: the earlier slices whole (their anchors and non-anchors).

Every refinement is a whole-tensor convolution, so the coder makes 2·S parallel passes
(8 here) instead of 2, still no serial autoregression. Each net's last layer starts at
zero: a channel context added to a trained checkerboard model leaves it exactly as it
was, and training moves it from there.
"""

from __future__ import annotations

import torch
from torch import nn


def channel_slices(latent_channels: int) -> list[tuple[int, int]]:
    """(start, stop) of each slice: 1/8, 1/8, 1/4 and the rest of the channels."""
    m = latent_channels
    if m < 8:
        raise ValueError(f"a channel context needs at least 8 latent channels, not {m}")
    sizes = [m // 8, m // 8, m // 4]
    sizes.append(m - sum(sizes))
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def slice_parameters(params: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The (scales, means) of channels ``start:stop`` of a (B, 2M, H, W) parameter tensor."""
    scales, means = params.chunk(2, dim=1)
    return torch.cat([scales[:, start:stop], means[:, start:stop]], dim=1)


def merge_slices(parts: list[torch.Tensor]) -> torch.Tensor:
    """The inverse of :func:`slice_parameters` over all slices, in order: (B, 2M, H, W)."""
    halves = [p.chunk(2, dim=1) for p in parts]
    return torch.cat([torch.cat([s for s, _ in halves], 1), torch.cat([m for _, m in halves], 1)], dim=1)


class SliceRefinement(nn.Module):
    """Decoded earlier slices + the slice's own parameters -> refined parameters of the slice."""

    def __init__(self, known_channels: int, slice_channels: int):
        super().__init__()
        width = 2 * slice_channels
        self.context = nn.Conv2d(known_channels, width, kernel_size=3, padding=1)
        self.refine = nn.Sequential(
            nn.Conv2d(2 * width, width, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(width, width, 1),
        )
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def forward(self, params: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """``params``: the slice's (scales, means) (B, 2c, H, W); ``known``: decoded earlier slices, 0 where not yet decoded."""
        return params + self.refine(torch.cat([params, self.context(known)], dim=1))


class ChannelContext(nn.Module):
    """One :class:`SliceRefinement` per slice after the first, for each of the two passes."""

    def __init__(self, latent_channels: int):
        super().__init__()
        self.slices = channel_slices(latent_channels)
        self.anchor_nets = nn.ModuleList(SliceRefinement(a, b - a) for a, b in self.slices[1:])
        self.rest_nets = nn.ModuleList(SliceRefinement(a, b - a) for a, b in self.slices[1:])

    def refine(self, second_pass: bool, index: int, params: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Parameters of slice ``index`` (> 0) in the anchor (False) or non-anchor (True) pass.

        ``known``: ŷ of channels ``0:start`` of the slice, zero where not yet decoded.
        """
        nets = self.rest_nets if second_pass else self.anchor_nets
        return nets[index - 1](params, known)
