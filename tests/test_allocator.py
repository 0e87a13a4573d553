"""The allocator setting that keeps large tensor buffers in the heap (``ldcodec.codec.allocator``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = (
    "import ldcodec.codec.allocator as a, sys; "
    "first = a.keep_large_allocations(); second = a.keep_large_allocations(); "
    "print(first, second)"
)


def _probe(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LDCODEC_KEEP_ALLOCATIONS"}
    if env_value is not None:
        env["LDCODEC_KEEP_ALLOCATIONS"] = env_value
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_the_allocator_setting_can_be_switched_off():
    assert _probe("0") == ["False", "False"]


def test_the_allocator_setting_applies_once_on_glibc():
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    expected = str(on_glibc)
    assert _probe(None) == [expected, expected], "mallopt should be accepted on Linux/glibc, refused elsewhere"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_codec_construction_applies_it(tiny_weights):
    code = ("import ldcodec, ldcodec.codec.allocator as a; "
            f"ldcodec.load({str(tiny_weights)!r}); print(a._applied)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == str(platform.libc_ver()[0] == "glibc")
