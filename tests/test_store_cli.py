"""``ldcodec store add/ls/get`` through click's CliRunner, plus one run of the real console entry point."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ldcodec.cli.main import LdcodecGroup
from ldcodec.cli.store_command import store_group
from ldcodec.store import KeyframeStore, StoreError
from tests.conftest import synthetic_image


def invoke(args, **kw):
    return CliRunner().invoke(store_group, [str(a) for a in args], **kw)


def invoke_top(args):
    """Through a group like the top-level ``ldcodec`` one: errors become one line and exit code 2."""
    top = LdcodecGroup(commands={"store": store_group})
    return CliRunner().invoke(top, ["store", *[str(a) for a in args]])


@pytest.fixture
def inputs(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(synthetic_image(21, 30, seed=1)).save(a)
    Image.fromarray(synthetic_image(16, 18, 1, seed=2), "L").save(b)
    field = tmp_path / "field.npy"
    np.save(field, np.linspace(-3.5, 12.0, 20 * 24, dtype=np.float32).reshape(20, 24))
    return a, b, field


def test_add_ls_get(tmp_path, inputs, tiny_weights, tiny_codec):
    a, b, field = inputs
    store = tmp_path / "run.ldks"
    r = invoke(["add", store, a, b, "--quality", "0.8", "--model", tiny_weights, "--meta", '{"run": 7}'])
    assert r.exit_code == 0, r.output
    assert "frame 0 <- " in r.output and "frame 1 <- " in r.output
    r = invoke(["add", store, field, "--model", tiny_weights])  # appends to the existing store
    assert r.exit_code == 0, r.output

    r = invoke(["ls", store])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 3
    assert lines[0].split()[:3] == ["0", "30x21", "pil"] and '"source": "a.png"' in lines[0] and '"run": 7' in lines[0]
    assert lines[1].split()[:3] == ["1", "18x16", "pil"]
    assert lines[2].split()[:3] == ["2", "24x20", "float"] and '"source": "field.npy"' in lines[2]
    assert "bpp" in lines[0]
    r = invoke(["ls", store, "--json", "--verify"])
    listing = json.loads(r.stdout)
    assert [f["index"] for f in listing["frames"]] == [0, 1, 2] and listing["info"]["frames"] == 3
    assert listing["frames"][2]["range"] == [-3.5, 12.0] and listing["frames"][0]["quality"] == 0.8

    with KeyframeStore(store, codec=tiny_codec) as s:
        want0, want_last = np.asarray(s[0]), s[-1]
    out = tmp_path / "f0.png"
    r = invoke(["get", store, 0, "-o", out, "--model", tiny_weights])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(out)), want0)
    out = tmp_path / "last.npy"
    r = invoke(["get", store, -1, "-o", out, "--model", tiny_weights])  # negative index
    assert r.exit_code == 0, r.output
    got = np.load(out)
    assert got.dtype == np.float32 and np.array_equal(got, want_last)
    r = invoke(["get", store, 1, "-o", "-", "--model", tiny_weights])
    assert r.exit_code == 0 and r.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(r.stdout_bytes)).mode == "L"


def test_cli_errors_are_one_line(tmp_path, inputs, tiny_weights):
    a, _, field = inputs
    store = tmp_path / "s.ldks"
    assert invoke(["add", store, a, field, "--model", tiny_weights]).exit_code == 0
    cases = [
        (["ls", tmp_path / "missing.ldks"], "no such store"),
        (["get", store, 5, "-o", tmp_path / "x.png"], "out of range"),
        (["get", store, 1, "-o", tmp_path / "x.png", "--model", tiny_weights], "float field"),
        (["add", store, tmp_path / "nope.png"], "no such file"),
        (["add", store, a, "--meta", "[1]"], "JSON object"),
        (["add", a, field, "--model", tiny_weights], "not a keyframe store"),
    ]
    for args, needle in cases:
        r = invoke(args)
        assert isinstance(r.exception, StoreError), (args, r.output)
        r = invoke_top(args)
        assert r.exit_code == 2, (args, r.output)
        errors = [line for line in r.stderr.splitlines() if line.startswith("ldcodec: error:")]
        assert len(errors) == 1 and needle in errors[0], (args, r.stderr)
        assert "Traceback" not in r.output
    assert not (tmp_path / "x.png").exists()
    with KeyframeStore(store) as s:
        assert len(s) == 2


def test_ls_reports_corrupt_frames(tmp_path, inputs, tiny_weights):
    a, b, _ = inputs
    store = tmp_path / "s.ldks"
    assert invoke(["add", store, a, b, a, "--model", tiny_weights]).exit_code == 0
    with KeyframeStore(store) as s:
        offset, length = s._entry(1)
    data = bytearray(store.read_bytes())
    data[offset + length - 2] ^= 0xFF  # in frame 1's stream: only --verify sees it
    data[offset + 3] ^= 0xFF  # and now in its header: every listing sees it
    store.write_bytes(bytes(data))
    r = invoke_top(["ls", store])
    assert r.exit_code == 2
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and "CORRUPT" in lines[1] and "CORRUPT" not in lines[0] + lines[2]
    assert "1 corrupt frame(s): 1" in r.stderr


def test_console_entry_point(tmp_path, inputs, tiny_weights, cli_env):
    """The real top-level ``ldcodec`` group with the store group registered, in a subprocess (one run:
    importing torch there takes seconds): a listing goes to stdout, a failure is one line and exit code 2."""
    a, _, _ = inputs
    store = tmp_path / "s.ldks"
    assert invoke(["add", store, a, "--model", tiny_weights]).exit_code == 0
    code = "\n".join([
        "import sys",
        "from ldcodec.cli.main import cli",
        "from ldcodec.cli.store_command import store_group",
        "cli.add_command(store_group)",
        "try:",
        f"    cli(['store', 'ls', {str(store)!r}], prog_name='ldcodec')",
        "except SystemExit as exc:",
        "    assert not exc.code, exc.code",
        f"cli(['store', 'get', {str(store)!r}, '3', '-o', {str(tmp_path / 'o.png')!r}], prog_name='ldcodec')",
    ])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=cli_env, timeout=300)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert out.split()[:2] == ["0", "30x21"], err
    assert r.returncode == 2 and err.strip().splitlines()[-1].startswith("ldcodec: error:") and "Traceback" not in err
