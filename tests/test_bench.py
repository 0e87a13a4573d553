"""``ldcodec bench``: the test image, the bpp matching, and one tiny run of the real command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ldcodec.bench import NO_DIFFUSION, BenchError, bench_image, closest_quality, format_report, parse_sizes
from tests.test_cli import run


def test_bench_image_is_deterministic_crop_or_mirror_tiling():
    small = bench_image(64, 48)
    assert small.shape == (48, 64, 3) and small.dtype == np.uint8
    assert np.array_equal(small, bench_image(64, 48))
    full = bench_image(512, 384)  # the sample itself, untouched
    assert np.array_equal(small, full[168:216, 224:288])  # a centre crop
    big = bench_image(1100, 500)
    assert big.shape == (500, 1100, 3)
    # Mirror tiling: the sample sits in the middle, its mirror image next to it (no resampling).
    x0, y0 = (1100 - 512) // 2, (500 - 384) // 2
    assert np.array_equal(big[y0 : y0 + 384, x0 : x0 + 512], full)
    assert np.array_equal(big[y0 : y0 + 384, x0 - 1], full[:, 0])
    assert not np.array_equal(bench_image(64, 48, variant=1), small)


def test_parse_sizes():
    assert parse_sizes("256x256, 768x512,256x256") == ((256, 256), (768, 512))
    for bad in ("", "12", "0x5", "axb"):
        with pytest.raises(BenchError):
            parse_sizes(bad)


def test_closest_quality_bisection_and_walk():
    calls = []

    def bpp(q):
        calls.append(q)
        return 0.01 * q * q

    for start in (None, 0, 50, 100):
        assert closest_quality(bpp, 1.0, 0, 100, start=start) == 10  # exactly 1.0 bpp
        assert closest_quality(bpp, 1.12, 0, 100, start=start) == 11  # 1.21 is closer than 1.00
        assert closest_quality(bpp, 500.0, 0, 100, start=start) == 100  # out of reach: the end
        assert closest_quality(bpp, -1.0, 0, 100, start=start) == 0


def test_bench_command_json(cli_env, tiny_weights):
    r = run(["bench", "--sizes", "64x48", "--repeat", "1", "--steps", "0,4", "--model", tiny_weights,
             "--threads", "1", "--jobs", "1", "--throughput-images", "2", "--json"], cli_env)
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(r.stdout)
    assert doc["ok"] is True
    assert {"machine", "versions", "settings", "sizes", "throughput", "command"} <= set(doc)
    (row,) = doc["sizes"]
    assert row["size"] == "64x48" and row["model"] == "tiny-test" and row["threads"] == 1
    ld = row["ldcodec"]
    assert ld["bpp"] > 0 and ld["bytes"] > 0
    assert 0 < ld["encode"]["min_s"] <= ld["encode"]["median_s"] and len(ld["encode"]["runs_s"]) == 1
    steps0, steps4 = ld["decode"]
    assert steps0["steps"] == 0 and steps0["status"] == "ok" and steps0["median_s"] > 0
    assert steps4 == {"steps": 4, "status": NO_DIFFUSION}
    assert row["memory"]["peak_rss_mb"] >= row["memory"]["rss_loaded_mb"] > 10
    for name in ("hevc", "jpeg"):
        base = row[name]
        if "error" in base:  # HEVC needs pillow-heif ('ldcodec[eval]'); JPEG is always there
            assert name == "hevc" and base["error"].startswith("n/a")
            continue
        assert {"quality", "bpp", "bytes", "psnr", "encode", "decode", "search_encodes"} <= set(base)
        assert base["encode"]["median_s"] > 0 and base["decode"]["median_s"] > 0
        assert row["ratios"][f"encode_vs_{name}"] > 0 and row["ratios"][f"decode_vs_{name}"] > 0
    (tp,) = doc["throughput"]
    assert tp["ok"] and tp["jobs"] == 1 and tp["images"] == 2 and tp["threads"] == 1
    assert tp["encode"]["images_per_s"] > 0 and tp["decode"]["images_per_s"] > 0

    text = format_report(doc)
    assert "| 64x48 | 0 |" in text and NO_DIFFUSION in text and "images/s" in text
