"""The learning benchmark: run parsing, bad input, and real fits that record a curve and a PNG."""

from __future__ import annotations

import pytest

from benchmarks.bench_learning import learning_curves, main, parse_runs, plot_curves
from pix3d.cli import run_cli
from pix3d.errors import UsageError
from tests.test_train import SIZE, pose_pattern_data


def test_parse_runs():
    assert parse_runs("300x3, allx5") == [(300, 3), (None, 5)]
    for bad in ("300", "0x3", "300x0", "x3", "300x3,", "-1x2"):
        with pytest.raises(UsageError, match="--runs: .* is not IMAGESxEPOCHS"):
            parse_runs(bad)


@pytest.mark.parametrize("args, message", [
    (["--runs", "10x0"], "error: --runs: '10x0' is not IMAGESxEPOCHS"),
    (["--modalities", "rgb,depth"], "error: --modalities: unknown modality 'depth'"),
    (["--lr", "0"], "error: --lr must be positive"),
    (["--model", "resnet"], "error: argument --model: invalid choice"),
])
def test_cli_bad_input_is_one_error_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1


def test_learning_curves_record_every_epoch_of_every_run(tmp_path):
    data = pose_pattern_data(n=60)
    lines: list[str] = []
    overrides = {"image_size": SIZE, "batch_size": 8, "precision": "fp32", "channels_last": True,
                 "val_fraction": 0.25}
    curves, majority = learning_curves(data, model="separate_net", modalities=("rgb",), lr=1e-3,
                                       runs=[(12, 2), (None, 1)], overrides=overrides, threads=1,
                                       device="cpu", report=lines.append)
    assert list(curves) == ["12x2", "allx1"]
    assert [p["passes"] for p in curves["12x2"]] == [12, 24]
    n_train = curves["allx1"][0]["passes"]
    assert 12 < n_train < len(data)  # the whole training split, validation held out
    assert curves["12x2"][0]["wall_s"] < curves["12x2"][1]["wall_s"]
    assert all(0.0 <= p["val_az"] <= 1.0 for points in curves.values() for p in points)
    assert majority == curves["allx1"][-1]["majority"] and 0.0 < majority <= 1.0
    assert len(lines) == 1 + 3 and lines[0].split()[:3] == ["run", "epoch", "passes"]

    png = plot_curves(curves, majority, tmp_path / "out" / "curves.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["curves.png"]  # no temp file left
