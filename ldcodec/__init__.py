"""ldcodec: a learned image codec built on latent diffusion.

    >>> import ldcodec
    >>> codec = ldcodec.load()                  # shipped weights, no network
    >>> blob = codec.encode(image, quality=0.3) # PIL image or uint8 array
    >>> image = codec.decode(blob)
"""

from ldcodec.errors import (
    BitstreamError,
    InputImageError,
    LdcodecError,
    LimitExceededError,
    ModelMismatchError,
    NoDiffusionDecoderError,
    UnsupportedVersionError,
)

from ldcodec.store import CorruptFrameError, KeyframeStore, StoreError  # noqa: E402

__version__ = "0.1.0"


def load(*args, **kwargs):
    """Load the codec (see :func:`ldcodec.codec.image_codec.load`); imports torch lazily."""
    from ldcodec.codec.image_codec import load as _load

    return _load(*args, **kwargs)


def stream_info(blob: bytes):
    """Describe a ``.ldc`` stream without decoding it."""
    from ldcodec.codec.image_codec import stream_info as _info

    return _info(blob)


__all__ = [
    "BitstreamError", "InputImageError", "LdcodecError", "LimitExceededError", "ModelMismatchError",
    "NoDiffusionDecoderError", "UnsupportedVersionError", "load", "stream_info", "__version__",
    "CorruptFrameError", "KeyframeStore", "StoreError",
]
