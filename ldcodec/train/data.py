"""Training images held in memory, served as random crops with flips.

Decoding ~700 JPEG/PNG files on every step would compete with training for
the two CPU cores, so the whole set is decoded once into uint8 arrays
(≈650 MB for the shared training set).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def list_images(root: str | Path) -> list[Path]:
    """All image files below ``root``, sorted for a stable order."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def is_held_out(path: Path, root: Path, every: int = 20) -> bool:
    """Deterministic held-out split: about 1 in ``every`` files, chosen by a hash of the path.

    A hash (not the sort position) keeps the split stable when files are added.
    """
    key = str(path.relative_to(root)).encode()
    return int(hashlib.sha1(key).hexdigest(), 16) % every == 0


def split_images(root: str | Path, every: int = 20) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files) of ``root``."""
    root = Path(root)
    files = list_images(root)
    held = [p for p in files if is_held_out(p, root, every)]
    train = [p for p in files if not is_held_out(p, root, every)]
    return train, held


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


class CropSampler:
    """Random ``crop``×``crop`` patches with random flips from images in memory."""

    def __init__(self, files: list[Path], crop: int, seed: int = 0):
        self.crop = crop
        self.images = [img for img in (load_rgb(p) for p in files) if min(img.shape[:2]) >= crop]
        if not self.images:
            raise ValueError(f"no training image is at least {crop}x{crop} pixels")
        areas = np.array([img.shape[0] * img.shape[1] for img in self.images], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.rng = np.random.default_rng(seed)

    @property
    def pixels(self) -> int:
        return int(sum(img.shape[0] * img.shape[1] for img in self.images))

    def batch(self, size: int) -> np.ndarray:
        """A batch of shape (size, 3, crop, crop), float32 in [0, 1]."""
        out = np.empty((size, self.crop, self.crop, 3), dtype=np.uint8)
        picks = self.rng.choice(len(self.images), size=size, p=self.weights)
        for i, k in enumerate(picks):
            img = self.images[k]
            h, w = img.shape[:2]
            top = self.rng.integers(0, h - self.crop + 1)
            left = self.rng.integers(0, w - self.crop + 1)
            patch = img[top : top + self.crop, left : left + self.crop]
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            if self.rng.random() < 0.5:
                patch = patch[::-1]
            out[i] = patch
        return out.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
