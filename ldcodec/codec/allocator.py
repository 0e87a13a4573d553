"""Keep large tensor buffers in the heap instead of mapping fresh pages for each one.

glibc serves every allocation above its mmap threshold (at most 32 MB by default)
with a new ``mmap`` and returns it with ``munmap`` when freed, so each such buffer is
zero-filled page by page on first touch. A 768×512 image's full-resolution
intermediates (96 × 256 × 384 floats, 38 MB) are just over that line: on the 2-core
AMD machine one GDN there took 108 ms, of which about 70 ms were page faults
(39 ms with the buffers kept; ``docs/performance.md``, session 8). Raising the
threshold (and the trim threshold with it) lets freed blocks be reused.

The threshold is 64 MB, not more: with 1 GB the heap kept so many freed tile-sized
blocks that a 4096×4096 encode and decode peaked at 2,987 MB resident (2,243 MB without
the setting, 2,361 MB with 64 MB), too close to the 3 GB bound. Freed memory up to twice
the threshold may stay mapped to the process for reuse. Set ``LDCODEC_KEEP_ALLOCATIONS=0``
to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (and are reused) rather than a fresh mmap (see above).
DEFAULT_THRESHOLD = 64 << 20

_applied: bool | None = None


def keep_large_allocations(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they are in effect.

    A no-op (False) off Linux/glibc (``mallopt`` missing, e.g. musl or macOS) or with
    ``LDCODEC_KEEP_ALLOCATIONS=0``. Process-wide: it changes how the host process's
    malloc behaves, which is why it can be switched off.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("LDCODEC_KEEP_ALLOCATIONS", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    threshold = min(int(threshold), 2**30)  # the trim threshold (twice it) must fit a C int
    _applied = mallopt(_M_MMAP_THRESHOLD, threshold) == 1 and mallopt(_M_TRIM_THRESHOLD, 2 * threshold) == 1
    return _applied
