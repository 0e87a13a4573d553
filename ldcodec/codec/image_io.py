"""Turning what users hand us into 8-bit RGB (+ alpha), and back.

Anything Pillow reads is accepted. Grayscale stays grayscale, alpha is kept
losslessly (a PNG-compressed plane in its own section), 16-bit and float images
are reduced to 8 bits with a warning, and EXIF orientation is applied.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ldcodec.bitstream.container import ColorMode
from ldcodec.errors import InputImageError

_GRAY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_GRAY_ALPHA_MODES = {"LA", "La"}


@dataclass
class PreparedImage:
    rgb: np.ndarray  #: H×W×3 uint8 (gray images replicated to three channels)
    mode: ColorMode
    alpha: np.ndarray | None = None  #: H×W uint8 where ``mode`` has alpha

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]


def open_image(path: str | Path) -> Image.Image:
    """Open an image file fully (EXIF orientation applied), with one-line errors."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"{path}: no such file")
    if path.is_dir():
        raise InputImageError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path}: empty file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputImageError(f"{path}: cannot read ({exc.strerror})") from None
    return open_image_bytes(data, str(path))


def _high_depth_to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    warnings.warn(f"{what} image converted to 8 bits per sample", stacklevel=3)
    if arr.dtype.kind == "f":
        return np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    peak = 65535.0 if arr.max(initial=0) > 255 or arr.dtype == np.uint16 else 255.0
    return np.clip(np.round(arr.astype(np.float64) * (255.0 / peak)), 0, 255).astype(np.uint8)


def _from_pil(im: Image.Image) -> PreparedImage:
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA" if (im.mode == "PA" or "transparency" in im.info) else "RGB")
    if im.mode in _GRAY_MODES:
        if im.mode in {"1", "L"}:
            gray = np.asarray(im.convert("L"))
        else:
            gray = _high_depth_to_uint8(np.asarray(im), f"{im.mode}")
        return PreparedImage(np.repeat(gray[:, :, None], 3, axis=2), ColorMode.GRAY)
    if im.mode in _GRAY_ALPHA_MODES:
        arr = np.asarray(im.convert("LA"))
        return PreparedImage(np.repeat(arr[:, :, :1], 3, axis=2), ColorMode.GRAY_ALPHA, arr[:, :, 1].copy())
    if im.mode in {"RGBA", "RGBa"}:
        arr = np.asarray(im.convert("RGBA"))
        return PreparedImage(np.ascontiguousarray(arr[:, :, :3]), ColorMode.RGBA, arr[:, :, 3].copy())
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")
        except (ValueError, OSError) as exc:
            raise InputImageError(f"unsupported image mode {im.mode!r} ({exc})") from None
    return PreparedImage(np.asarray(im).copy(), ColorMode.RGB)


def _from_array(arr: np.ndarray) -> PreparedImage:
    if arr.dtype == np.uint16 or arr.dtype.kind == "f":
        arr = _high_depth_to_uint8(arr, str(arr.dtype))
    if arr.dtype != np.uint8:
        raise InputImageError(f"array images must be uint8 (or uint16/float in [0,1]), got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return PreparedImage(np.repeat(arr[:, :, None], 3, axis=2), ColorMode.GRAY)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return PreparedImage(np.ascontiguousarray(arr), ColorMode.RGB)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return PreparedImage(np.ascontiguousarray(arr[:, :, :3]), ColorMode.RGBA, arr[:, :, 3].copy())
    raise InputImageError(f"array images must be H×W, H×W×3 or H×W×4, got shape {arr.shape}")


def prepare_image(image) -> PreparedImage:
    """Accept a PIL image, a numpy array, or a path; return 8-bit RGB (+ alpha)."""
    if isinstance(image, (str, Path)):
        image = open_image(image)
    if isinstance(image, Image.Image):
        prepared = _from_pil(image)
    elif isinstance(image, np.ndarray):
        prepared = _from_array(image)
    else:
        raise InputImageError(f"cannot encode an object of type {type(image).__name__}; pass a PIL image, "
                              "a uint8 numpy array or a path")
    if prepared.width == 0 or prepared.height == 0:
        raise InputImageError("image has no pixels")
    return prepared


def finish_image(rgb: np.ndarray, mode: ColorMode, alpha: np.ndarray | None) -> Image.Image:
    """Decoded RGB (+ alpha) back to a PIL image of the original colour mode."""
    if mode in (ColorMode.GRAY, ColorMode.GRAY_ALPHA):
        gray = np.clip(np.round(rgb.astype(np.float32).mean(axis=2)), 0, 255).astype(np.uint8)
        if mode == ColorMode.GRAY:
            return Image.fromarray(gray, "L")
        return Image.fromarray(np.stack([gray, alpha], axis=2), "LA")
    if mode == ColorMode.RGBA:
        return Image.fromarray(np.concatenate([rgb, alpha[:, :, None]], axis=2), "RGBA")
    return Image.fromarray(rgb, "RGB")


def encode_alpha(alpha: np.ndarray) -> bytes:
    """Lossless alpha plane (PNG, max compression)."""
    buf = io.BytesIO()
    Image.fromarray(alpha, "L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode_alpha(data: bytes, width: int, height: int) -> np.ndarray:
    from ldcodec.errors import BitstreamError

    try:
        # Only the PNG reader is tried, and the declared size is checked before any pixel is
        # decompressed (so the plane costs at most width × height bytes).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
                if im.format != "PNG" or im.mode != "L" or im.size != (width, height):
                    raise BitstreamError("corrupt stream: alpha plane has the wrong format or size")
                return np.asarray(im).copy()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        # DecompressionBombError: a PNG header declaring > 179 Mpixel (fuzzing finding, see docs/robustness.md)
        raise BitstreamError("corrupt stream: alpha plane does not decode") from None


def open_image_bytes(data: bytes, name: str = "<stdin>") -> Image.Image:
    """Like :func:`open_image` for bytes already read (stdin or a file)."""
    if not data:
        raise InputImageError(f"{name}: empty input")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except UnidentifiedImageError:
        raise InputImageError(f"{name}: not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise InputImageError(f"{name}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(f"{name}: cannot read image ({exc})") from None
