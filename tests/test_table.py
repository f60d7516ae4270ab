"""The azimuth table from MLflow runs equals the one computed from Tune's own results."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from pix3d.constants import SUBSET_LABELS, modalities_key
from pix3d.models import published_value
from tests.mlflow_server import free_port
from tests.sweeps import param_space, run_sweep

from analysis.summary import summarise  # noqa: E402
from analysis.table import build_table, main, write_table  # noqa: E402
from pix3d.cli import run_cli  # noqa: E402
from tests.inproc import run_module


@pytest.fixture(scope="module")
def store(served_sweep, tmp_path_factory):
    """The real mlflow server after two sweeps: the 8-trial `smoke` one and a small lr one."""
    ablation, _, srv = served_sweep
    root = tmp_path_factory.mktemp("table_store")
    lr_space = param_space(models=("combined_net",), subsets=("rgb",), seeds=(0,),
                           lrs=(1e-5, 1e-4, 1e-3))
    lr_results, _ = run_sweep(root / "ray", "lr", srv.url, experiment="lr", space=lr_space,
                              grid="lr")
    return srv.url, ablation, lr_results, root


def _expected_cells(results, metric_of):
    """mean/std(ddof=1)/n in % per (model, modalities), straight from Tune's ResultGrid."""
    values: dict[tuple[str, str], list[float]] = {}
    for result in results:
        key = (result.config["model"], modalities_key(result.config["modalities"]))
        values.setdefault(key, []).append(100 * metric_of(result))
    return {k: (np.mean(v), np.std(v, ddof=1), len(v)) for k, v in values.items()}


@pytest.mark.parametrize("at", ["last", "best"])
def test_table_from_mlflow_equals_table_from_tune_results(store, at):
    uri, results, _, _ = store
    table = build_table(uri, "smoke", at=at)
    if at == "last":
        expected = _expected_cells(results, lambda r: r.metrics["val_azimuth_acc"])
    else:
        expected = _expected_cells(results, lambda r: r.metrics_dataframe["val_azimuth_acc"].max())
    assert [row.label for row in table.rows] == ["combined_net", "separate_net"]
    covered = sorted({modalities_key(r.config["modalities"]) for r in results}, key=list(SUBSET_LABELS).index)
    assert table.columns == covered  # the sweep's subsets, in the paper's order; none it did not run
    for row in table.rows:
        for column in ("rgb", "rgb+mask"):
            mean, std, n = expected[(row.model, column)]
            cell = row.cells[column]
            assert (cell.n, cell.mean, cell.std) == pytest.approx((n, mean, std))
            assert cell.published == published_value(row.model, "val_azimuth_acc", column)
    baseline = _expected_cells(results, lambda r: r.metrics["majority_azimuth_acc"])
    for column in ("rgb", "rgb+mask"):
        values = [v for (m, c), v in baseline.items() if c == column]
        all_values = [100 * r.metrics["majority_azimuth_acc"] for r in results
                      if modalities_key(r.config["modalities"]) == column]
        assert table.baseline[column].mean == pytest.approx(np.mean(all_values))
        assert values
    assert not any("no finished runs for" in note for note in table.notes)


def test_write_table_files_and_parent_artifacts(store, tmp_path):
    from mlflow.tracking import MlflowClient

    uri, results, _, _ = store
    table = build_table(uri, "smoke")
    files = write_table(table, tmp_path / "out")
    assert set(files) == {"md", "csv", "png"}
    md = files["md"].read_text()
    assert "| combined_net |" in md and "· paper 56.9" in md and "majority class" in md
    frame = pd.read_csv(files["csv"])
    cell = frame[(frame["row"] == "combined_net") & (frame["modalities"] == "rgb")].iloc[0]
    assert cell["n"] == 2 and cell["mean_pct"] == pytest.approx(table.rows[0].cells["rgb"].mean, abs=1e-3)
    assert files["png"].read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (tmp_path).rglob(".table-*")], "staging folder left behind"
    client = MlflowClient(tracking_uri=uri)
    logged = {a.path for a in client.list_artifacts(table.parent_run_id, "table")}
    assert logged == {"table/table.md", "table/table.csv", "table/table.png"}
    parent = client.get_run(table.parent_run_id)
    assert parent.info.run_name == "served"


