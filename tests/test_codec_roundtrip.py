"""End-to-end encode/decode through the Python API: sizes, modes, rates, errors."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

import ldcodec
from ldcodec.errors import InputImageError, ModelMismatchError, NoDiffusionDecoderError


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (5, 3), (17, 33), (64, 64), (65, 130), (31, 200)])
def test_odd_sizes_come_back_exactly(tiny_codec, image_factory, size):
    h, w = size
    img = image_factory(h, w)
    out = tiny_codec.decode(tiny_codec.encode(img, quality=0.5))
    assert out.mode == "RGB" and out.size == (w, h)


def test_two_decodes_give_identical_pixels(tiny_codec, image_factory):
    blob = tiny_codec.encode(image_factory(40, 56), quality=0.7)
    a = np.asarray(tiny_codec.decode(blob))
    b = np.asarray(tiny_codec.decode(blob))
    assert np.array_equal(a, b)


def test_encoding_is_deterministic(tiny_codec, image_factory):
    img = image_factory(40, 56)
    assert tiny_codec.encode(img, quality=0.3) == tiny_codec.encode(img, quality=0.3)


def test_grayscale_stays_grayscale(tiny_codec, image_factory):
    gray = image_factory(20, 30, channels=1)
    for source in (gray, Image.fromarray(gray, "L")):
        out = tiny_codec.decode(tiny_codec.encode(source))
        assert out.mode == "L" and out.size == (30, 20)


def test_rgba_alpha_is_lossless(tiny_codec, image_factory):
    rgb = image_factory(23, 19)
    alpha = np.random.default_rng(3).integers(0, 256, (23, 19), dtype=np.uint8)
    out = tiny_codec.decode(tiny_codec.encode(np.dstack([rgb, alpha])))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[:, :, 3], alpha)
    la = Image.fromarray(np.dstack([rgb[:, :, 0], alpha]), "LA")
    out = tiny_codec.decode(tiny_codec.encode(la))
    assert out.mode == "LA" and np.array_equal(np.asarray(out)[:, :, 1], alpha)


def test_palette_and_transparent_palette(tiny_codec, image_factory):
    pal = Image.fromarray(image_factory(16, 24)).convert("P")
    assert tiny_codec.decode(tiny_codec.encode(pal)).mode == "RGB"
    pal.info["transparency"] = 0
    assert tiny_codec.decode(tiny_codec.encode(pal)).mode == "RGBA"


def test_16_bit_input_is_converted_with_a_warning(tiny_codec):
    arr16 = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500).astype(np.uint16)
    img = Image.fromarray(arr16)
    assert img.mode.startswith("I;16")
    with pytest.warns(UserWarning, match="8 bits"):
        blob = tiny_codec.encode(img)
    assert tiny_codec.decode(blob).mode == "L"


def test_exif_orientation_is_applied(tiny_codec, image_factory, tmp_path):
    img = Image.fromarray(image_factory(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    out = tiny_codec.decode(tiny_codec.encode(path))
    assert out.size == (20, 40)


def test_bad_inputs_raise_ldcodec_errors(tiny_codec, tmp_path):
    with pytest.raises(InputImageError, match="no such file"):
        tiny_codec.encode(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputImageError, match="empty"):
        tiny_codec.encode(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(InputImageError, match="not an image"):
        tiny_codec.encode(tmp_path / "text.png")
    with pytest.raises(InputImageError):
        tiny_codec.encode(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(InputImageError):
        tiny_codec.encode(np.zeros((4, 4, 3), dtype=np.int64))
    with pytest.raises(InputImageError):
        tiny_codec.encode(np.zeros((4, 4, 3), dtype=np.uint8), quality=1.5)
    with pytest.raises(ldcodec.LdcodecError):
        tiny_codec.encode("not a file at all.png")


def test_pixel_limit_applies_to_encoding(tiny_weights, image_factory):
    codec = ldcodec.load(tiny_weights, max_pixels=100)
    with pytest.raises(InputImageError, match="limit"):
        codec.encode(image_factory(20, 20))


def test_stream_from_other_weights_is_refused(tiny_codec, shipped_codec, image_factory):
    blob = tiny_codec.encode(image_factory(16, 16))
    with pytest.raises(ModelMismatchError, match="tiny-test"):
        shipped_codec.decode(blob)


def test_steps_without_diffusion_decoder_is_a_clear_error(tiny_codec, image_factory):
    blob = tiny_codec.encode(image_factory(16, 16))
    with pytest.raises(NoDiffusionDecoderError):
        tiny_codec.decode(blob, steps=4)


def test_stream_info(tiny_codec, image_factory):
    blob = tiny_codec.encode(image_factory(30, 50, channels=1), quality=0.25)
    info = ldcodec.stream_info(blob)
    assert (info.width, info.height, info.mode, info.model_id) == (50, 30, "GRAY", "tiny-test")
    assert info.bytes == len(blob) and info.quality == pytest.approx(0.25, abs=1e-4)


def test_every_truncation_and_random_flips_fail_cleanly(tiny_codec, image_factory):
    blob = tiny_codec.encode(image_factory(24, 24), quality=0.5)
    for cut in range(len(blob)):
        with pytest.raises(ldcodec.LdcodecError):
            tiny_codec.decode(blob[:cut])
    rng = np.random.default_rng(0)
    for _ in range(200):
        damaged = bytearray(blob)
        for pos in rng.integers(0, len(blob), size=rng.integers(1, 4)):
            damaged[pos] ^= 1 << rng.integers(0, 8)
        if bytes(damaged) == blob:
            continue
        with pytest.raises(ldcodec.LdcodecError):
            tiny_codec.decode(bytes(damaged))


# The shipped model: rate control and quality ---------------------------------------------


def test_shipped_model_rate_increases_with_quality(shipped_codec):
    from ldcodec.codec.image_io import open_image
    from ldcodec.eval.metrics import psnr

    sample = open_image(ldcodec.__path__[0] + "/assets/sample.png")
    ref = np.asarray(sample.convert("RGB"))
    sizes, psnrs = [], []
    for q in (0.0, 0.5, 1.0):
        blob = shipped_codec.encode(sample, quality=q)
        sizes.append(len(blob))
        psnrs.append(psnr(ref, np.asarray(shipped_codec.decode(blob))))
    assert sizes[0] < sizes[1] < sizes[2]
    assert psnrs[0] < psnrs[2]


def test_shipped_model_bpp_target_is_met(shipped_codec):
    from ldcodec.codec.image_io import open_image

    sample = open_image(ldcodec.__path__[0] + "/assets/sample.png")
    pixels = sample.size[0] * sample.size[1]
    top = 8 * len(shipped_codec.encode(sample, quality=1.0)) / pixels
    assert top > 0.3, f"quality 1 gives only {top:.3f} bpp on the sample"
    for target in (0.1, 0.2, 0.3):  # inside the model's range on this (smooth) photo
        blob = shipped_codec.encode(sample, bpp=target)
        achieved = 8 * len(blob) / pixels
        assert achieved <= target
        assert achieved >= 0.85 * target
    # Above the top of the range: the highest quality, which is the closest that fits, with a warning.
    with pytest.warns(UserWarning, match="above the highest rate"):
        blob = shipped_codec.encode(sample, bpp=1.2 * top)
    assert blob == shipped_codec.encode(sample, quality=1.0)


def test_unreachable_bpp_target_warns_and_uses_the_lowest_rate(tiny_codec, image_factory):
    img = image_factory(32, 32)
    with pytest.warns(UserWarning, match="below the lowest rate"):
        blob = tiny_codec.encode(img, bpp=1e-6)
    assert blob == tiny_codec.encode(img, quality=0.0)
