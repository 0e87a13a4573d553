"""Keyframe storage: many compressed frames in one append-only, crash-safe file (docs/keyframes.md)."""

from ldcodec.store.errors import (
    CorruptFrameError,
    FrameIndexError,
    InvalidFrameError,
    StoreError,
    StoreLockedError,
    StoreRecoveryWarning,
)
from ldcodec.store.keyframes import FrameInfo, KeyframeStore, RecoveryReport, StoreInfo

__all__ = [
    "CorruptFrameError", "FrameIndexError", "FrameInfo", "InvalidFrameError", "KeyframeStore", "RecoveryReport",
    "StoreError", "StoreInfo", "StoreLockedError", "StoreRecoveryWarning",
]