def test_columns_are_the_subsets_run_and_holes_among_them_are_named():
    """A grid over fewer subsets (`lr`: two of four) gets only its columns; a row without a
    finished run in one of them is named, and nothing about the subsets nobody ran."""
    records = pd.DataFrame({
        "run_id": list("abc"), "parent_run_id": "p", "sweep_id": "s", "end_time": [1, 2, 3],
        "model": ["combined_net", "combined_net", "separate_net"],
        "modalities": ["rgb+mask+boundaries+normals", "rgb", "rgb"], "lr": 1e-3,
        "seed": "0", "seed_quirks": False, "value": [0.5, 0.6, 0.7],
    })
    table = summarise(records, experiment="x")
    assert table.columns == ["rgb", "rgb+mask+boundaries+normals"]
    holes = [note for note in table.notes if note.startswith("no finished runs for")]
    assert holes == ["no finished runs for: separate_net / RGB+Mask+Boundaries+Normals"]
    assert "RGB+Mask |" not in table.to_markdown()


def test_unequal_n_is_noted():
    records = pd.DataFrame({
        "run_id": list("abc"), "parent_run_id": "p", "sweep_id": "s", "end_time": [1, 2, 3],
        "model": "combined_net", "modalities": ["rgb", "rgb", "rgb+mask"], "lr": 1e-5,
        "seed": ["0", "1", "0"], "seed_quirks": False, "value": [0.5, 0.7, 0.6],
        "baseline": [0.2, 0.2, 0.2],
    })
    table = summarise(records, experiment="x")
    cell = table.rows[0].cells["rgb"]
    assert (cell.n, cell.mean, cell.std) == pytest.approx((2, 60.0, np.std([50, 70], ddof=1)))
    assert any("unequal n (1, 2 seeds)" in note for note in table.notes)
    assert "60.0 ± 14.1 (n=2) · paper 56.9" in table.to_markdown()
    assert r"$\pm$" in table.to_latex()


def test_lr_experiment_writes_lr_view(store, tmp_path, capsys):
    uri, _, lr_results, _ = store
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--experiment", "lr", "--mlflow-uri", uri, "--out", str(tmp_path),
                       "--format", "csv"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "row,model,seed_quirks,lr" in out
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"
    table = build_table(uri, "lr")
    assert [row.lr for row in table.rows] == [1e-5, 1e-4, 1e-3]
    by_lr = {r.config["lr"]: 100 * r.metrics["val_azimuth_acc"] for r in lr_results}
    for row in table.rows:
        assert row.cells["rgb"].mean == pytest.approx(by_lr[row.lr])


def _cli(*args):
    return run_module("analysis.table", *args)


def test_cli_unknown_experiment_lists_existing(store):
    uri = store[0]
    proc = _cli("--experiment", "nope", "--mlflow-uri", uri)
    assert proc.returncode == 1
    # One line listing the store's experiments (the session's server may hold other tests' too).
    (line,) = proc.stderr.strip().splitlines()
    prefix = f"error: unknown experiment 'nope' in {uri}; existing: "
    assert line.startswith(prefix)
    existing = line[len(prefix):].split(", ")
    assert {"Default", "lr", "smoke"} <= set(existing) and existing == sorted(existing)


def test_cli_unreachable_server_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    proc = _cli("--experiment", "ablation", "--mlflow-uri", url, "--out", str(tmp_path))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach MLflow server {url}")


def test_cli_missing_metric_and_bad_option(store, capsys, tmp_path):
    uri = store[0]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--experiment", "smoke", "--mlflow-uri", uri, "--metric", "val_loss",
                       "--by", "category", "--out", str(tmp_path)])
    assert exit_info.value.code == 2  # val_loss is not logged per category
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --by category: only val_azimuth_acc")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--experiment", "ablation", "--at", "median"])
    assert exit_info.value.code == 2
    assert "--at" in capsys.readouterr().err


def test_no_finished_runs(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("empty")
    client.create_run(exp, tags={"pix3d.role": "trial"})  # still RUNNING
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--experiment", "empty", "--mlflow-uri", uri, "--out", str(tmp_path)])
    assert exit_info.value.code == 1
    # (MLflow itself logs the creation of the store above; our output is one error line.)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == ["error: experiment 'empty' has no finished trial runs (1 trial runs in all)"]


def test_missing_sqlite_store_is_not_created(tmp_path, capsys):
    db = tmp_path / "nothing.db"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--experiment", "x", "--mlflow-uri", f"sqlite:///{db}"])
    assert exit_info.value.code == 1 and not db.exists()
    assert capsys.readouterr().err == f"error: no MLflow store at {db} (run a sweep first, or pass --mlflow-uri)\n"
