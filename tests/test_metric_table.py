"""`analysis.table --metric NAME` / `--by category` on a real SQLite MLflow store.

The runs are logged by hand (as the tracking callback logs them: tags, last-epoch metrics),
including one "older" run that predates the angular metrics and logged none of them.
"""

from __future__ import annotations

import pytest

from pix3d.metrics import METRICS
from analysis.table import build_table, main
from analysis.mlflow_store import ROLE_TAG
from pix3d.cli import run_cli

# (run name, model, modalities, seed, metrics at the last epoch)
RUNS = [
    ("combined_net rgb s0", "combined_net", "rgb", 0,
     {"val_azimuth_acc": 0.50, "val_azimuth_mederr": 40.0, "val_azimuth_acc_pi6": 0.55,
      "majority_azimuth_mederr": 90.0, "majority_azimuth_acc": 0.2,
      "val_rotation_mederr": 44.0, "majority_rotation_mederr": 95.0, "val_rotation_acc_pi6.chair": 0.5,
      "val_azimuth_acc.chair": 0.6, "val_azimuth_acc.desk": 0.3}),
    ("combined_net rgb s1", "combined_net", "rgb", 1,
     {"val_azimuth_acc": 0.70, "val_azimuth_mederr": 20.0, "val_azimuth_acc_pi6": 0.75,
      "majority_azimuth_mederr": 90.0, "majority_azimuth_acc": 0.2,
      "val_rotation_mederr": 24.0, "majority_rotation_mederr": 97.0, "val_rotation_acc_pi6.chair": 0.7,
      "val_azimuth_acc.chair": 0.8, "val_azimuth_acc.desk": 0.5}),
    ("separate_net rgb+mask s0 (old)", "separate_net", "rgb+mask", 0,
     {"val_azimuth_acc": 0.40, "majority_azimuth_acc": 0.2}),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("metric_table")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("ablation", artifact_location=str(root / "artifacts"))
    for name, model, modalities, seed, metrics in RUNS:
        run = client.create_run(experiment, run_name=name, tags={
            ROLE_TAG: "trial", "model": model, "modalities": modalities, "seed": str(seed),
            "lr": "1e-05", "seed_quirks": "False"})
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value, step=3)
        client.set_terminated(run.info.run_id, "FINISHED")
    return uri, root


def test_mederr_table_is_in_degrees_labelled_lower_is_better_and_names_older_runs(store):
    uri, _ = store
    table = build_table(uri, "ablation", metric="val_azimuth_mederr")
    [row] = table.rows  # the older separate_net run lacks the metric: left out
    assert row.model == "combined_net"
    cell = row.cells["rgb"]
    assert (cell.n, cell.mean) == pytest.approx((2, 30.0))  # degrees, not x100
    assert table.baseline["rgb"].mean == pytest.approx(90.0)  # the majority's MedErr
    md = table.to_markdown()
    assert "degrees, lower is better" in md and "paper" not in md
    assert any("1 finished run(s) lack 'val_azimuth_mederr'" in note
               and "separate_net rgb+mask s0 (old)" in note for note in table.notes)


def test_acc_pi6_table_is_in_percent(store):
    uri, _ = store
    cell = build_table(uri, "ablation", metric="val_azimuth_acc_pi6").rows[0].cells["rgb"]
    assert cell.mean == pytest.approx(65.0)


def test_rotation_metrics_read_from_the_same_specs(store, tmp_path, capsys):
    """The geodesic metrics reach --metric from pix3d.metrics.METRICS with no analysis edit:
    degrees, lower is better, with their own majority baseline; per category too."""
    uri, _ = store
    table = build_table(uri, "ablation", metric="val_rotation_mederr")
    cell = table.rows[0].cells["rgb"]
    assert (cell.n, cell.mean) == pytest.approx((2, 34.0))
    assert table.baseline["rgb"].mean == pytest.approx(96.0)
    assert "val_rotation_mederr (last epoch), mean over seeds in degrees, lower is better" in table.to_markdown()
    by_category = build_table(uri, "ablation", metric="val_rotation_acc_pi6", by="category")
    assert by_category.columns == ["chair"] and by_category.rows[0].cells["chair"].mean == pytest.approx(60.0)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "val_rotation_mederr" in help_text and "val_rotation_acc_pi6" in help_text


def test_by_category_gives_categories_as_columns(store, tmp_path, capsys):
    uri, _ = store
    table = build_table(uri, "ablation", by="category")
    assert table.columns == ["chair", "desk"]
    [row] = table.rows
    assert row.modalities == "rgb" and "RGB" in row.label
    assert row.cells["chair"].mean == pytest.approx(70.0)
    assert row.cells["desk"].mean == pytest.approx(40.0)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--experiment", "ablation", "--mlflow-uri", uri, "--by", "category",
                       "--out", str(tmp_path), "--no-log", "--format", "csv"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "category" in out.splitlines()[0] and ",chair," in out
    assert (tmp_path / "table.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, needle, choices", [
    (["--metric", "val_top5"], "--metric", ("val_azimuth_acc", "val_azimuth_mederr", "val_azimuth_acc_pi6")),
    (["--by", "colour"], "--by", ("subset", "category")),
    (["--by", "category", "--metric", "val_loss"], "--by category", ("val_azimuth_acc", "val_azimuth_mederr")),
])
def test_unknown_metric_or_by_is_one_line_listing_the_choices(store, tmp_path, capsys, args, needle, choices):
    uri, _ = store
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--experiment", "ablation", "--mlflow-uri", uri, "--out", str(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]
    assert all(choice in err[0] for choice in choices)


def test_no_run_has_the_metric_says_so(store):
    from pix3d.errors import Pix3DError

    uri, _ = store
    with pytest.raises(Pix3DError, match="no finished run of experiment 'ablation' logged metric 'val_loss'"):
        build_table(uri, "ablation", metric="val_loss")
    assert "val_loss" in METRICS and METRICS["val_loss"].lower_is_better
