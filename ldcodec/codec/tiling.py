"""Tile-wise transforms: bounded memory for large images, no visible seams.

The analysis and synthesis transforms are convolutional, so a tile computed with
enough surrounding context (a *margin*) equals the same region of the whole-image
result up to float rounding. We cut the latent grid into tiles, run each tile
with its margin, and keep only its centre. Peak memory then depends on the tile
size, not on the image size. Tiling happens in the transforms only: the
bitstream is the same whether or not the encoder or decoder tiled.

Receptive fields (four 5×5 stride-2 layers): a latent sees about ±46 pixels, so
the analysis margin of :data:`DEFAULT_MARGIN` latents (64 pixels) covers it. A pixel
of ``g_s`` with residual blocks (``residual_synthesis``) after layers 1 and 3 (the
base g_s of hp-v9 and hp-v10) sees −2…+3 latents; blocks after all four 1/8- and
1/4-resolution layers widen that to −4…+5, blocks at all six allowed positions to
−5…+6. Synthesis therefore keeps :data:`SYNTHESIS_MARGIN` latents of context,
enough for any block positions; a perceptual synthesis with a latent stage adds the
stage's reach to that (``residual_synthesis.synthesis_reach``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ldcodec.codec.transforms import LATENT_STRIDE

#: Tile edge in latents (64 latents = 1024 pixels).
DEFAULT_TILE = 64
#: Context on each side of a tile, in latents (analysis).
DEFAULT_MARGIN = 4
#: Context on each side of a synthesis tile, in latents: g_s with every residual block reaches 6.
SYNTHESIS_MARGIN = 6


@dataclass(frozen=True)
class Tile:
    """One tile of the latent grid: the kept region and the region computed (with margin)."""

    top: int
    left: int
    bottom: int
    right: int
    ctx_top: int
    ctx_left: int
    ctx_bottom: int
    ctx_right: int


def latent_tiles(height: int, width: int, tile: int = DEFAULT_TILE, margin: int = DEFAULT_MARGIN) -> Iterator[Tile]:
    """Cover a latent grid of ``height``×``width`` with tiles of at most ``tile`` latents a side."""
    if tile < 1 or margin < 0:
        raise ValueError("tile must be >= 1 and margin >= 0")
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            yield Tile(top, left, bottom, right,
                       max(0, top - margin), max(0, left - margin),
                       min(height, bottom + margin), min(width, right + margin))


def synthesise_tiled(synthesise: Callable[[torch.Tensor], torch.Tensor], y_hat: torch.Tensor,
                     out: np.ndarray, tile: int = DEFAULT_TILE, margin: int = SYNTHESIS_MARGIN) -> None:
    """Run ``synthesise`` (latents 1×C×h×w -> image 1×3×16h×16w in [0,1]) tile by tile.

    Writes rounded uint8 pixels into ``out`` (H×W×3, H ≤ 16h, W ≤ 16w): only one
    tile's activations are alive at a time.
    """
    s = LATENT_STRIDE
    height, width = out.shape[:2]
    for t in latent_tiles(y_hat.shape[2], y_hat.shape[3], tile, margin):
        if t.top * s >= height or t.left * s >= width:
            continue  # padding-only tile: nothing of it is kept
        part = y_hat[:, :, t.ctx_top : t.ctx_bottom, t.ctx_left : t.ctx_right]
        piece = synthesise(part.contiguous(memory_format=torch.channels_last))
        piece = piece.float()[0, :, (t.top - t.ctx_top) * s : (t.bottom - t.ctx_top) * s,
                              (t.left - t.ctx_left) * s : (t.right - t.ctx_left) * s]
        rows = min(height, t.bottom * s) - t.top * s
        cols = min(width, t.right * s) - t.left * s
        pixels = piece[:, :rows, :cols].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
        out[t.top * s : t.top * s + rows, t.left * s : t.left * s + cols] = pixels.cpu().numpy()


def analyse_tiled(analyse: Callable[[torch.Tensor], torch.Tensor], rgb: np.ndarray, device: torch.device,
                  tile: int = DEFAULT_TILE, margin: int = DEFAULT_MARGIN) -> torch.Tensor:
    """Run ``analyse`` (image 1×3×H×W in [0,1] -> latents 1×C×H/16×W/16) tile by tile.

    ``rgb`` is uint8 H×W×3 with H and W multiples of 16 (already padded); each
    tile is converted to float only when it is processed.
    """
    s = LATENT_STRIDE
    height, width = rgb.shape[0] // s, rgb.shape[1] // s
    result: torch.Tensor | None = None
    for t in latent_tiles(height, width, tile, margin):
        region = rgb[t.ctx_top * s : t.ctx_bottom * s, t.ctx_left * s : t.ctx_right * s]
        # H×W×3 uint8 viewed as 1×3×H×W is already channels_last (torch wants writable memory).
        region = np.ascontiguousarray(region) if region.flags.writeable else np.array(region, order="C")
        x = torch.from_numpy(region).permute(2, 0, 1)[None].float().div_(255.0).to(device)
        piece = analyse(x).float()
        if result is None:
            result = torch.empty((1, piece.shape[1], height, width), dtype=torch.float32, device=piece.device)
        result[:, :, t.top : t.bottom, t.left : t.right] = piece[
            :, :, t.top - t.ctx_top : t.bottom - t.ctx_top, t.left - t.ctx_left : t.right - t.ctx_left]
    assert result is not None
    return result
