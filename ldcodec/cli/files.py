"""Reading inputs and writing outputs safely: ``-`` for stdin/stdout, atomic replace.

An output file appears only when complete (written to a temporary file in the
same folder, fsynced, then renamed), so a failed run never leaves half a file
and never clobbers what the user had. Input is never overwritten.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ldcodec.errors import LdcodecError


class OutputError(LdcodecError):
    """The output cannot be written."""


def read_input_bytes(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    p = Path(path)
    if not p.exists():
        raise LdcodecError(f"{path}: no such file")
    if p.is_dir():
        raise LdcodecError(f"{path}: is a directory")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise LdcodecError(f"{path}: cannot read ({exc.strerror})") from None


def check_distinct(input_path: str, output_path: str) -> None:
    if input_path == "-" or output_path == "-":
        return
    out = Path(output_path)
    if out.exists() and Path(input_path).exists() and os.path.samefile(input_path, output_path):
        raise OutputError(f"refusing to overwrite the input file {input_path}")


def write_output(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (or to stdout for ``-``).

    A regular file (new or existing) is replaced only by a complete, fsynced copy; on any
    failure (disk full, permission denied, ...) the temporary file is removed, an existing
    file is left as it was, and :class:`OutputError` says why. Devices and pipes
    (``/dev/null``, a FIFO) are written in place: renaming over them would replace the
    device node itself.
    """
    if path == "-":
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except OSError as exc:
            raise OutputError(f"<stdout>: cannot write ({exc.strerror or exc})") from None
        return
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{path}: is a directory")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    existed = target.exists()
    if existed and not target.is_file():
        _write_in_place(path, data)
        return
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        kept = "the existing file is unchanged" if existed else "no file was written"
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc}); {kept}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _write_in_place(path: str, data: bytes) -> None:
    """Write to an existing non-regular file (character device, FIFO) without renaming."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None


def image_bytes(image, output_path: str, fmt: str | None = None) -> bytes:
    """``image`` (PIL) saved in memory, in ``fmt`` or the format of ``output_path``'s extension
    (PNG for ``-`` or an unknown extension)."""
    import io

    from PIL import Image

    if fmt is None:
        fmt = "PNG"
        if output_path != "-":
            ext = output_path.rsplit(".", 1)[-1].lower() if "." in output_path else ""
            fmt = Image.registered_extensions().get(f".{ext}", "PNG")
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt)
    except (OSError, ValueError, KeyError) as exc:
        raise OutputError(f"{output_path}: cannot save a {image.mode} image as {fmt} ({exc})") from None
    return buf.getvalue()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
