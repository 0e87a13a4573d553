"""The real console script in a subprocess: happy paths, stdin/stdout, and clean failures."""

from __future__ import annotations

import json
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ldcodec_executable, synthetic_image


def run(args, env, stdin: bytes | None = None):
    return subprocess.run(ldcodec_executable() + [str(a) for a in args], input=stdin, capture_output=True,
                          env=env, timeout=300)


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(synthetic_image(37, 45)).save(path)
    return path


def assert_clean_failure(result, *needles):
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ldcodec: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_encode_info_decode(png, tmp_path, cli_env, tiny_weights):
    ldc, out = tmp_path / "a.ldc", tmp_path / "a.png"
    r = run(["encode", png, "-o", ldc, "--quality", "0.4", "--model", tiny_weights], cli_env)
    assert r.returncode == 0, r.stderr.decode()
    assert b"bpp" in r.stderr
    r = run(["info", ldc, "--json"], cli_env)
    info = json.loads(r.stdout)
    assert (info["width"], info["height"], info["mode"]) == (45, 37, "RGB")
    assert info["bytes"] == ldc.stat().st_size
    assert info["coder"] is None  # the tiny model is a file given by path, not an installed model
    r = run(["info", ldc], cli_env)
    assert b"coder    model not installed here" in r.stdout
    r = run(["decode", ldc, "-o", out, "--model", tiny_weights], cli_env)
    assert r.returncode == 0, r.stderr.decode()
    assert Image.open(out).size == (45, 37)


def test_info_names_the_coder_of_an_installed_model(png, tmp_path, cli_env):
    from ldcodec.codec.weights import default_model_id, installed_config

    ldc = tmp_path / "a.ldc"
    assert run(["encode", png, "-o", ldc, "--quality", "0.1"], cli_env).returncode == 0
    config = installed_config(default_model_id())
    info = json.loads(run(["info", ldc, "--json"], cli_env).stdout)
    assert info["coder"] == {"context": config.context, "parameter_arithmetic": config.parameter_arithmetic,
                             "symbol_model": config.symbol_model}
    assert f"{config.symbol_model} symbols".encode() in run(["info", ldc], cli_env).stdout


def test_stdin_and_stdout(png, cli_env, tiny_weights):
    r = run(["encode", "-", "-o", "-", "--model", tiny_weights], cli_env, stdin=png.read_bytes())
    assert r.returncode == 0 and r.stdout[:4] == b"\x89LDC"
    r2 = run(["decode", "-", "-o", "-", "--model", tiny_weights], cli_env, stdin=r.stdout)
    assert r2.returncode == 0 and r2.stdout[:8] == b"\x89PNG\r\n\x1a\n"


def test_bpp_target(png, tmp_path, cli_env, tiny_weights):
    ldc = tmp_path / "b.ldc"
    r = run(["encode", png, "-o", ldc, "--bpp", "3.0", "--model", tiny_weights], cli_env)
    assert r.returncode == 0, r.stderr.decode()
    assert 8 * ldc.stat().st_size / (37 * 45) <= 3.0


@pytest.mark.parametrize("command", [[], ["encode"], ["decode"], ["info"], ["train"], ["demo"]])
def test_help_is_useful(command, cli_env):
    r = run(command + ["--help"], cli_env)
    assert r.returncode == 0 and b"Usage:" in r.stdout and len(r.stdout) > 200


def _stream(png, tmp_path, cli_env, tiny_weights) -> bytes:
    ldc = tmp_path / "good.ldc"
    assert run(["encode", png, "-o", ldc, "--model", tiny_weights], cli_env).returncode == 0
    return ldc.read_bytes()


def _reheader(blob: bytes, offset: int, value: bytes) -> bytes:
    id_len = blob[6]
    head_len = 7 + id_len + 8 + 4 + 4 + 1 + 2 + 1 + 1
    head = bytearray(blob[:head_len])
    head[offset : offset + len(value)] = value
    return bytes(head) + struct.pack("<I", zlib.crc32(bytes(head))) + blob[head_len + 4 :]


