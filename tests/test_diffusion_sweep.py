"""The diffusion sweep (benchmarks/bench_diffusion_sweep.py) on tiny models, and its place in the eval report."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import ldcodec
from ldcodec.codec.denoiser import LatentDenoiser
from ldcodec.codec.diffusion_weights import diffusion_path_for, export_denoiser
from ldcodec.codec.weights import load_weights
from ldcodec.eval.diffusion_sweep import Variant, decode_variant, default_variants, markdown_table, run_sweep
from ldcodec.eval.metrics import psnr
from tests.conftest import synthetic_image
from tests.test_diffusion_decoder import TINY_DENOISER, _perturbed_synthesis, random_denoiser, tiny_base


@pytest.fixture(scope="module")
def sweep_codec(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    base = tiny_base(folder)
    export_denoiser(random_denoiser(), diffusion_path_for(base), load_weights(base).sha256, "base",
                    synthesis=_perturbed_synthesis(base))
    return ldcodec.load(base), base


def test_variants_decode_the_same_bytes_and_the_ablations_differ(sweep_codec):
    codec, base = sweep_codec
    rgb = synthetic_image(40, 56)
    blob = codec.encode(rgb, quality=0.4)
    k0 = decode_variant(codec, blob, Variant(0))
    assert np.array_equal(k0, np.asarray(codec.decode(blob)))
    k2 = decode_variant(codec, blob, Variant(2))
    assert np.array_equal(k2, np.asarray(codec.decode(blob, steps=2)))
    base_gs = decode_variant(codec, blob, Variant(2, synthesis="base"))
    tuned_only = decode_variant(codec, blob, Variant(0, synthesis="tuned-only"))
    assert not np.array_equal(base_gs, k2) and not np.array_equal(tuned_only, k0)
    # the ablations restore the codec: a plain decode afterwards is unchanged
    assert np.array_equal(np.asarray(codec.decode(blob, steps=2)), k2)
    # base g_s after an untrained denoiser is the steps-0 decode (x0 = ŷ)
    plain_file = base.parent / "untrained.safetensors"
    export_denoiser(LatentDenoiser(TINY_DENOISER), plain_file, load_weights(base).sha256, "base",
                    synthesis=_perturbed_synthesis(base))
    untrained = ldcodec.load(base, diffusion=plain_file)
    diff = decode_variant(untrained, blob, Variant(3, synthesis="base")).astype(int) - k0.astype(int)
    assert np.abs(diff).max() <= 1


def test_sweep_rows_share_rates_per_quality_and_render(sweep_codec):
    codec, _ = sweep_codec
    images = [synthetic_image(40, 56, seed=s) for s in (0, 1)]
    variants = [Variant(0), Variant(1), Variant(2, "ddim", "noise"), Variant(1, synthesis="tuned-only")]
    rows = run_sweep(codec, images, [0.2, 0.8], variants, lpips=False, log=lambda m: None)
    assert len(rows) == 8
    for q in (0.2, 0.8):
        group = [r for r in rows if r["quality"] == q]
        assert len({r["bpp"] for r in group}) == 1 and all(r["images"] == 2 for r in group)
    k0 = next(r for r in rows if r["quality"] == 0.8 and r["steps"] == 0 and r["synthesis"] == "shipped")
    expected = np.mean([psnr(im, np.asarray(codec.decode(codec.encode(im, quality=0.8)))) for im in images])
    assert k0["psnr"] == pytest.approx(expected)
    table = "\n".join(markdown_table(rows))
    assert "K=2 ddim noise" in table and "tuned g_s only" in table and "**quality 0.8**" in table
    assert [v.name for v in default_variants()][:5] == [
        "K=0 (distortion-optimal)", "K=1 dpmpp matched", "K=2 dpmpp matched", "K=4 dpmpp matched",
        "K=8 dpmpp matched"]


def test_eval_report_takes_in_the_sweep_of_its_results_folder(tmp_path, image_factory):
    from ldcodec.cli.eval_command import eval_command

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(image_factory(170, 200, seed=1)).save(folder / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "diffusion-sweep.md").write_text("| decoder | LPIPS |\n|---|---|\n| K=4 | 0.1 |\n")
    result = CliRunner().invoke(eval_command, [str(folder), "--codecs", "jpeg", "--points", "2", "--no-lpips",
                                               "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = (out / "results.md").read_text()
    assert "## Diffusion decoder sweep" in report and "| K=4 | 0.1 |" in report


def _sweep_script():
    """benchmarks/bench_diffusion_sweep.py as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_diffusion_sweep.py"
    spec = importlib.util.spec_from_file_location("bench_diffusion_sweep", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_sweep_benchmark_compares_another_diffusion_file_on_the_main_curves(sweep_codec, tmp_path, monkeypatch):
    """``--diffusion`` and ``--variants main``: how a diffusion candidate is measured before it ships."""
    _, base = sweep_codec
    candidate = tmp_path / "candidate.safetensors"
    export_denoiser(random_denoiser(), candidate, load_weights(base).sha256, "base")  # no tuned g_s
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(synthetic_image(64, 64)).save(folder / "a.png")
    bench = _sweep_script()
    out = tmp_path / "sweep"
    monkeypatch.setattr("sys.argv", ["bench", "--dir", str(folder), "--qualities", "0.5", "--model", str(base),
                                     "--diffusion", str(candidate), "--variants", "main", "--out", str(out)])
    monkeypatch.setattr(bench, "run_sweep", lambda *a, **k: run_sweep(*a, **{**k, "lpips": False}))
    bench.main()
    report = out.with_suffix(".md").read_text()
    assert "diffusion decoder `candidate.safetensors`" in report
    rows = [line for line in report.splitlines() if line.startswith("| K=")]
    assert [r.split(" |")[0] for r in rows] == ["| K=0 (distortion-optimal)", "| K=4 dpmpp matched"]
    # the candidate, not the model's own decoder, ran: its K=4 pixels differ from the shipped file's
    rgb = synthetic_image(64, 64)
    blob = ldcodec.load(base).encode(rgb, quality=0.5)
    own = np.asarray(ldcodec.load(base).decode(blob, steps=4))
    other = np.asarray(ldcodec.load(base, diffusion=candidate).decode(blob, steps=4))
    assert not np.array_equal(own, other)


def test_a_candidate_check_without_out_prints_and_never_replaces_the_committed_sweep(
        sweep_codec, tmp_path, monkeypatch, capsys):
    """Only the full sweep of the shipped decoder writes to docs/results by default (a check once clobbered it)."""
    _, base = sweep_codec
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(synthetic_image(64, 64)).save(folder / "a.png")
    work = tmp_path / "checkout"
    (work / "docs" / "results").mkdir(parents=True)
    committed = work / "docs" / "results" / "diffusion-sweep.md"
    committed.write_text("the full sweep\n")
    monkeypatch.chdir(work)
    bench = _sweep_script()
    monkeypatch.setattr(bench, "run_sweep", lambda *a, **k: run_sweep(*a, **{**k, "lpips": False}))
    monkeypatch.setattr("sys.argv", ["bench", "--dir", str(folder), "--qualities", "0.5", "--model", str(base),
                                     "--variants", "main", "--limit", "1"])
    bench.main()
    captured = capsys.readouterr()
    assert "| K=4 dpmpp matched" in captured.out and "nothing written" in captured.err
    assert committed.read_text() == "the full sweep\n"
    assert sorted(p.name for p in (work / "docs" / "results").iterdir()) == ["diffusion-sweep.md"]

    parse, report_path = bench.build_parser().parse_args, bench.report_path
    assert str(report_path(parse(["--qualities", "0.25,0.35"]))) == "docs/results/diffusion-sweep"
    for partial in (["--limit", "8"], ["--diffusion", "x.safetensors"], ["--variants", "main"], ["--model", "hp-v9"]):
        assert report_path(parse(partial)) is None, partial
    assert str(report_path(parse(["--limit", "8", "--out", "/tmp/check"]))) == "/tmp/check"
