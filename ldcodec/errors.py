"""Exceptions raised by ldcodec.

Every failure a user can cause (bad input, corrupt stream, missing weights)
is an :class:`LdcodecError`, so callers and the CLI can catch one type and
report a one-line message instead of a traceback.
"""

from __future__ import annotations


class LdcodecError(Exception):
    """Base class of every error ldcodec raises on purpose."""


class InputImageError(LdcodecError):
    """The input image cannot be read or is not supported."""


class BitstreamError(LdcodecError):
    """A ``.ldc`` stream is malformed: bad magic, truncated, CRC mismatch..."""


class UnsupportedVersionError(BitstreamError):
    """The stream was written by a newer (or unknown) format version."""


class ModelMismatchError(LdcodecError):
    """The stream needs weights that this installation does not have."""


class LimitExceededError(LdcodecError):
    """A declared size exceeds the configured safety limit."""


class NoDiffusionDecoderError(LdcodecError):
    """Diffusion steps were requested but the model has no diffusion decoder."""