def test_bad_inputs_fail_cleanly_and_leave_no_output(png, tmp_path, cli_env, tiny_weights):
    good = _stream(png, tmp_path, cli_env, tiny_weights)
    id_len = good[6]
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    cases = {
        "missing": (["encode", tmp_path / "nope.png"], ["no such file"]),
        "empty": (["encode", tmp_path / "empty.png"], ["empty"]),
        "not an image": (["encode", tmp_path / "text.png"], ["not an image"]),
        "truncated": (["decode", good[: len(good) // 2]], ["truncated"]),
        "bad magic": (["decode", b"JUNK" + good[4:]], ["bad magic"]),
        "version": (["decode", _reheader(good, 4, b"\x09")], ["version 9"]),
        "crc": (["decode", good[:-6] + bytes([good[-6] ^ 1]) + good[-5:]], ["CRC"]),
        "pixel limit": (["decode", _reheader(good, 7 + id_len + 8, struct.pack("<II", 50000, 50000))], ["limit"]),
        "unknown weights": (["decode", _reheader(good, 7 + id_len, b"\xff" * 8)], ["weights"]),
    }
    for name, (args, needles) in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '_')}.bin"
        if isinstance(args[1], bytes):
            src = tmp_path / f"in-{name.replace(' ', '_')}.ldc"
            src.write_bytes(args[1])
            args = [args[0], src]
        r = run(args + ["-o", out, "--model", tiny_weights], cli_env)
        assert_clean_failure(r, *needles)
        assert not out.exists(), name
        assert not list(tmp_path.glob(".*.part")), name


def test_failed_run_keeps_existing_output_and_never_overwrites_input(png, tmp_path, cli_env, tiny_weights):
    out = tmp_path / "keep.ldc"
    out.write_bytes(b"precious")
    (tmp_path / "text.png").write_text("not an image")
    r = run(["encode", tmp_path / "text.png", "-o", out, "--model", tiny_weights], cli_env)
    assert_clean_failure(r)
    assert out.read_bytes() == b"precious"
    before = png.read_bytes()
    r = run(["encode", png, "-o", png, "--model", tiny_weights], cli_env)
    assert_clean_failure(r, "overwrite the input")
    assert png.read_bytes() == before


def test_steps_without_diffusion_model(png, tmp_path, cli_env, tiny_weights):
    ldc = tmp_path / "c.ldc"
    run(["encode", png, "-o", ldc, "--model", tiny_weights], cli_env)
    r = run(["decode", ldc, "-o", tmp_path / "c.png", "--steps", "4", "--model", tiny_weights], cli_env)
    assert_clean_failure(r, "no diffusion decoder")


def test_demo_runs_on_the_bundled_sample(cli_env):
    r = run(["demo", "--quality", "0.3"], cli_env)
    assert r.returncode == 0, r.stderr.decode()
    assert b"bpp" in r.stdout and b"PSNR" in r.stdout


def test_precision_options_cross_decode(png, tmp_path, cli_env, tiny_weights):
    """A bf16-encoded stream decodes with --precision fp32 and vice versa; a bad value is refused."""
    for enc, dec in (("bf16", "fp32"), ("fp32", "bf16"), ("auto", "auto")):
        ldc, out = tmp_path / f"{enc}.ldc", tmp_path / f"{enc}-{dec}.png"
        r = run(["encode", png, "-o", ldc, "--precision", enc, "--model", tiny_weights], cli_env)
        assert r.returncode == 0, r.stderr.decode()
        r = run(["decode", ldc, "-o", out, "--precision", dec, "--model", tiny_weights], cli_env)
        assert r.returncode == 0, r.stderr.decode()
        assert Image.open(out).size == (45, 37)
    r = run(["decode", tmp_path / "auto.ldc", "-o", tmp_path / "x.png", "--precision", "fp16"], cli_env)
    assert r.returncode == 2 and not (tmp_path / "x.png").exists()
