"""Tiled transforms: bounded memory on large images, same stream and pixels as untiled."""

from __future__ import annotations

import numpy as np
import pytest

import ldcodec
from ldcodec.codec.tiling import latent_tiles


def test_tiles_cover_the_grid_exactly_once():
    seen = np.zeros((37, 53), dtype=int)
    for t in latent_tiles(37, 53, tile=8, margin=3):
        seen[t.top : t.bottom, t.left : t.right] += 1
        assert t.ctx_top == max(0, t.top - 3) and t.ctx_bottom == min(37, t.bottom + 3)
        assert t.bottom - t.top <= 8 and t.right - t.left <= 8
    assert (seen == 1).all()


@pytest.mark.parametrize("size", [(200, 300), (161, 97), (64, 64)])
def test_tiled_codec_matches_untiled(tiny_weights, image_factory, size):
    """Tiles of 2 latents (32 px) with their margin give the same stream and pixels as one tile."""
    whole = ldcodec.load(tiny_weights, tile=0)
    tiled = ldcodec.load(tiny_weights, tile=2)
    img = image_factory(*size)
    blob = whole.encode(img, quality=0.6)
    assert tiled.encode(img, quality=0.6) == blob
    a = np.asarray(whole.decode(blob), dtype=np.int16)
    b = np.asarray(tiled.decode(blob), dtype=np.int16)
    assert a.shape == b.shape == (*size, 3)
    # Exact in practice; allow a rare ±1 from float summation order across tile shapes.
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3


def test_negative_tile_is_refused(tiny_weights):
    with pytest.raises(ValueError):
        ldcodec.load(tiny_weights, tile=-1)
