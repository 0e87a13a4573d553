"""Outputs: complete or not at all, never over the input, clear messages on disk-full and permission errors.

Tests may run as root, where chmod does not make a folder unwritable, so failures are
injected (ENOSPC / EACCES from fsync, write, mkstemp, rename) or come from /dev/full.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from ldcodec.cli.files import OutputError, check_distinct, write_output
from tests.conftest import ldcodec_executable, synthetic_image


def _no_temp_files(folder: Path) -> bool:
    return not list(folder.glob(".*.part"))


def _oserror(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


class _FullFile:
    """Stands in for the temporary file: every write fails with ENOSPC."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass

    def fileno(self):
        return self.fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


@pytest.mark.parametrize("failing", ["write", "fsync", "rename"])
@pytest.mark.parametrize("existing", [True, False])
def test_disk_full_leaves_no_temp_file_and_the_old_output_untouched(tmp_path, monkeypatch, failing, existing):
    out = tmp_path / "out.ldc"
    if existing:
        out.write_bytes(b"precious")
    if failing == "write":
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FullFile(fd))
    elif failing == "fsync":
        monkeypatch.setattr(os, "fsync", _oserror(errno.ENOSPC))
    else:
        monkeypatch.setattr(os, "replace", _oserror(errno.ENOSPC))
    kept = "the existing file is unchanged" if existing else "no file was written"
    with pytest.raises(OutputError, match=rf"out\.ldc: cannot write \(No space left on device\); {kept}"):
        write_output(str(out), b"new" * 10_000)
    monkeypatch.undo()
    assert _no_temp_files(tmp_path)
    if existing:
        assert out.read_bytes() == b"precious"
    else:
        assert not out.exists()


def test_permission_denied_is_a_clear_error(tmp_path, monkeypatch):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    monkeypatch.setattr(tempfile, "mkstemp", _oserror(errno.EACCES))
    expected = r"out\.png: cannot write \(Permission denied\); the existing file is unchanged"
    with pytest.raises(OutputError, match=expected):
        write_output(str(out), b"data")
    monkeypatch.undo()
    assert out.read_bytes() == b"precious" and _no_temp_files(tmp_path)


def test_success_replaces_the_output_with_the_complete_file(tmp_path):
    out = tmp_path / "out.ldc"
    out.write_bytes(b"old")
    write_output(str(out), b"new contents")
    assert out.read_bytes() == b"new contents" and _no_temp_files(tmp_path)


def test_missing_folder_and_directory_targets(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_output(str(tmp_path / "nope" / "x.ldc"), b"x")
    with pytest.raises(OutputError, match="is a directory"):
        write_output(str(tmp_path), b"x")


def _char_device(path: str) -> bool:
    return os.path.exists(path) and stat.S_ISCHR(os.stat(path).st_mode)


@pytest.mark.skipif(not _char_device("/dev/full"), reason="needs /dev/full")
def test_dev_full_gives_disk_full_and_stays_a_device():
    with pytest.raises(OutputError, match=r"/dev/full: cannot write \(No space left on device\)"):
        write_output("/dev/full", b"x" * 100_000)
    assert _char_device("/dev/full")  # written in place, never renamed over
    assert not list(Path("/dev").glob(".full.*.part"))


@pytest.mark.skipif(not _char_device("/dev/null"), reason="needs /dev/null")
def test_dev_null_is_written_in_place_not_replaced():
    write_output("/dev/null", b"discarded")
    assert _char_device("/dev/null")


def test_stdout_errors_are_output_errors(monkeypatch):
    import io
    import sys

    class Closed(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(Closed())))
    with pytest.raises(OutputError, match=r"<stdout>: cannot write \(Broken pipe\)"):
        write_output("-", b"x" * 100_000)


def test_the_input_is_never_the_output(tmp_path):
    src = tmp_path / "in.ldc"
    src.write_bytes(b"input")
    link = tmp_path / "link.ldc"
    link.symlink_to(src)
    hard = tmp_path / "hard.ldc"
    os.link(src, hard)
    for same in (src, link, hard, tmp_path / "." / "in.ldc"):
        with pytest.raises(OutputError, match="refusing to overwrite the input"):
            check_distinct(str(src), str(same))
    check_distinct(str(src), str(tmp_path / "other.ldc"))  # a different file is fine
    assert src.read_bytes() == b"input"


@pytest.mark.skipif(not _char_device("/dev/full"), reason="needs /dev/full")
def test_cli_reports_a_full_disk_in_one_line(tmp_path, tiny_weights, cli_env):
    from PIL import Image

    png = tmp_path / "in.png"
    Image.fromarray(synthetic_image(20, 24)).save(png)
    r = subprocess.run(ldcodec_executable() + ["encode", str(png), "-o", "/dev/full", "--model", str(tiny_weights)],
                       capture_output=True, env=cli_env, timeout=300)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "Traceback" not in err
    assert "ldcodec: error: /dev/full: cannot write (No space left on device)" in err
