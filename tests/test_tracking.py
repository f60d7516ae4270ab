"""MLflow tracking of real Ray Tune sweeps, into a real sqlite store and a real mlflow server.

The sweeps run the real (tiny) trainable of tests/sweeps.py; the session fixtures (Ray, the
server, the served sweep) live in tests/conftest.py.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from pix3d.constants import modalities_key

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from analysis.mlflow_store import default_tracking_uri  # noqa: E402
from analysis.run_fields import trial_run_name  # noqa: E402
from tests.sweeps import BOOKKEEPING, EPOCHS, METRIC_NAMES, SPLIT_SHA256, SPLIT_SIZES, param_space, run_sweep, tiny_pose_trainable  # noqa: E402


def _rest(server_url: str, endpoint: str, payload: dict | None = None, query: str = ""):
    url = f"{server_url}/api/2.0/mlflow/{endpoint}{query}"
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def test_default_tracking_uri_is_absolute_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_run_names_are_readable():
    name = trial_run_name({"model": "combined_net", "modalities": "mask+rgb", "lr": 1e-5, "seed": 0})
    assert name == "combined_net rgb+mask lr=1e-05 s0"


def test_sweep_logged_to_server_parent_children_params_metrics_artifacts(served_sweep):
    from mlflow.tracking import MlflowClient

    results, callback, server = served_sweep
    assert callback.warnings_issued == 0 and not results.errors
    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == len(results) == 8
    parent = parents[0]
    assert parent.info.run_name == "served" and parent.info.status == "FINISHED"
    assert parent.data.tags["sweep_id"] == callback.info.sweep_id
    assert "python -m analysis.table --experiment smoke" in parent.data.tags["mlflow.note.content"]
    assert parent.data.tags["command"] == "pytest sweep served"
    # (test_table may have logged a table/ folder to this parent as well: shared fixture)
    assert "data_manifest.json" in [a.path for a in client.list_artifacts(parent.info.run_id)]

    by_trial = {r.data.tags["trial_id"]: r for r in children}
    for result in results:
        run = by_trial[result.metrics["trial_id"]]
        config = result.config
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "FINISHED"
        assert run.info.run_name == trial_run_name(config)
        assert run.data.tags["model"] == config["model"]
        assert run.data.tags["modalities"] == modalities_key(config["modalities"])
        assert run.data.tags["seed"] == str(config["seed"])
        assert run.data.params["model"] == config["model"]
        assert float(run.data.params["lr"]) == config["lr"]
        assert run.data.params["data.key"] == "abc123"
        assert run.data.params["data.sources.normals"] == "unavailable"
        # Which membership its (published) split used, and the crop: every run records them.
        assert run.data.params["data.split_membership"] == f"notebook sha256:{SPLIT_SHA256}"
        assert run.data.params["data.published_split.sha256"] == SPLIT_SHA256
        assert run.data.params["data.crop"] == "published"
        # Every epoch at step = epoch, the value the trial reported last at the last step.
        history = client.get_metric_history(run.info.run_id, "val_azimuth_acc")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        assert run.data.metrics["val_azimuth_acc"] == pytest.approx(result.metrics["val_azimuth_acc"])
        assert "val_azimuth_confusion" not in run.data.metrics
        assert set(METRIC_NAMES) <= set(run.data.metrics)
        assert not set(BOOKKEEPING) & set(run.data.metrics)  # the step, flags, placement: not charted
        assert {k: int(run.data.params[k]) for k in SPLIT_SIZES} == SPLIT_SIZES  # the split's sizes: params
        for key in ("val_azimuth_acc", "val_loss"):  # the headline section's copies: the same points
            assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"headline/{key}")) \
                == sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert run.data.metrics["lr_scheduled"] == pytest.approx(result.metrics["lr"])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"azimuth_confusion.json", "azimuth_confusion.png", "learning_curves.png"}

    # The same, through the REST API: runs, metric history and the artifact bytes.
    one = children[0]
    reply = _rest(server.url, "runs/search", {"experiment_ids": [experiment.experiment_id],
                                              "max_results": 100})
    assert len(reply["runs"]) == 9
    history = _rest(server.url, "metrics/get-history",
                    query=f"?run_id={one.info.run_id}&metric_key=val_loss")
    assert sorted(int(m["step"]) for m in history["metrics"]) == list(range(1, EPOCHS + 1))
    url = (f"{server.url}/get-artifact?path=azimuth_confusion.json&run_uuid={one.info.run_id}")
    with urllib.request.urlopen(url, timeout=30) as reply:
        confusion = json.loads(reply.read())
    trial_result = next(r for r in results if r.metrics["trial_id"] == one.data.tags["trial_id"])
    assert confusion["counts"] == trial_result.metrics["val_azimuth_confusion"]
    assert confusion["epoch"] == EPOCHS
    with urllib.request.urlopen(url.replace("azimuth_confusion.json", "learning_curves.png"),
                                timeout=30) as reply:
        assert reply.read(8) == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_parent_without_duplicate_children(ray_session, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # First session: one trial fails half way (as if the sweep was interrupted).
    space = param_space(models=("combined_net",), subsets=("rgb", "rgb+mask"), seeds=(0,),
                        fail_once_marker=str(tmp_path / "failed_once"))
    space["epochs"] = 3  # fails at 2 of 3: the resumed session must add epoch 3 only
    results, callback = run_sweep(tmp_path, "resumable", uri, space=space)
    assert len(results.errors) == 1
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("smoke")
    failed = client.search_runs([exp.experiment_id], "tags.status = 'FAILED'")
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "interrupted at epoch 2" in failed[0].data.tags["error"]
    assert sorted(m.step for m in client.get_metric_history(failed[0].info.run_id, "val_loss")) == [1, 2]
    # Second session: restore the same sweep, re-running the errored trial from scratch
    # (restart_errored gives it a new trial id; the child run is found by its grid point).
    restored = tune.Tuner.restore(str(tmp_path / "resumable"), tiny_pose_trainable,
                                  restart_errored=True)
    results2 = restored.fit()
    assert not results2.errors
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("pix3d.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("pix3d.role") == "trial"]
    assert len(parents) == 1 and parents[0].data.tags.get("resumed") == "true"
    assert len(children) == 2 == len({r.data.tags["trial_id"] for r in children})
    assert parents[0].data.tags["sweep_id"] == callback.info.sweep_id
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["status"] == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        assert sorted(steps) == [1, 2, 3], "a step was lost or logged twice"
    assert len(results2) == 2


def test_hooks_queue_the_logging_and_the_sweep_end_waits_for_it(tmp_path):
    """The hooks return while the store is locked (a synchronous hook would wait out sqlite's
    busy timeout and turn tracking off); the sweep's end logs everything queued."""
    import sqlite3

    from mlflow.tracking import MlflowClient
    from ray.tune.experiment import Trial

    from analysis.tracking import MLflowTrackingCallback

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()  # the store's tables exist before it is locked
    callback = MLflowTrackingCallback(uri, "queued", sweep_name="queued", grid="smoke", command="pytest",
                                      data_manifest={}, storage_path=str(tmp_path / "ray"))
    config = {"model": "combined_net", "modalities": "rgb", "lr": 1e-4, "seed": 0}
    trial = Trial("tiny_pose_trainable", config=config, trial_id="t0001", stub=True)
    lock = sqlite3.connect(db, timeout=60)
    lock.execute("BEGIN EXCLUSIVE")       # no other connection can read or write the store now
    try:
        callback.setup()
        callback.on_trial_start(0, [trial], trial)
        for epoch in (1, 2):
            result = {"epoch": epoch, "val_loss": 1.0 / epoch, "training_iteration": epoch}
            trial.update_last_result(result)   # as Tune does before the hook
            callback.on_trial_result(0, [trial], trial, result)
        callback.on_trial_complete(0, [trial], trial)
        assert callback._thread.is_alive() and not callback.disabled  # all of it still queued
    finally:
        lock.rollback()
        lock.close()
    trial.set_status(Trial.TERMINATED)
    callback.on_experiment_end([trial])
    assert not callback.disabled and callback.warnings_issued == 0 and callback.logging_s > 0
    (run,) = client.search_runs([client.get_experiment_by_name("queued").experiment_id],
                                "tags.trial_id = 't0001'")
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")] == [(1, 1.0), (2, 0.5)]
