"""Generate ldcodec/assets/sample.png: a procedural 512×384 test scene.

The package must not ship photos from datasets or the web, so the bundled
sample is synthesised: a sky gradient, fractal-noise hills and textures, hard
edges and fine stripes — enough structure to exercise a codec.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def fractal_noise(h: int, w: int, rng: np.random.Generator, octaves: int = 6) -> np.ndarray:
    out = np.zeros((h, w))
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = rng.random((cells + 1, cells + 1))
        img = Image.fromarray((grid * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        out += np.asarray(img, dtype=np.float64) / 255.0 / 2**o
    return out / out.max()


def make(path: Path, w: int = 512, h: int = 384, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    sky = np.stack([0.35 + 0.3 * yy, 0.55 + 0.25 * yy, 0.95 - 0.2 * yy], axis=-1)
    clouds = fractal_noise(h, w, rng)[..., None]
    img = sky * (1 - 0.35 * clouds**3) + 0.35 * clouds**3
    ridge = 0.55 + 0.12 * np.sin(xx * 9.0) * 0.5 + 0.1 * (fractal_noise(h, w, rng)[0:1, :] - 0.5)
    hills = yy > ridge
    tex = fractal_noise(h, w, rng)
    grass = np.stack([0.2 + 0.25 * tex, 0.45 + 0.3 * tex, 0.15 + 0.1 * tex], axis=-1)
    img = np.where(hills[..., None], grass, img)
    pil = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    draw.ellipse((380, 40, 450, 110), fill=(250, 230, 120))
    draw.rectangle((60, 200, 170, 330), fill=(150, 60, 50), outline=(40, 20, 20), width=3)
    draw.polygon([(50, 200), (115, 150), (180, 200)], fill=(90, 40, 35))
    for i in range(10):
        draw.line((230 + 6 * i, 250, 230 + 6 * i, 340), fill=(30, 30, 30), width=2)
    draw.text((250, 350), "ldcodec sample", fill=(255, 255, 255))
    pil = pil.filter(ImageFilter.GaussianBlur(0.6))
    noise = rng.normal(0, 3, (h, w, 3))
    arr = np.clip(np.asarray(pil, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, optimize=True)


if __name__ == "__main__":
    make(Path(__file__).resolve().parent.parent / "ldcodec" / "assets" / "sample.png")
