"""What a store accepts as a frame, and how a decoded frame is given back.

Three kinds, recorded per frame so that a frame comes back as what went in:

* ``"pil"``: a PIL image. Comes back as a PIL image (mode L, LA, RGB or RGBA:
  palette and high-depth modes are converted the way ``codec.encode`` does).
* ``"uint8"``: a uint8 array H×W, H×W×1, H×W×3 or H×W×4. Comes back as a uint8
  array of the same shape.
* ``"float"``: a float16/32/64 array H×W, H×W×1 or H×W×3 (e.g. a simulation
  field). Mapped to 8 bits with the frame's own range,
  ``u = round((x - min) / (max - min) · 255)``, min and max kept exactly (float64)
  in the record; comes back as an array of the same shape and dtype with
  ``x = min + u / 255 · (max - min)`` clipped to [min, max]. A constant field
  comes back exactly. NaN and ±inf are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ldcodec.store.errors import InvalidFrameError

_UINT8_SHAPES = "H×W, H×W×1, H×W×3 or H×W×4"
_FLOAT_SHAPES = "H×W, H×W×1 or H×W×3"


@dataclass
class PreparedFrame:
    codec_input: object  #: what is handed to ``codec.encode``
    description: dict  #: the JSON fields that let :func:`restore_frame` undo the mapping
    width: int
    height: int


def prepare_frame(frame) -> PreparedFrame:
    if isinstance(frame, Image.Image):
        w, h = frame.size
        return PreparedFrame(frame, {"kind": "pil", "mode": frame.mode}, w, h)
    if not isinstance(frame, np.ndarray):
        raise InvalidFrameError(f"cannot store an object of type {type(frame).__name__}; pass a PIL image, "
                                "a uint8 array or a float array")
    shape = list(frame.shape)
    if frame.ndim not in (2, 3) or 0 in shape:
        raise InvalidFrameError(f"frame arrays must be H×W or H×W×C with pixels, got shape {tuple(shape)}")
    h, w = shape[0], shape[1]
    if frame.dtype == np.uint8:
        if frame.ndim == 3 and shape[2] not in (1, 3, 4):
            raise InvalidFrameError(f"uint8 frames must be {_UINT8_SHAPES}, got shape {tuple(shape)}")
        return PreparedFrame(frame, {"kind": "uint8", "dtype": "uint8", "shape": shape}, w, h)
    if frame.dtype.kind == "f":
        if frame.ndim == 3 and shape[2] not in (1, 3):
            raise InvalidFrameError(f"float frames must be {_FLOAT_SHAPES}, got shape {tuple(shape)}")
        x = frame.astype(np.float64)
        finite = np.isfinite(x)
        if not finite.all():
            bad = int(x.size - np.count_nonzero(finite))
            raise InvalidFrameError(f"float frame has {bad} NaN or infinite value(s); only finite fields can be "
                                    "stored (replace them, e.g. with np.nan_to_num, or mask them)")
        lo, hi = float(x.min()), float(x.max())
        if not math.isfinite(hi - lo):
            raise InvalidFrameError(f"float frame range [{lo!r}, {hi!r}] is too wide to represent")
        if hi > lo:
            u8 = np.clip(np.rint((x - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        else:
            u8 = np.zeros(x.shape, np.uint8)
        desc = {"kind": "float", "dtype": frame.dtype.name, "shape": shape, "range": [lo, hi]}
        return PreparedFrame(u8, desc, w, h)
    raise InvalidFrameError(f"frame arrays must be uint8 or floating point, got {frame.dtype}; convert "
                            "integer fields with .astype(np.float32) to keep their value range")


def restore_frame(decoded: Image.Image, description: dict):
    """Turn ``codec.decode(blob)`` back into what was stored, following the record's description."""
    kind = description.get("kind")
    if kind == "pil":
        return decoded
    if kind not in ("uint8", "float"):
        raise ValueError(f"unknown frame kind {kind!r}")
    shape = tuple(int(n) for n in description["shape"])
    u8 = np.array(decoded)
    if u8.size != math.prod(shape):
        raise ValueError(f"decoded frame has shape {u8.shape}, record says {shape}")
    u8 = u8.reshape(shape)
    if kind == "uint8":
        return u8
    lo, hi = (float(v) for v in description["range"])
    dtype = np.dtype(description["dtype"])
    if dtype.kind != "f":  # what prepare_frame records; anything else would convert silently (to object, bytes...)
        raise ValueError(f"float frame with dtype {dtype}")
    if hi > lo:
        x = np.clip(lo + u8.astype(np.float64) * ((hi - lo) / 255.0), lo, hi)
    else:
        x = np.full(shape, lo, np.float64)
    return x.astype(dtype)
