"""Review in the MLflow UI: the experiment's UI tags, the parent run's table metrics and PNG,
the printed links. A real (tiny) Tune sweep logged by the real callback into a real sqlite
store; the expected cell values come from Tune's own results, not from the table code.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.mlflow_ui import (EXPERIMENT_KIND_TAG, GROUPED_VIEW, SHARED_VIEW_PREFIX, TRAINING_KIND, TRIALS_VIEW,
                                UI_ENV, experiment_review_lines, runs_url)
from analysis.sweep_logger import SweepInfo, SweepLogger
from analysis.summary import summarise
from analysis.table import build_table, table_metrics, write_table
from pix3d.constants import modalities_key
from tests.sweeps import param_space, run_sweep


@pytest.fixture(scope="module")
def logged(ray_session, tmp_path_factory):
    """Two models x two seeds on RGB, logged to sqlite; the table written and logged."""
    root = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    results, _ = run_sweep(root / "ray", "ui", uri, experiment="ui", space=param_space(subsets=("rgb",)))
    table = build_table(uri, "ui")
    files = write_table(table, root / "out")
    return uri, results, table, files


def test_experiment_lands_on_training_runs(logged):
    from mlflow.tracking import MlflowClient

    uri, _, _, _ = logged
    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name("ui")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    view = json.loads(experiment.tags[SHARED_VIEW_PREFIX + GROUPED_VIEW])
    keys = view["groupBy"]["groupByKeys"]
    assert [(k["mode"], k["groupByData"]) for k in keys] == [("tag", "model"), ("tag", "modalities")]
    trials = json.loads(experiment.tags[SHARED_VIEW_PREFIX + TRIALS_VIEW])
    assert trials["searchFilter"] == "tags.`pix3d.role` = 'trial'" and "metrics.`val_azimuth_acc`" in trials["selectedColumns"]
    # The links name the runs tab, the "Model training" side and the trials view; the grouped one its view.
    url = runs_url("http://127.0.0.1:5077/", experiment.experiment_id)
    assert url == (f"http://127.0.0.1:5077/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
                   f"&viewStateShareKey={TRIALS_VIEW}")
    lines = experiment_review_lines(uri, "ui")
    assert lines[0].startswith(f"review in MLflow: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    assert lines[1].strip() == (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
                                f"?workflowType=machine_learning&viewStateShareKey={TRIALS_VIEW}")
    assert f"viewStateShareKey={GROUPED_VIEW}" in lines[2] and "compareRunsMode=CHART" in lines[2]
    assert "click Model training" in lines[-1]
    assert not any(GROUPED_VIEW in line for line in experiment_review_lines(uri, "ui", grouped=False))
    assert experiment_review_lines(uri, "no-such-experiment") == []


def test_parent_run_carries_each_cell_and_the_png(logged):
    from mlflow.tracking import MlflowClient

    uri, results, table, files = logged
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(table.parent_run_id)
    cells: dict[tuple[str, str], list[float]] = {}
    majority: dict[str, list[float]] = {}
    for result in results:
        subset = modalities_key(result.config["modalities"])
        cells.setdefault((result.config["model"], subset), []).append(100 * result.metrics["val_azimuth_acc"])
        majority.setdefault(subset, []).append(100 * result.metrics["majority_azimuth_acc"])
    logged_cells = {k: v for k, v in parent.data.metrics.items() if k.startswith("table.")}
    expected = {f"table.{model}.{subset.replace('+', '_')}": np.mean(values)
                for (model, subset), values in cells.items()}
    expected.update({f"table.majority.{subset.replace('+', '_')}": np.mean(v) for subset, v in majority.items()})
    assert logged_cells == pytest.approx(expected)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "table")}
    assert "table/table.png" in artifacts and files["png"].read_bytes()[:4] == b"\x89PNG"


def test_the_links_use_the_uis_port_when_known(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("port")
    monkeypatch.setenv(UI_ENV, "http://127.0.0.1:5055")
    lines = experiment_review_lines(uri, "port")
    assert "--port 5055, then open" in lines[0] and lines[1].strip().startswith("http://127.0.0.1:5055/#/")
    assert "5000" not in " ".join(lines)


def test_an_older_experiment_gets_the_tags_and_keeps_a_chosen_kind(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    old = client.create_experiment("old")
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("old", "chosen"):
        SweepLogger(uri, SweepInfo(sweep_id="s", sweep_name=name, experiment=name)).experiment_id
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    tags = client.get_experiment(chosen).tags
    assert tags[EXPERIMENT_KIND_TAG] == "genai_development" and SHARED_VIEW_PREFIX + GROUPED_VIEW in tags


def test_rows_split_by_lr_and_quirks_name_them_in_the_metric():
    """The keys of a table whose rows are split by learning rate and by quirks (pure: no store)."""
    records = pd.DataFrame({
        "run_id": list("abcd"), "parent_run_id": "p", "sweep_id": "s", "end_time": [1, 2, 3, 4],
        "model": "combined_net", "modalities": ["rgb", "rgb", "rgb+mask", "rgb"], "lr": [1e-4, 1e-3, 1e-4, 1e-4],
        "seed": "0", "seed_quirks": [False, False, False, True], "value": [0.5, 0.25, 0.75, 0.125],
        "baseline": [0.2, 0.2, 0.3, 0.2],
    })
    metrics = table_metrics(summarise(records, experiment="x"))
    assert metrics == pytest.approx({
        "table.combined_net.quirks_off.lr_0.0001.rgb": 50.0, "table.combined_net.quirks_off.lr_0.001.rgb": 25.0,
        "table.combined_net.quirks_off.lr_0.0001.rgb_mask": 75.0, "table.combined_net.quirks_on.lr_0.0001.rgb": 12.5,
        "table.majority.rgb": 20.0, "table.majority.rgb_mask": 30.0})
    other = table_metrics(summarise(records, experiment="x", metric="val_azimuth_mederr"))
    assert set(other) == {f"table.val_azimuth_mederr.last.{k.split('.', 1)[1]}" for k in metrics}
