"""Synthesis transforms with residual blocks: g_s with more capacity at little cost.

Decodes with steps > 0 synthesise through a copy of the base model's g_s fine-tuned with
LPIPS (:mod:`ldcodec.codec.diffusion_weights`). That copy had the base transform's
capacity, which every sweep since session 6 found to be the limit of the LPIPS gain.
:class:`ResidualSynthesis` adds CompressAI residual blocks (two 3×3 convolutions) after
chosen layers of g_s, at the 1/8 and 1/4 resolutions where they are cheap. Each block's
second convolution starts at zero, so a new block is the identity and fine-tuning starts
from the plain synthesis it extends.

A perceptual synthesis may also have a :class:`LatentStage`: residual blocks on the latents
themselves, before g_s's first layer, where a 3×3 convolution is cheapest and each tap
spans 16 pixels (the 96-channel g_s of hp-v10 has little capacity; the latent stage adds
some to the steps > 0 decode for a few milliseconds).

The same module is the base model's own g_s where its config names blocks
(``ModelConfig.synthesis_blocks``, models from hp-v9). A diffusion file records the block
positions (and the latent stage) of its perceptual synthesis in its metadata; a file
without them holds a plain g_s.
"""

from __future__ import annotations

import json

import torch
from compressai.layers import ResidualBlock
from torch import nn

#: Metadata key of the diffusion file: the g_s layer indexes followed by a residual block (JSON list).
BLOCKS_KEY = "synthesis_blocks"
#: Metadata key of the diffusion file: the latent stage's shape, JSON [blocks, width] (absent: none).
LATENT_STAGE_KEY = "synthesis_latent_stage"
#: Bounds on a latent stage's shape (a file's metadata must not ask for a huge allocation).
MAX_STAGE_BLOCKS = 16
MAX_STAGE_WIDTH = 1024


class LatentStage(nn.Module):
    """y + P(blocks(E(y))): ``blocks`` residual blocks of ``width`` channels on the latents.

    E and P are 1×1 convolutions between the M latent channels and ``width``; P starts at
    zero, so a new stage is the identity and fine-tuning starts from the synthesis it extends.
    """

    def __init__(self, channels: int, blocks: int, width: int):
        super().__init__()
        check_stage_shape((blocks, width))
        self.expand = nn.Conv2d(channels, width, 1)
        self.blocks = nn.Sequential(*[ResidualBlock(width, width) for _ in range(blocks)])
        self.project = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.blocks), self.expand.out_channels)

    @property
    def reach(self) -> int:
        """Latents of context each output latent sees on each side (two 3×3 convolutions a block)."""
        return 2 * len(self.blocks)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.project(self.blocks(self.expand(y)))


def check_stage_shape(stage) -> tuple[int, ...]:
    """``stage`` as a tuple: () for none, else (blocks, width) within bounds; ValueError otherwise."""
    stage = tuple(stage)
    if stage == ():
        return stage
    if (len(stage) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in stage)
            or not (1 <= stage[0] <= MAX_STAGE_BLOCKS and 1 <= stage[1] <= MAX_STAGE_WIDTH)):
        raise ValueError(f"a latent stage is [blocks, width] with 1..{MAX_STAGE_BLOCKS} blocks of "
                         f"1..{MAX_STAGE_WIDTH} channels, not {list(stage)}")
    return stage


class ResidualSynthesis(nn.Module):
    """``base`` (an nn.Sequential g_s) with a residual block after each layer index in ``after``
    and, if ``stage`` = (blocks, width) is given, a :class:`LatentStage` before its first layer."""

    def __init__(self, base: nn.Sequential, after: tuple[int, ...], stage: tuple[int, ...] = ()):
        super().__init__()
        after = block_positions(after)
        stage = check_stage_shape(stage)
        if (not after and not stage) or (after and (after[0] < 0 or after[-1] >= len(base) - 1)):
            raise ValueError(f"residual blocks go after layers 0..{len(base) - 2} of g_s, not {list(after)}")
        self.after = after
        self.base = base
        self.stage = LatentStage(base[0].in_channels, *stage) if stage else None
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
        if self.stage is not None:
            y = self.stage(y)
        for index, layer in enumerate(self.base):
            y = layer(y)
            key = str(index)
            if key in self.blocks:
                y = self.blocks[key](y)
        return y


def block_positions(after) -> tuple[int, ...]:
    """Block positions in their one canonical form: sorted, each once."""
    return tuple(sorted(set(int(i) for i in after)))


