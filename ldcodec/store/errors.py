"""Errors and warnings of the keyframe store."""

from __future__ import annotations

from ldcodec.errors import LdcodecError


class StoreError(LdcodecError):
    """A keyframe store cannot be opened, read or written."""


class StoreLockedError(StoreError):
    """Another writer holds the store open in mode "a" or "w"."""


class CorruptFrameError(StoreError):
    """A frame's record fails its checks (CRC, header, index). ``index`` names the frame."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


class FrameIndexError(StoreError, IndexError):
    """A frame index out of range (also an :class:`IndexError`)."""


class InvalidFrameError(StoreError):
    """The object given to ``append`` cannot be stored (type, shape, dtype, NaN/inf)."""


class StoreRecoveryWarning(UserWarning):
    """Opening a store dropped an interrupted append or skipped corrupt bytes."""
