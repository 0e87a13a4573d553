"""Synthesis transforms with residual blocks: g_s with more capacity at little cost.

Decodes with steps > 0 synthesise through a copy of the base model's g_s fine-tuned with
LPIPS (:mod:`ldcodec.codec.diffusion_weights`). That copy had the base transform's
capacity, which every sweep since session 6 found to be the limit of the LPIPS gain.
:class:`ResidualSynthesis` adds CompressAI residual blocks (two 3×3 convolutions) after
chosen layers of g_s, at the 1/8 and 1/4 resolutions where they are cheap. Each block's
second convolution starts at zero, so a new block is the identity and fine-tuning starts
from the plain synthesis it extends.

The same module is the base model's own g_s where its config names blocks
(``ModelConfig.synthesis_blocks``, models from hp-v9). A diffusion file records the block
positions of its perceptual synthesis in its metadata; a file without them holds a plain g_s.
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


def with_residual_blocks(base_synthesis: nn.Module, after: tuple[int, ...] = ()) -> nn.Module:
    """``base_synthesis`` with residual blocks after the layers in ``after`` (modules shared, not copied).

    A base that has blocks of its own keeps them: the result has the blocks of both.
    """
    if isinstance(base_synthesis, ResidualSynthesis):
        extended = ResidualSynthesis(base_synthesis.base, base_synthesis.after + tuple(after))
        for key, block in base_synthesis.blocks.items():
            extended.blocks[key] = block
        return extended
    return ResidualSynthesis(base_synthesis, after) if after else base_synthesis


def load_synthesis(target: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s weights into ``target``, which must have its blocks (and may have more).

    Blocks that only ``target`` has are left as they are (the identity, if new): how a plain
    g_s starts a synthesis with blocks.
    """
    missing = set(blocks_of(source)) - set(blocks_of(target))
    if missing:
        raise ValueError(f"the synthesis has no residual blocks after layers {sorted(missing)}")
    plain_layers(target).load_state_dict(plain_layers(source).state_dict())
    for key, block in getattr(source, "blocks", {}).items():
        target.blocks[key].load_state_dict(block.state_dict())


def plain_layers(synthesis: nn.Module) -> nn.Module:
    """The plain g_s layers of a synthesis, without its residual blocks."""
    return synthesis.base if isinstance(synthesis, ResidualSynthesis) else synthesis


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