def with_residual_blocks(base_synthesis: nn.Module, after: tuple[int, ...] = (),
                         stage: tuple[int, ...] = ()) -> nn.Module:
    """``base_synthesis`` with residual blocks after the layers in ``after`` and the latent stage
    ``stage`` (modules shared, not copied).

    A base that has blocks (or a stage) of its own keeps them: the result has the blocks of both.
    """
    stage = check_stage_shape(stage)
    if isinstance(base_synthesis, ResidualSynthesis):
        own = stage_of(base_synthesis)
        if own and stage and own != stage:
            raise ValueError(f"the synthesis has a latent stage {list(own)} already, not {list(stage)}")
        extended = ResidualSynthesis(base_synthesis.base, base_synthesis.after + tuple(after), stage or own)
        for key, block in base_synthesis.blocks.items():
            extended.blocks[key] = block
        if base_synthesis.stage is not None:
            extended.stage = base_synthesis.stage
        return extended
    return ResidualSynthesis(base_synthesis, after, stage) if after or stage else base_synthesis


def load_synthesis(target: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s weights into ``target``, which must have its blocks (and may have more).

    Blocks (and a latent stage) that only ``target`` has are left as they are (the identity, if
    new): how a plain g_s starts a synthesis with blocks.
    """
    missing = set(blocks_of(source)) - set(blocks_of(target))
    if missing:
        raise ValueError(f"the synthesis has no residual blocks after layers {sorted(missing)}")
    if stage_of(source) and stage_of(source) != stage_of(target):
        raise ValueError(f"the synthesis has latent stage {list(stage_of(target))}, not {list(stage_of(source))}")
    plain_layers(target).load_state_dict(plain_layers(source).state_dict())
    for key, block in getattr(source, "blocks", {}).items():
        target.blocks[key].load_state_dict(block.state_dict())
    if stage_of(source):
        target.stage.load_state_dict(source.stage.state_dict())


def plain_layers(synthesis: nn.Module) -> nn.Module:
    """The plain g_s layers of a synthesis, without its residual blocks."""
    return synthesis.base if isinstance(synthesis, ResidualSynthesis) else synthesis


def blocks_of(synthesis: nn.Module | None) -> tuple[int, ...]:
    """The block positions of a perceptual synthesis (empty for a plain g_s or None)."""
    return synthesis.after if isinstance(synthesis, ResidualSynthesis) else ()


def _latent_stage(synthesis: nn.Module | None) -> LatentStage | None:
    return synthesis.stage if isinstance(synthesis, ResidualSynthesis) else None


def stage_of(synthesis: nn.Module | None) -> tuple[int, ...]:
    """The latent stage's (blocks, width) of a perceptual synthesis; () if it has none."""
    stage = _latent_stage(synthesis)
    return stage.shape if stage is not None else ()


def synthesis_reach(synthesis: nn.Module | None) -> int:
    """Latents of context the latent stage adds to a synthesis' receptive field (on each side)."""
    stage = _latent_stage(synthesis)
    return stage.reach if stage is not None else 0


def blocks_metadata(synthesis: nn.Module | None) -> dict:
    """The metadata entries that record ``synthesis``'s blocks and latent stage (none for a plain g_s)."""
    after, stage = blocks_of(synthesis), stage_of(synthesis)
    return {**({BLOCKS_KEY: json.dumps(list(after))} if after else {}),
            **({LATENT_STAGE_KEY: json.dumps(list(stage))} if stage else {})}


def _int_list(metadata: dict, key: str, what: str) -> tuple[int, ...]:
    """The JSON list of integers under ``key`` in a file's metadata (() if absent); ValueError if not one."""
    raw = metadata.get(key)
    if raw is None:
        return ()
    try:
        values = json.loads(raw)
        if not isinstance(values, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in values):
            raise ValueError
    except ValueError:
        raise ValueError(f"{key} must be a JSON list of {what}, not {raw!r}") from None
    return tuple(values)


def stage_from_metadata(metadata: dict) -> tuple[int, ...]:
    """The latent stage (blocks, width) recorded in a diffusion file's metadata (() if none)."""
    stage = _int_list(metadata, LATENT_STAGE_KEY, "[blocks, width]")
    if LATENT_STAGE_KEY in metadata and not stage:
        raise ValueError(f"{LATENT_STAGE_KEY} must be [blocks, width], not []")
    return check_stage_shape(stage)


def blocks_from_metadata(metadata: dict) -> tuple[int, ...]:
    """The block positions recorded in a diffusion file's metadata (empty if none)."""
    return _int_list(metadata, BLOCKS_KEY, "layer indexes")
