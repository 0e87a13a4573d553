"""Side-by-side crops (original | codec A | codec B | ...) at about the same bpp.

Per image and codec, the runner keeps the setting whose bpp lies closest to a
target (:class:`ClosestToTarget`); this module cuts the same region out of each
and lays them side by side with a caption (codec, bpp, PSNR) above each panel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CAPTION_HEIGHT = 30  # two caption lines
GAP = 4


def crop_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """The centred ``size``×``size`` box (top, left, bottom, right), clipped to the image."""
    h, w = min(size, height), min(size, width)
    top, left = (height - h) // 2, (width - w) // 2
    return top, left, top + h, left + w


def cut(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, bottom, right = box
    return np.ascontiguousarray(image[top:bottom, left:right])


@dataclass
class Panel:
    caption: str
    pixels: np.ndarray


@dataclass
class ClosestToTarget:
    """Keeps, per (image, codec), the crop of the decode whose bpp is closest to ``target_bpp``."""

    target_bpp: float
    size: int = 256
    best: dict = field(default_factory=dict)

    def offer(self, image: str, codec: str, bpp: float, psnr: float, label: str, decoded: np.ndarray) -> None:
        key = (image, codec)
        distance = abs(bpp - self.target_bpp)
        if key not in self.best or distance < self.best[key][0]:
            pixels = cut(decoded, crop_box(*decoded.shape[:2], self.size))
            self.best[key] = (distance, Panel(f"{codec} {label}\n{bpp:.3f} bpp, {psnr:.2f} dB", pixels))

    def panels(self, image: str, codecs: list[str]) -> list[Panel]:
        return [self.best[(image, codec)][1] for codec in codecs if (image, codec) in self.best]


def side_by_side(panels: list[Panel]) -> Image.Image:
    """One image with the panels in a row, each under its caption."""
    font = ImageFont.load_default()
    height = max(p.pixels.shape[0] for p in panels) + CAPTION_HEIGHT
    width = sum(p.pixels.shape[1] for p in panels) + GAP * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel in panels:
        canvas.paste(Image.fromarray(panel.pixels, "RGB"), (x, CAPTION_HEIGHT))
        draw.multiline_text((x + 2, 2), panel.caption, fill="black", font=font, spacing=2)
        x += panel.pixels.shape[1] + GAP
    return canvas


def save_side_by_side(path: str | Path, original: np.ndarray, panels: list[Panel], size: int) -> None:
    """Write original | panels... to ``path`` as PNG."""
    first = Panel("original\n", cut(original, crop_box(*original.shape[:2], size)))
    side_by_side([first, *panels]).save(path)
