"""python -m pix3d.inspect on real files: JSON lines, the summary, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pix3d.constants import HEADS, N_BINS
from tests.inproc import run_module
from tests.pix3d_fixtures import REAL_ENTRY, REAL_ENTRY_ANGLES, read_json, write_json, write_pix3d_folder

REPO = Path(__file__).resolve().parents[1]


def run_inspect(*args):
    return run_module("pix3d.inspect", *args)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = write_pix3d_folder(tmp_path_factory.mktemp("inspect") / "pix3d", 23, seed=5)
    # Append the quoted real entry with its own files.
    real = write_pix3d_folder(tmp_path_factory.mktemp("real"), [REAL_ENTRY])
    for rel in (REAL_ENTRY["img"], REAL_ENTRY["mask"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((real / rel).read_bytes())
    write_json(root, read_json(root) + [REAL_ENTRY])
    return root


def records_of(result):
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_json_lines_per_entry(folder):
    records = records_of(run_inspect(folder, "--json"))
    assert len(records) == 24
    keys = {"img", "category", "azimuth", "elevation", "inplane", "azimuth_bin", "elevation_bin", "inplane_bin"}
    assert all(keys <= set(r) for r in records)
    real = records[-1]
    assert real["img"] == REAL_ENTRY["img"] and real["category"] == "bed"
    for head, want in zip(HEADS, REAL_ENTRY_ANGLES):
        assert real[head] == pytest.approx(want, abs=0.01)
    # Published bins for 321.39 / 11.81 / -0.0785 rad: azimuth bin 7, elevation 0, in-plane 3.
    assert (real["azimuth_bin"], real["elevation_bin"], real["inplane_bin"]) == (7, 0, 3)
    for r in records:
        assert r["azimuth_bin"] == min(int(r["azimuth"] // 45), 7) or r["azimuth"] % 45 == 0
        assert 0 <= r["azimuth"] < 360 and -90 <= r["elevation"] <= 90


def test_summary_reports_categories_histograms_and_majority(folder):
    records = records_of(run_inspect(folder, "--json"))
    result = run_inspect(folder)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("24 entries, 3 categories, bins 'published'")
    assert "fitted" not in result.stderr  # the published edges are fixed: no note about fitting
    for category in ("bed", "chair", "table"):
        count = sum(r["category"] == category for r in records)
        assert f"{category}" in text and f" {count} " in text
    for head in HEADS:
        histogram = np.bincount([r[f"{head}_bin"] for r in records], minlength=N_BINS)
        share = 100 * histogram.max() / len(records)
        assert f"{head}: majority bin {histogram.argmax()} holds {share:.1f}%" in text
    assert "elevation: majority bin 0 holds 100.0%" in text  # the published elevation quirk


def test_quantile_bins_make_elevation_informative(folder):
    result = run_inspect(folder, "--json", "--bins", "quantile")
    records = records_of(result)
    assert "fitted on all 24 entries" in result.stderr
    histogram = np.bincount([r["elevation_bin"] for r in records], minlength=N_BINS)
    assert histogram.max() <= 4 and (histogram > 0).all()


def test_old_scheme_name_is_the_published_scheme_and_fits_nothing(folder, capsys):
    """--bins seed (the published scheme's old name): its labels, and no note about fitting."""
    from pix3d.errors import Pix3DDeprecation
    from pix3d.inspect import main

    assert main([str(folder), "--json"]) == 0
    published = capsys.readouterr().out
    with pytest.warns(Pix3DDeprecation, match="now called 'published'"):
        assert main([str(folder), "--json", "--bins", "seed"]) == 0
    old = capsys.readouterr()
    assert old.out == published and "fitted" not in old.err


def test_bad_mask_fails_or_is_skipped_and_listed(tmp_path):
    root = write_pix3d_folder(tmp_path / "pix3d", 5)
    entry = read_json(root)[3]
    Image.new("L", (7, 7)).save(root / entry["mask"])
    failed = run_inspect(root)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.count("\n") == 1 and f"error: {root / 'pix3d.json'}: entry 3 ({entry['img']}): mask" in failed.stderr
    skipped = run_inspect(root, "--json", "--skip-invalid")
    assert len(records_of(skipped)) == 4
    assert f"skipped entry 3 ({entry['img']}): mask" in skipped.stderr


@pytest.mark.parametrize(
    "args, code, expected",
    [
        (["--bins", "uniform"], 2, "invalid choice: 'uniform' (choose from 'published', 'quantile')"),
        (["--nope"], 2, "unrecognized arguments"),
    ],
)
def test_usage_errors(folder, args, code, expected):
    result = run_inspect(folder, *args)
    assert result.returncode == code and expected in result.stderr and "Traceback" not in result.stderr


def test_missing_folder_and_malformed_json(tmp_path):
    result = run_inspect(tmp_path / "absent")
    assert result.returncode == 1 and result.stderr.strip() == f"error: dataset folder {tmp_path / 'absent'} does not exist"
    (tmp_path / "pix3d.json").write_text("[1,")
    result = run_inspect(tmp_path)
    assert result.returncode == 1 and "malformed JSON" in result.stderr and "Traceback" not in result.stderr
