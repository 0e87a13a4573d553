"""Streams decode with the installed model they name, whatever the default model is."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import ldcodec
from ldcodec.codec.stream_models import StreamCodecs, stream_model_id

OLD, NEW = "tiny-test", "tiny-checkerboard"  # the model ids inside the two tiny weights files


@pytest.fixture
def two_models(tmp_path, monkeypatch, tiny_weights, tiny_checkerboard_weights):
    """A weights folder with two installed models; the default is NEW."""
    from ldcodec.codec import weights

    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(tiny_weights, folder / f"{OLD}.safetensors")
    shutil.copy(tiny_checkerboard_weights, folder / f"{NEW}.safetensors")
    monkeypatch.setattr(weights, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(weights, "DEFAULT_MODEL_ID", NEW)
    return folder


def test_each_stream_gets_the_model_it_names(two_models, image_factory):
    image = image_factory(48, 64)
    old_blob = ldcodec.load(OLD).encode(image, quality=0.5)
    new_blob = ldcodec.load(NEW).encode(image, quality=0.5)
    assert stream_model_id(old_blob) == OLD and stream_model_id(b"junk") is None
    loads = []
    codecs = StreamCodecs(lambda m: loads.append(m) or ldcodec.load(m))
    for blob in (old_blob, new_blob, old_blob):
        assert np.asarray(codecs.for_stream(blob).decode(blob)).shape == image.shape
    assert loads == [OLD, NEW]  # each model loaded once
    assert codecs.model_for(b"not a stream") == NEW  # unknown -> the default, whose decode explains


SCRIPT = """
import pathlib, sys
from ldcodec.codec import weights
weights.WEIGHTS_DIR = pathlib.Path(sys.argv[1])
weights.DEFAULT_MODEL_ID = sys.argv[2]
from ldcodec.cli.main import cli
sys.argv = ["ldcodec"] + sys.argv[3:]
cli()
"""


def test_cli_decode_picks_the_streams_model(two_models, image_factory, tmp_path, cli_env):
    """Without --model, `ldcodec decode` uses the installed model the stream names, not the default."""
    image = image_factory(48, 64)
    path = tmp_path / "old.ldc"
    path.write_bytes(ldcodec.load(OLD).encode(image, quality=0.5))
    expected = np.asarray(ldcodec.load(OLD).decode(path.read_bytes()))
    out = tmp_path / "out.png"
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(two_models), NEW, "decode", str(path), "-o", str(out)],
                         capture_output=True, text=True, env=cli_env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert np.array_equal(np.asarray(Image.open(out)), expected)
    store = tmp_path / "s.ldks"
    with ldcodec.KeyframeStore(store, "w", codec=ldcodec.load(OLD)) as s:
        s.append(image)
    with ldcodec.KeyframeStore(store) as s:  # no codec given: the frame's model
        assert np.array_equal(s[0], expected)


def test_batch_decode_picks_each_streams_model(two_models, image_factory, tmp_path):
    from ldcodec.batch import BatchItem, CodecOptions, run_batch

    image = image_factory(48, 64)
    items = []
    for model in (OLD, NEW):
        source = tmp_path / f"{model}.ldc"
        source.write_bytes(ldcodec.load(model).encode(image, quality=0.5))
        items.append(BatchItem(source, tmp_path / f"{model}.png"))
    report = run_batch("decode", items, CodecOptions(), jobs=1, progress=False, log=lambda m: None)
    assert not report.failed, [r.error for r in report.failed]
    for model, item in zip((OLD, NEW), items):
        expected = np.asarray(ldcodec.load(model).decode(item.source.read_bytes()))
        assert np.array_equal(np.asarray(Image.open(item.target)), expected)
