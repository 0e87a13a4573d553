"""``ldcodec eval`` end to end on a tiny synthetic folder (jpeg + webp, 2 points, no LPIPS)."""

import csv
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from ldcodec.cli.eval_command import eval_command
from ldcodec.eval.reports import BD_RATE_FIELDS, RESULT_FIELDS


@pytest.fixture
def image_dir(tmp_path, image_factory):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(image_factory(170, 200, seed=1)).save(folder / "a.png")
    Image.fromarray(image_factory(180, 172, seed=2)).save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _run(*args):
    return CliRunner().invoke(eval_command, [str(a) for a in args], catch_exceptions=False)


def test_tiny_run_writes_every_output(image_dir, tmp_path):
    out = tmp_path / "out"
    result = _run(image_dir, "--codecs", "jpeg,webp", "--points", "2", "--no-lpips", "--out", out)
    assert result.exit_code == 0, result.output

    with open(out / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == RESULT_FIELDS
        rows = list(reader)
    assert len(rows) == 2 * 2 * 2
    assert {r["codec"] for r in rows} == {"jpeg", "webp"} and {r["image"] for r in rows} == {"a.png", "b.png"}
    for row in rows:
        assert float(row["bpp"]) == pytest.approx(8 * int(row["bytes"]) / (int(row["width"]) * int(row["height"])),
                                                  rel=1e-5)
        assert 10 < float(row["psnr"]) < 60 and 0 < float(row["ms_ssim"]) <= 1
        assert row["lpips"] == "nan"

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["codecs"]) == {"jpeg", "webp"}
    assert all(len(settings) == 2 for settings in summary["codecs"].values())
    first = next(iter(summary["codecs"]["jpeg"].values()))
    assert first["images"] == 2 and first["lpips"] is None

    with open(out / "bd_rate.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == BD_RATE_FIELDS
        bd_rows = list(reader)
    assert [(r["codec"], r["anchor"], r["metric"]) for r in bd_rows] == [("webp", "jpeg", "psnr"),
                                                                         ("jpeg", "webp", "psnr")]

    assert (out / "rd_psnr.png").stat().st_size > 0 and (out / "rd_msssim.png").exists()
    assert not (out / "rd_lpips.png").exists()
    assert sorted(p.name for p in (out / "crops").iterdir()) == ["a.png", "b.png"]


def test_process_pool_gives_the_same_rows(image_dir, tmp_path):
    out = tmp_path / "pool"
    result = _run(image_dir, "--codecs", "jpeg", "--points", "1", "--no-lpips", "--jobs", "2", "--limit", "1",
                  "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "results.csv", newline="")))
    assert [(r["codec"], r["image"]) for r in rows] == [("jpeg", "a.png")]


def test_missing_or_empty_directory_is_a_usage_error(tmp_path):
    result = _run(tmp_path / "nowhere", "--no-lpips")
    assert result.exit_code == 2 and "does not exist" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run(empty, "--no-lpips")
    assert result.exit_code == 2 and "no images" in result.output


def test_unknown_codec_is_a_usage_error(image_dir):
    result = _run(image_dir, "--codecs", "jpeg,gif", "--no-lpips")
    assert result.exit_code == 2 and "gif" in result.output


def test_held_out_selects_the_split_training_never_sees(tmp_path, image_factory):
    from ldcodec.eval.runner import find_images
    from ldcodec.train.data import split_images

    root = tmp_path / "train"
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(image_factory(16, 16, seed=i)).save(root / sub / f"{sub}{i}.png")
    held = find_images(root, held_out=True)
    assert held and sorted(held) == sorted(split_images(root)[1])
    assert not set(held) & set(split_images(root)[0])


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _mark(path, codec, marker):
    """Set every ``codec`` row's PSNR to ``marker`` in a results.csv (to see which rows were reused)."""
    rows = _rows(path)
    for row in rows:
        if row["codec"] == codec:
            row["psnr"] = marker
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def test_reuse_takes_matching_classical_rows_and_remeasures_the_crop_settings(image_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert _run(image_dir, "--codecs", "jpeg,webp", "--points", "3", "--no-lpips", "--out", first).exit_code == 0
    fresh = {(r["codec"], r["setting"], r["image"]): r for r in _rows(first / "results.csv")}
    _mark(first / "results.csv", "webp", "99.0")
    _mark(first / "results.csv", "jpeg", "98.0")
    Image.open(image_dir / "a.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image_dir / "c.png")  # new

    result = _run(image_dir, "--codecs", "jpeg,webp", "--points", "3", "--no-lpips", "--reuse", first,
                  "--out", second)
    assert result.exit_code == 0, result.output
    rows = _rows(second / "results.csv")
    assert len(rows) == 3 * 2 * 3
    by_key = {(r["codec"], r["setting"], r["image"]): r for r in rows}
    for (codec, setting, image), row in by_key.items():
        if image == "c.png":
            assert float(row["psnr"]) < 60, row  # measured
        elif codec == "webp":
            assert row["psnr"] == "99.0", row  # reused as it was
    for image in ("a.png", "b.png"):
        # jpeg makes the crops: one setting per image is measured again (the one nearest the crop rate),
        # the others are reused.
        jpeg = [by_key[k] for k in by_key if k[0] == "jpeg" and k[2] == image]
        measured = [r for r in jpeg if r["psnr"] != "98.0"]
        assert len(measured) == 1
        key = ("jpeg", measured[0]["setting"], image)
        assert float(measured[0]["psnr"]) == pytest.approx(float(fresh[key]["psnr"]), abs=1e-5)
    assert json.loads((second / "summary.json").read_text())["reused"]["rows"] == 2 * 3 + 2 * 2
    assert "Reused: 10 classical-codec measurements" in (second / "results.md").read_text()


def test_reuse_measures_everything_when_library_versions_differ(image_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert _run(image_dir, "--codecs", "webp", "--points", "2", "--no-lpips", "--out", first).exit_code == 0
    _mark(first / "results.csv", "webp", "99.0")
    summary = json.loads((first / "summary.json").read_text())
    summary["versions"]["webp"] = "0.0.1"
    (first / "summary.json").write_text(json.dumps(summary))
    result = _run(image_dir, "--codecs", "webp", "--points", "2", "--no-lpips", "--reuse", first, "--out", second)
    assert result.exit_code == 0, result.output
    assert "library versions differ" in result.output
    assert all(r["psnr"] != "99.0" for r in _rows(second / "results.csv"))


def test_compare_model_adds_a_curve_and_a_bd_rate_anchor(image_dir, tmp_path, tiny_weights,
                                                         tiny_checkerboard_weights, monkeypatch):
    """Two installed models measured in one run; the default model is stood in for by the tiny one."""
    import ldcodec
    from ldcodec.codec import image_codec
    from ldcodec.eval import baselines

    monkeypatch.setattr(ldcodec, "load", lambda model=None, **kw: image_codec.load(
        tiny_weights if model is None else model, **kw))
    baselines._ldcodec_model.cache_clear()
    out = tmp_path / "out"
    try:
        result = _run(image_dir, "--codecs", "ldcodec,jpeg", "--points", "3", "--no-lpips", "--out", out,
                      "--compare-model", tiny_checkerboard_weights, "--compare-model", "no-such-model")
    finally:
        baselines._ldcodec_model.cache_clear()
    assert result.exit_code == 0, result.output
    assert "skipping ldcodec-no-such-model" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["codecs"]) == {"ldcodec", "jpeg", "ldcodec-tiny-checkerboard"}
    with open(out / "bd_rate.csv", newline="") as handle:
        pairs = {(r["codec"], r["anchor"]) for r in csv.DictReader(handle) if r["metric"] == "psnr"}
    assert ("ldcodec", "ldcodec-tiny-checkerboard") in pairs and ("ldcodec", "jpeg") in pairs
