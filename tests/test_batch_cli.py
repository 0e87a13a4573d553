"""Batch mode of ``ldcodec encode``/``decode``: folders and several files, --jobs workers, per-file failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from ldcodec.batch import BatchError, expand_inputs, plan_outputs
from tests.conftest import synthetic_image
from tests.test_cli import run

SIZES = {"a": (20, 30), "b": (33, 17), "c": (16, 16)}  # name: (height, width)


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        Image.fromarray(synthetic_image(h, w, seed=i)).save(folder / f"{name}.png")
    (folder / "broken.png").write_text("not an image")  # an image extension, but not an image
    (folder / "notes.txt").write_text("skipped: no image extension")
    (folder / "sub").mkdir()  # not recursive
    Image.fromarray(synthetic_image(8, 8)).save(folder / "sub" / "deep.png")
    return folder


def error_lines(result) -> list[str]:
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("ldcodec: error:")]


def test_batch_encode_folder_with_jobs_then_decode(photo_dir, tmp_path, cli_env, tiny_weights):
    streams, decoded = tmp_path / "streams", tmp_path / "decoded"
    r = run(["encode", photo_dir, "-o", streams, "--jobs", "2", "--quality", "0.4", "--model", tiny_weights], cli_env)
    assert r.returncode == 2, r.stderr.decode()  # one file failed...
    errors = error_lines(r)
    assert len(errors) == 1 and "broken.png" in errors[0], r.stderr.decode()
    assert sorted(p.name for p in streams.iterdir()) == ["a.ldc", "b.ldc", "c.ldc"]  # ...the others completed
    summary = r.stderr.decode().strip().splitlines()[-1]
    assert "3 of 4" in summary and "2 jobs" in summary and "notes.txt" in summary, summary
    assert not list(streams.glob(".*.part"))

    r = run(["decode", streams, "-o", decoded, "--model", tiny_weights], cli_env)
    assert r.returncode == 0, r.stderr.decode()
    for name, (h, w) in SIZES.items():
        with Image.open(decoded / f"{name}.png") as im:
            assert im.size == (w, h)


def test_batch_several_files_format_and_safety(photo_dir, tmp_path, cli_env, tiny_weights):
    out = tmp_path / "out"
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(synthetic_image(10, 12)).save(other / "a.png")  # same stem as photos/a.png
    args = [photo_dir / "a.png", photo_dir / "c.png", other / "a.png", tmp_path / "missing.png"]
    r = run(["encode", *args, "-o", out, "--model", tiny_weights], cli_env)
    assert r.returncode == 2
    errors = error_lines(r)
    assert len(errors) == 2, errors
    assert any("already writes" in e and str(other / "a.png") in e for e in errors), errors
    assert any("missing.png" in e and "no such file" in e for e in errors), errors
    assert sorted(p.name for p in out.iterdir()) == ["a.ldc", "c.ldc"]

    # An output may never replace an input: encoding a.ldc (stem "a") into its own folder.
    before = (out / "a.ldc").read_bytes()
    r = run(["encode", photo_dir / "a.png", out / "a.ldc", "-o", out, "--model", tiny_weights], cli_env)
    assert r.returncode == 2 and (out / "a.ldc").read_bytes() == before
    assert all("overwrite the input" in e for e in error_lines(r))

    r = run(["decode", out / "a.ldc", out / "c.ldc", "-o", tmp_path / "bmp", "--format", "bmp",
             "--model", tiny_weights], cli_env)
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in (tmp_path / "bmp").iterdir()) == ["a.bmp", "c.bmp"]


def test_expand_and_plan(photo_dir, tmp_path):
    files, skipped = expand_inputs([photo_dir, photo_dir / "a.png"], "encode")
    assert [f.name for f in files] == ["a.png", "b.png", "broken.png", "c.png"]  # sorted, once each, no sub/
    assert [f.name for f in skipped] == ["notes.txt"]
    items, refused = plan_outputs(files + [photo_dir / "sub" / "a.png"], tmp_path / "o", ".ldc")
    assert [i.target.name for i in items] == ["a.ldc", "b.ldc", "broken.ldc", "c.ldc"]
    assert len(refused) == 1 and "already writes" in refused[0].error
    assert expand_inputs([photo_dir], "decode") == ([], [p for p in sorted(photo_dir.iterdir()) if p.is_file()])
    with pytest.raises(BatchError):
        expand_inputs(["-", photo_dir], "encode")


def invoke(args):
    """In-process, for argument checks and single small files (no interpreter and torch start-up per call)."""
    from click.testing import CliRunner

    from ldcodec.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_batch_argument_errors(photo_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        (["encode", photo_dir / "a.png", photo_dir / "c.png", "-o", photo_dir / "a.png"], "not a folder"),
        (["encode", "-", photo_dir / "c.png", "-o", tmp_path / "out"], "stdin"),
        (["encode", tmp_path / "empty", "-o", tmp_path / "out"], "no image files"),
        (["decode", photo_dir, "-o", tmp_path / "out", "--format", "nope"], "unknown image format"),
    ]
    for args, needle in cases:
        r = invoke(args)
        assert r.exit_code == 2, (args, r.output)
        lines = [line for line in r.stderr.splitlines() if line.startswith("ldcodec: error:")]
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
    assert not (tmp_path / "out").exists()  # nothing created when the batch cannot start
    assert Image.open(photo_dir / "a.png").size == (30, 20)  # the would-be output folder was an input: untouched


def test_device_option(photo_dir, tmp_path, tiny_weights):
    import torch

    ldc = tmp_path / "a.ldc"
    r = invoke(["encode", photo_dir / "a.png", "-o", ldc, "--device", "cpu", "--model", tiny_weights])
    assert r.exit_code == 0, r.stderr
    r = invoke(["decode", ldc, "-o", tmp_path / "a.png", "--device", "auto", "--model", tiny_weights])
    assert r.exit_code == 0, r.stderr
    r = invoke(["decode", tmp_path, "-o", tmp_path / "d", "--steps", "4", "--model", tiny_weights])
    lines = [line for line in r.stderr.splitlines() if line.startswith("ldcodec: error:")]
    assert r.exit_code == 2 and len(lines) == 1 and "no diffusion decoder" in lines[0], r.stderr
    if not torch.cuda.is_available():
        r = invoke(["decode", ldc, "-o", tmp_path / "b.png", "--device", "cuda", "--model", tiny_weights])
        assert r.exit_code == 2 and "CUDA is not available" in r.stderr
