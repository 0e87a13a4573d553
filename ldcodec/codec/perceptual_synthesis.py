"""The perceptual synthesis of a diffusion decoder: the base g_s with optional residual blocks.

Decodes with steps > 0 synthesise through a copy of the base model's g_s fine-tuned with
LPIPS (:mod:`ldcodec.codec.diffusion_weights`). That copy has the base transform's
capacity, which every sweep since session 6 found to be the limit of the LPIPS gain.
:class:`ResidualSynthesis` adds CompressAI residual blocks (two 3×3 convolutions) after
chosen layers of g_s, at the 1/8 and 1/4 resolutions where they are cheap. Each block's
second convolution starts at zero, so a new block is the identity and fine-tuning starts
from the plain synthesis it extends.

The block positions are stored in the diffusion file's metadata; a file without them holds
a plain g_s, loaded as before. Steps 0 never uses this module.
"""

from __future__ import annotations

import json

import torch
from compressai.layers import ResidualBlock
from torch import nn

#: Metadata key of the diffusion file: the g_s layer indexes followed by a residual block (JSON list).
BLOCKS_KEY = "synthesis_blocks"


class ResidualSynthesis(nn.Module):
    """``base`` (an nn.Sequential g_s) with a residual block after each layer index in ``after``."""

    def __init__(self, base: nn.Sequential, after: tuple[int, ...]):
        super().__init__()
        after = block_positions(after)
        if not after or after[0] < 0 or after[-1] >= len(base) - 1:
            raise ValueError(f"residual blocks go after layers 0..{len(base) - 2} of g_s, not {list(after)}")
        self.after = after
        self.base = base
        self.blocks = nn.ModuleDict({str(i): ResidualBlock(*[self._channels(base, i)] * 2) for i in after})
        for block in self.blocks.values():  # the identity until trained
            nn.init.zeros_(block.conv2.weight)
            nn.init.zeros_(block.conv2.bias)

    @staticmethod
    def _channels(base: nn.Sequential, index: int) -> int:
        """Channels at the output of layer ``index`` (that of the last convolution up to it)."""
        for layer in reversed(list(base)[: index + 1]):
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                return layer.out_channels
        raise ValueError(f"no convolution at or before layer {index} of g_s")

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.base):
            y = layer(y)
            key = str(index)
            if key in self.blocks:
                y = self.blocks[key](y)
        return y


def block_positions(after) -> tuple[int, ...]:
    """Block positions in their one canonical form: sorted, each once."""
    return tuple(sorted(set(int(i) for i in after)))


def perceptual_synthesis(base_synthesis: nn.Sequential, after: tuple[int, ...] = ()) -> nn.Module:
    """The plain ``base_synthesis`` (no blocks) or a :class:`ResidualSynthesis` around it."""
    return ResidualSynthesis(base_synthesis, after) if after else base_synthesis


def blocks_of(synthesis: nn.Module | None) -> tuple[int, ...]:
    """The block positions of a perceptual synthesis (empty for a plain g_s or None)."""
    return synthesis.after if isinstance(synthesis, ResidualSynthesis) else ()


def blocks_metadata(synthesis: nn.Module | None) -> dict:
    """The metadata entry that records ``synthesis``'s blocks (none for a plain g_s)."""
    after = blocks_of(synthesis)
    return {BLOCKS_KEY: json.dumps(list(after))} if after else {}


def blocks_from_metadata(metadata: dict) -> tuple[int, ...]:
    """The block positions recorded in a diffusion file's metadata (empty if none)."""
    raw = metadata.get(BLOCKS_KEY)
    if raw is None:
        return ()
    try:
        after = json.loads(raw)
        if not isinstance(after, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in after):
            raise ValueError
    except ValueError:
        raise ValueError(f"{BLOCKS_KEY} must be a JSON list of layer indexes, not {raw!r}") from None
    return tuple(after)
