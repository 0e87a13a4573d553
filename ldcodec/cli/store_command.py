"""``ldcodec store``: add frames to a keyframe store, list it, get one frame back.

Thin wrapper over :class:`ldcodec.store.KeyframeStore` (docs/keyframes.md).
Failures are :class:`ldcodec.LdcodecError` subclasses; the top-level ``ldcodec``
group prints them as one line and exits with 2.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import click

from ldcodec.cli.files import OutputError, write_output
from ldcodec.store.errors import CorruptFrameError, StoreError

_model_option = click.option("--model", default=None, help="Model id or .safetensors path [shipped default].")


def _load_codec(model):
    import ldcodec

    return ldcodec.load(model) if model else ldcodec.load()


@click.group("store")
def store_group():
    """Keyframe stores: many compressed frames in one append-only, crash-safe file.

    \b
      ldcodec store add run.ldks frame-000.png frame-001.png --quality 0.5
      ldcodec store add run.ldks field-002.npy           (float arrays keep their value range)
      ldcodec store ls run.ldks
      ldcodec store get run.ldks -1 -o last.png           (negative index: from the end)
    """


def _read_frame(path: str):
    """An image file (anything Pillow reads), a .npy array, or an .ldc stream (stored as is)."""
    from ldcodec.codec.image_io import open_image

    p = Path(path)
    if p.suffix.lower() == ".npy":
        import numpy as np

        try:
            return "array", np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: cannot read the .npy array ({exc})") from None
    if p.suffix.lower() == ".ldc":
        try:
            return "stream", p.read_bytes()
        except OSError as exc:
            raise StoreError(f"{path}: cannot read ({exc.strerror})") from None
    return "image", open_image(p)


@store_group.command("add")
@click.argument("store_path", metavar="STORE")
@click.argument("images", metavar="IMG...", nargs=-1, required=True)
@click.option("-q", "--quality", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Quality in [0, 1] for the frames added (.ldc inputs keep theirs).")
@click.option("--meta", "meta_json", default=None, metavar="JSON",
              help='JSON object stored with each frame added, besides {"source": file name}.')
@_model_option
def add_command(store_path, images, quality, meta_json, model):
    """Append IMG... (images, .npy arrays or .ldc streams) to STORE, creating it if missing.

    Each frame is durable when its line is printed; a failure leaves the frames before it intact.
    """
    from ldcodec.store import KeyframeStore

    extra = {}
    if meta_json is not None:
        try:
            extra = json.loads(meta_json)
        except ValueError as exc:
            raise StoreError(f"--meta is not valid JSON ({exc})") from None
        if not isinstance(extra, dict):
            raise StoreError("--meta must be a JSON object")
    for img in images:  # fail before touching the store if an input is missing
        if not Path(img).is_file():
            raise StoreError(f"{img}: no such file")
    with KeyframeStore(store_path, "a", quality=quality) as store:
        store.codec = _load_codec(model)
        for img in images:
            kind, frame = _read_frame(img)
            meta = {"source": Path(img).name, **extra}
            index = store.append_stream(frame, meta) if kind == "stream" else store.append(frame, meta)
            fi = store.frame_info(index)
            click.echo(f"{store_path}: frame {index} <- {img}: {fi.width}x{fi.height} {fi.kind}, "
                       f"{fi.bytes} bytes, {fi.bpp:.4f} bpp", err=True)


@store_group.command("ls")
@click.argument("store_path", metavar="STORE")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (store metadata, info, frames).")
@click.option("--verify", is_flag=True, help="Also check every frame's CRCs (reads the whole file).")
def ls_command(store_path, as_json, verify):
    """List STORE: one line per frame (index, size, kind, bytes, bpp, meta).

    Exits with 2 after the listing if a frame is corrupt.
    """
    from ldcodec.store import KeyframeStore

    with KeyframeStore(store_path, "r") as store:
        corrupt = dict.fromkeys(store.verify()) if verify else {}
        frames = []
        for i in range(len(store)):
            try:
                frames.append(store.frame_info(i).to_dict())
                if i in corrupt:
                    frames[-1]["corrupt"] = "CRC mismatch in its stream"
            except CorruptFrameError as exc:
                frames.append({"index": i, "corrupt": str(exc)})
                corrupt[i] = None
        info = store.info()
        metadata = store.metadata
        recovery = store.recovery
    if as_json:
        click.echo(json.dumps({"metadata": metadata, "info": info.to_dict(),
                               "recovery": recovery.to_dict() if recovery else None, "frames": frames}, indent=2))
    else:
        for f in frames:
            if "width" not in f:
                click.echo(f"{f['index']:>6}  CORRUPT  {f['corrupt']}")
                continue
            flag = "  CORRUPT" if "corrupt" in f else ""
            click.echo(f"{f['index']:>6}  {f['width']}x{f['height']}  {f['kind']:<5}  {f['bytes']:>8} B  "
                       f"{f['bpp']:.4f} bpp  {json.dumps(f['meta'], ensure_ascii=False)}{flag}")
        click.echo(f"{store_path}: {info.frames} frame(s), {info.file_bytes} bytes, mean {info.mean_bpp:.4f} bpp; "
                   f"metadata {json.dumps(metadata, ensure_ascii=False)}", err=True)
    if corrupt:
        raise CorruptFrameError(f"{store_path}: {len(corrupt)} corrupt frame(s): "
                                f"{', '.join(str(i) for i in sorted(corrupt))}", min(corrupt))


@store_group.command("get", context_settings={"ignore_unknown_options": True})
@click.argument("store_path", metavar="STORE")
@click.argument("index", metavar="I", type=int)
@click.option("-o", "--output", "output_path", required=True, metavar="OUT",
              help="Image file (format from the extension, PNG for -), or .npy for arrays and float fields.")
@_model_option
def get_command(store_path, index, output_path, model):
    """Decode frame I of STORE (negative: from the end) and write it to OUT atomically."""
    from ldcodec.store import KeyframeStore

    with KeyframeStore(store_path, "r") as store:
        store.frame_info(index)  # a bad index or a corrupt record fails before the weights load
        if model:  # else the installed model the frame's stream names
            store.codec = _load_codec(model)
        frame = store[index]
        kind = store.frame_info(index).kind
    write_output(output_path, _frame_bytes(frame, kind, output_path, index))


def _frame_bytes(frame, kind: str, output_path: str, index: int) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    if output_path != "-" and output_path.lower().endswith(".npy"):
        np.save(buf, np.asarray(frame), allow_pickle=False)
        return buf.getvalue()
    if kind == "float":
        raise StoreError(f"frame {index} is a float field: write it to a .npy file to keep its values")
    if isinstance(frame, np.ndarray):
        frame = Image.fromarray(frame[:, :, 0] if frame.ndim == 3 and frame.shape[2] == 1 else frame)
    fmt = "PNG"
    if output_path != "-":
        ext = Path(output_path).suffix.lower()
        fmt = Image.registered_extensions().get(ext, "PNG")
    try:
        frame.save(buf, format=fmt)
    except (OSError, ValueError, KeyError) as exc:
        raise OutputError(f"{output_path}: cannot save a {frame.mode} image as {fmt} ({exc})") from None
    return buf.getvalue()

