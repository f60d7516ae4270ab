"""Degraded mode end to end: a sweep with MLflow down, then `analysis.sync` replays it, once."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from analysis.sync import read_trials, sync
from analysis.tracking import MLflowUnavailableWarning
from tests.mlflow_server import free_port
from tests.pix3d_fixtures import seed_builtin_set
from tests.sweeps import EPOCHS, METRIC_NAMES, param_space, run_sweep


def snapshot(uri: str, experiment: str) -> dict:
    """Everything a replay could add: runs, tags, params, metric histories, artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    state = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        rid = run.info.run_id
        state[rid] = {
            "status": run.info.status, "end_time": run.info.end_time,
            "tags": dict(run.data.tags), "params": dict(run.data.params),
            "metrics": {k: sorted((m.step, m.value) for m in client.get_metric_history(rid, k))
                        for k in run.data.metrics},
            "artifacts": sorted(a.path for a in client.list_artifacts(rid)),
        }
    return state


@pytest.fixture(scope="module")
def offline_sweep(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    dead = f"http://127.0.0.1:{free_port()}"
    space = param_space(models=("combined_net", "separate_net"), subsets=("rgb",), seeds=(0,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results, callback = run_sweep(root / "ray", "offline", dead, space=space,
                                      experiment="ablation", grid="ablation")
    assert len([w for w in caught if issubclass(w.category, MLflowUnavailableWarning)]) == 1
    return root, results, callback


def test_read_trials_from_storage(offline_sweep):
    root, results, _ = offline_sweep
    trials = read_trials(root / "ray" / "offline")
    assert sorted(t.trial_id for t in trials) == sorted(r.metrics["trial_id"] for r in results)
    for trial in trials:
        assert trial.status == "FINISHED" and len(trial.results) == EPOCHS
        assert [r["epoch"] for r in trial.results] == list(range(1, EPOCHS + 1))


def test_sync_replays_sweep_and_second_sync_adds_nothing(offline_sweep):
    root, results, callback = offline_sweep
    uri = f"sqlite:///{root / 'mlflow.db'}"
    report = sync(root / "ray" / "offline", uri, progress=False)
    assert (report.trials, report.runs_created, report.closed) == (2, 2, 2)
    assert report.epochs_logged == 2 * EPOCHS
    first = snapshot(uri, "ablation")   # experiment name recovered from the saved callback state
    parents = [r for r in first.values() if r["tags"].get("pix3d.role") == "sweep"]
    children = [r for r in first.values() if r["tags"].get("pix3d.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent["tags"]["sweep_id"] == callback.info.sweep_id
    assert parent["tags"]["command"] == "pytest sweep offline" and parent["status"] == "FINISHED"
    by_trial = {c["tags"]["trial_id"]: c for c in children}
    for result in results:
        child = by_trial[result.metrics["trial_id"]]
        assert child["status"] == "FINISHED"
        assert set(METRIC_NAMES) <= set(child["metrics"])
        assert child["metrics"]["val_loss"] == [
            (int(e), v) for e, v in zip(result.metrics_dataframe["epoch"],
                                        result.metrics_dataframe["val_loss"])]
        assert child["artifacts"] == ["azimuth_confusion.json", "azimuth_confusion.png",
                                      "learning_curves.png"]
        assert child["params"]["data.key"] == "abc123"

    # The second replay, through the CLI as a user would run it: nothing changes.
    proc = subprocess.run([sys.executable, "-m", "analysis.sync", "--storage",
                           str(root / "ray" / "offline"), "--mlflow-uri", uri, "--no-progress"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "0 runs created, 0 epochs logged, 0 runs closed" in proc.stdout
    assert snapshot(uri, "ablation") == first


def test_sync_bad_storage_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "analysis.sync", "--storage", str(tmp_path),
                           "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: --storage {tmp_path}: not a Ray Tune experiment folder (no "
        "experiment_state-*.json and no trial folders with params.json)"]


@pytest.mark.slow
def test_search_run_smoke_end_to_end(builtin_set, tmp_path):
    """`python -m search.run --grid smoke` on the built-in synthetic set, tracked and tabled."""
    from mlflow.tracking import MlflowClient

    # Rendered once per session (builtin_set); the command prepares it in its own cache here.
    seed_builtin_set(builtin_set, tmp_path / "cache")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--grid", "smoke", "--budget", "quick",
         "--cache", str(tmp_path / "cache"), "--storage", str(tmp_path / "ray"),
         "--mlflow-uri", uri],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
             "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("pix3d.role") == "trial"]
    parent = next(r for r in runs if r.data.tags.get("pix3d.role") == "sweep")
    assert {r.data.tags["model"] for r in children} == {"combined_net", "separate_net"}
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["data.dataset.name"] == "synthetic"
        assert {a.path for a in client.list_artifacts(child.info.run_id)} == {
            "azimuth_confusion.json", "azimuth_confusion.png", "learning_curves.png"}
    table_files = {a.path for a in client.list_artifacts(parent.info.run_id, "table")}
    assert "table/table.md" in table_files
    assert (tmp_path / "table_out" / "smoke" / "table.png").exists()
