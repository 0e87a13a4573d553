"""Which arithmetic the transforms use: bf16 autocast only where the hardware has it.

bf16 autocast halves the transforms' time on CPUs with native bf16 (AVX512-BF16 or
AMX, e.g. Intel Sapphire Rapids) and on CUDA, but is about 25x *slower* on CPUs
without it (oneDNN falls back to reference kernels). ``"auto"`` therefore picks
bf16 only where it is native. The entropy parameters never use it
(:mod:`ldcodec.codec.entropy_parameters`), so streams decode the same either way.
"""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """True on CPUs whose flags include ``avx512_bf16`` or ``amx_bf16`` (Linux /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA or a CPU with native bf16, else ``"fp32"``; others unchanged.

    ``device``: a ``torch.device`` or its name. (torch is imported here, not at module level, so
    the command-line options can take :data:`PRECISIONS` without loading torch.)
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cuda" or cpu_has_native_bf16() else "fp32"
