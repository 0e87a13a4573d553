"""Streams and stores this install cannot read are refused with a message naming what they need."""

from __future__ import annotations

import struct
import subprocess
import zlib

import pytest
import torch

import ldcodec
from ldcodec.bitstream import container
from ldcodec.errors import ModelMismatchError, UnsupportedVersionError
from ldcodec.store import KeyframeStore, StoreError
from ldcodec.store import format as fmt
from tests.conftest import ldcodec_executable, synthetic_image


def _with_header_byte(blob: bytes, offset: int, value: int) -> bytes:
    stream = container.parse(blob)
    head_len = 4 + 2 + 1 + len(stream.header.model_id) + container._FIXED_AFTER_ID.size
    head = bytearray(blob[:head_len])
    head[offset] = value
    return bytes(head) + struct.pack("<I", zlib.crc32(bytes(head))) + blob[head_len + 4 :]


@pytest.fixture(scope="module")
def stream(tiny_codec):
    return tiny_codec.encode(synthetic_image(16, 24), quality=0.5)


def test_newer_format_version_names_both_versions(tiny_codec, stream):
    newer = container.FORMAT_VERSION + 1
    with pytest.raises(UnsupportedVersionError) as info:
        tiny_codec.decode(_with_header_byte(stream, 4, newer))
    message = str(info.value)
    assert f"version {newer}" in message and f"reads version {container.FORMAT_VERSION}" in message
    assert "upgrade ldcodec" in message


def test_unknown_feature_flag_is_refused(tiny_codec, stream):
    with pytest.raises(UnsupportedVersionError, match="feature flags 0x1 .*upgrade ldcodec"):
        tiny_codec.decode(_with_header_byte(stream, 5, 1))


def test_same_model_id_other_weights_is_refused_naming_the_weights(tmp_path, tiny_weights, stream):
    """Decoding needs the exact weights: same id, different hash is refused, never decoded wrongly."""
    from ldcodec.codec.model import HyperpriorModel, ModelConfig
    from ldcodec.codec.weights import export_weights

    torch.manual_seed(123)
    other = export_weights(HyperpriorModel(ModelConfig(channels=16, latent_channels=24, gain_levels=4)),
                           tmp_path / "other.safetensors", model_id="tiny-test")
    codec = ldcodec.load(other)
    needed = container.parse(stream).header.weights_hash.hex()
    with pytest.raises(ModelMismatchError) as info:
        codec.decode(stream)
    assert "'tiny-test'" in str(info.value) and needed in str(info.value)


def test_unknown_model_id_is_refused_listing_the_installed_ones():
    with pytest.raises(ModelMismatchError, match=r"'no-such-model' are not installed \(available: .*hp-v1"):
        ldcodec.load("no-such-model")


def test_cli_names_the_model_a_stream_needs(tmp_path, stream, cli_env):
    path = tmp_path / "s.ldc"
    path.write_bytes(stream)
    r = subprocess.run(ldcodec_executable() + ["decode", str(path), "-o", str(tmp_path / "s.png")],
                       capture_output=True, env=cli_env, timeout=300)
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err, err
    assert "stream needs model 'tiny-test' (weights " in err, err
    assert not (tmp_path / "s.png").exists()


def test_newer_store_version_is_refused_with_upgrade_hint(tmp_path, tiny_codec):
    path = tmp_path / "s.ldks"
    with KeyframeStore(path, "w", codec=tiny_codec) as store:
        store.append(synthetic_image(8, 8))
    blob = bytearray(path.read_bytes())
    struct.pack_into("<H", blob, 8, fmt.FILE_VERSION + 1)
    struct.pack_into("<I", blob, 28, zlib.crc32(bytes(blob[:28])))
    path.write_bytes(bytes(blob))
    with pytest.raises(StoreError, match=rf"store format version {fmt.FILE_VERSION + 1} is not supported "
                                         rf"\(this ldcodec reads version {fmt.FILE_VERSION}\); upgrade ldcodec"):
        KeyframeStore(path)
