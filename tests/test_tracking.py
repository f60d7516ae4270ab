"""MLflow tracking of real Ray Tune sweeps, into a real sqlite store and a real mlflow server.

The trainable here is a real (tiny) computation, not canned numbers: softmax regression of
the azimuth bin from noisy (cos, sin) features, where more modalities mean less noise. It
reports exactly the metric names of docs/interfaces.md, including the non-scalar confusion.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pix3d.constants import N_BINS, modalities_key

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from analysis.tracking import (  # noqa: E402
    MLflowTrackingCallback,
    default_tracking_uri,
    trial_run_name,
)
from tests.mlflow_server import mlflow_server  # noqa: E402

EPOCHS = 2
METRIC_NAMES = (
    "epoch", "train_loss", "val_loss", "val_azimuth_acc", "val_elevation_acc", "val_inplane_acc",
    "val_azimuth_acc_within1", "majority_azimuth_acc", "majority_elevation_acc",
    "majority_inplane_acc", "best_val_azimuth_acc", "lr", "images_per_s", "epoch_time_s",
)


def _softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def tiny_pose_trainable(config):
    """Softmax regression of 8 azimuth bins; per epoch reports the documented metric dict."""
    import time

    rng = np.random.default_rng(int(config["seed"]) * 1000 + len(config["modalities"]))
    n_mod = len(config["modalities"].split("+"))
    noise = 1.2 / n_mod + (0.3 if config["model"] == "separate_net" else 0.0)
    azimuth = rng.uniform(0, 360, 240)
    rad = np.deg2rad(azimuth)
    feats = np.stack([np.cos(rad), np.sin(rad), np.cos(2 * rad), np.sin(2 * rad)], 1)
    feats = np.hstack([feats + rng.normal(0, noise, feats.shape), np.ones((len(feats), 1))])
    labels = np.minimum((azimuth // 45).astype(int), N_BINS - 1)
    train, val = np.arange(200), np.arange(200, 240)
    weights = np.zeros((feats.shape[1], N_BINS))
    majority = np.bincount(labels[train], minlength=N_BINS).argmax()
    best = 0.0
    step_lr = float(config["lr"]) * 1e4  # the sweeps use 1e-5..1e-3; scale to a useful step
    for epoch in range(1, int(config.get("epochs", EPOCHS)) + 1):
        start = time.perf_counter()
        for _ in range(20):
            probs = _softmax(feats[train] @ weights)
            probs[np.arange(len(train)), labels[train]] -= 1
            weights -= step_lr * feats[train].T @ probs / len(train)
        p_train = _softmax(feats[train] @ weights)
        p_val = _softmax(feats[val] @ weights)
        pred = p_val.argmax(1)
        acc = float((pred == labels[val]).mean())
        best = max(best, acc)
        confusion = np.zeros((N_BINS, N_BINS), int)
        np.add.at(confusion, (labels[val], pred), 1)
        circ = np.abs(pred - labels[val]) % N_BINS
        elapsed = max(time.perf_counter() - start, 1e-6)
        tune.report({
            "epoch": epoch,
            "train_loss": float(-np.log(p_train[np.arange(len(train)), labels[train]] + 1e-9).mean()),
            "val_loss": float(-np.log(p_val[np.arange(len(val)), labels[val]] + 1e-9).mean()),
            "val_azimuth_acc": acc, "val_elevation_acc": 1.0, "val_inplane_acc": acc,
            "val_azimuth_acc_within1": float(np.isin(circ, (0, 1, N_BINS - 1)).mean()),
            "majority_azimuth_acc": float((labels[val] == majority).mean()),
            "majority_elevation_acc": 1.0,
            "majority_inplane_acc": float((labels[val] == majority).mean()),
            "best_val_azimuth_acc": best, "lr": float(config["lr"]),
            "images_per_s": len(train) / elapsed, "epoch_time_s": elapsed,
            "val_azimuth_confusion": confusion.tolist(),
        })
        if config.get("fail_at_epoch") == epoch:
            raise RuntimeError(f"planned failure at epoch {epoch}")
        # Fail once (as if the machine went away), succeed when the sweep is resumed.
        marker = config.get("fail_once_marker")
        if marker and config["modalities"] == "rgb+mask" and epoch == 2 and not os.path.exists(marker):
            Path(marker).write_text("failed once")
            raise RuntimeError("interrupted at epoch 2")


def param_space(models=("combined_net", "separate_net"), subsets=("rgb", "rgb+mask"),
                seeds=(0, 1), lrs=None, **extra):
    space = {
        "model": tune.grid_search(list(models)),
        "modalities": tune.grid_search(list(subsets)),
        "seed": tune.grid_search(list(seeds)),
        "epochs": EPOCHS, "seed_quirks": False,
    }
    if lrs is None:
        space["lr"] = 1e-4
    else:
        space["lr"] = tune.grid_search(list(lrs))
    space.update(extra)
    return space


def run_sweep(storage: Path, name: str, tracking_uri: str, *, experiment: str = "smoke",
              space=None, grid: str = "smoke", manifest=None):
    """One real Tune sweep through the real callback; returns (ResultGrid, callback)."""
    callback = MLflowTrackingCallback(
        tracking_uri, experiment, sweep_name=name, grid=grid,
        command=f"pytest sweep {name}", storage_path=str(storage),
        data_manifest=manifest or {"dataset": "tiny", "key": "abc123", "n": 240,
                                   "sources": {"boundaries": "files", "normals": "unavailable"}},
    )
    tuner = tune.Tuner(
        tiny_pose_trainable,
        param_space=space or param_space(),
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), callbacks=[callback],
                                  verbose=0),
    )
    return tuner.fit(), callback


@pytest.fixture(scope="session")
def ray_session():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield
    ray.shutdown()


# Session scope: the server and the served sweep are shared with tests/test_table.py
# (Ray start-up, server start-up and the sweep are most of the suite's time).
@pytest.fixture(scope="session")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as srv:
        yield srv


@pytest.fixture(scope="session")
def served_sweep(ray_session, server, tmp_path_factory):
    storage = tmp_path_factory.mktemp("ray_storage")
    results, callback = run_sweep(storage, "served", server.url)
    return results, callback, server


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
        # Every epoch at step = epoch, the value the trial reported last at the last step.
        history = client.get_metric_history(run.info.run_id, "val_azimuth_acc")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        assert run.data.metrics["val_azimuth_acc"] == pytest.approx(result.metrics["val_azimuth_acc"])
        assert "val_azimuth_confusion" not in run.data.metrics
        assert set(METRIC_NAMES) <= set(run.data.metrics)
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
