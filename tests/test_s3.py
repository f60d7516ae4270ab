"""Sweeps stored in S3, against a real S3 API (moto's server on loopback, the `s3` fixture).

Everything finds the server through the standard AWS variables, as on a cluster: nothing in a
command names it. Covered here: the Optuna study as a journal in the bucket (pickled as Tune
pickles the searcher), `analysis.sync` replaying a sweep from S3 into an empty MLflow store,
the checks on an S3 `--storage`, and (slow) a smoke sweep whose driver is killed and resumed
from S3, and a search resumed from S3 with its study intact.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace

import optuna
import pytest

from analysis.study_journal import JOURNAL_FOLDER, open_study_storage
from analysis.sync import main as sync_main
from analysis.sync import sync
from analysis.tracking import MLflowUnavailableWarning
from pix3d.cli import run_cli
from pix3d.data.prepare import prepare
from pix3d.errors import Pix3DError
from pix3d.fileio import local_copy
from pix3d.train import BUDGETS
from search.grids import get_grid
from search.options import sized_grid
from search.storage import experiment_path, resolve_storage
from search.study import study_location
from tests.mlflow_server import free_port
from tests.sweeps import EPOCHS, param_space, run_sweep
from tests.test_search import QUICK_SIZE, cli_env, make_tiny_dataset, run_search
from tests.test_sync import snapshot

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _bucket(s3, name: str) -> str:
    """A fresh bucket per test (the server is shared by the session)."""
    return s3.create_bucket(f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**6}")


# ------------------------------------------------------------------------- the study in S3


def test_a_study_kept_in_s3_comes_back_whole_after_tunes_pickle(s3):
    bucket = _bucket(s3, "study")
    location = study_location(f"{bucket}/runs/search", "search")
    assert location.storage == f"{bucket}/runs/search/{JOURNAL_FOLDER}" and location.trial_count() == 0
    study = optuna.create_study(storage=location.open_storage(), study_name="search", direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda t: -(t.suggest_float("x", -2, 2) - 1) ** 2, n_trials=3)
    # Tune pickles the searcher, storage included; the copy holds the URI only, and reads the bucket.
    revived = pickle.loads(pickle.dumps(location.open_storage()))
    again = optuna.load_study(study_name="search", storage=revived)
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    assert [t.value for t in again.trials] == [t.value for t in study.trials]
    again.optimize(lambda t: -(t.suggest_float("x", -2, 2) - 1) ** 2, n_trials=2)  # a resumed search grows it
    assert location.trial_count() == 5
    assert [t.number for t in optuna.load_study(study_name="search", storage=open_study_storage(
        location.storage)).trials] == [0, 1, 2, 3, 4]
    # Each batch of entries is one whole object, numbered in order with no gap.
    keys = [k for k in s3.keys(bucket[len("s3://"):], f"runs/search/{JOURNAL_FOLDER}/") if not k.endswith("/")]
    spans = [tuple(map(int, k.rsplit("/", 1)[1][:-len(".json")].split("-"))) for k in keys]
    assert spans[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))


def test_a_missing_study_in_s3_is_named_not_created(s3):
    bucket = _bucket(s3, "nostudy")
    with pytest.raises(Pix3DError, match=f"no journal objects under {bucket}/x/{JOURNAL_FOLDER}"):
        open_study_storage(f"{bucket}/x/{JOURNAL_FOLDER}")
    assert s3.keys(bucket[len("s3://"):]) == []


# ------------------------------------------------------------------------- storage checks


def test_an_s3_storage_is_checked_writable_before_any_work(s3, capsys):
    bucket = _bucket(s3, "ok")
    assert resolve_storage(f"{bucket}/runs") == f"{bucket}/runs"
    # The probe leaves nothing behind (pyarrow may keep an empty folder marker, `runs/`).
    assert [k for k in s3.keys(bucket[len("s3://"):]) if not k.endswith("/")] == []
    with pytest.raises(Pix3DError, match="--storage s3://no-such-bucket-zz/runs: not a writable storage"):
        resolve_storage("s3://no-such-bucket-zz/runs")


# ------------------------------------------------------------------------- sync from S3


@pytest.fixture(scope="module")
def offline_s3_sweep(ray_session, s3, tmp_path_factory):
    """A sweep stored in S3 while MLflow was down: only the bucket holds its results."""
    bucket = _bucket(s3, "offline")
    dead = f"http://127.0.0.1:{free_port()}"
    space = param_space(models=("combined_net", "separate_net"), subsets=("rgb",), seeds=(0,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results, callback = run_sweep(f"{bucket}/runs", "offline", dead, space=space,
                                      experiment="ablation", grid="ablation")
    assert any(issubclass(w.category, MLflowUnavailableWarning) for w in caught)
    return bucket, results, callback, tmp_path_factory.mktemp("offline-s3")


def test_sync_replays_a_sweep_from_s3_into_an_empty_store(offline_s3_sweep, capsys):
    bucket, results, callback, root = offline_s3_sweep
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert sync_main(["--storage", f"{bucket}/runs/offline", "--mlflow-uri", uri, "--no-progress"]) == 0
    assert "synced 2 trials" in capsys.readouterr().out
    state = snapshot(uri, "ablation")
    parents = [r for r in state.values() if r["tags"].get("pix3d.role") == "sweep"]
    children = {r["tags"]["trial_id"]: r for r in state.values() if r["tags"].get("pix3d.role") == "trial"}
    assert len(parents) == 1 and parents[0]["tags"]["sweep_id"] == callback.info.sweep_id
    assert parents[0]["tags"]["storage_path"] == f"{bucket}/runs/offline"
    assert set(children) == {r.metrics["trial_id"] for r in results}
    for result in results:
        child = children[result.metrics["trial_id"]]
        assert child["status"] == "FINISHED"
        assert child["metrics"]["val_loss"] == [
            (int(e), v) for e, v in zip(result.metrics_dataframe["epoch"], result.metrics_dataframe["val_loss"])]
    # Idempotent from S3 too.
    report = sync(f"{bucket}/runs/offline", uri, progress=False)
    assert (report.runs_created, report.epochs_logged, report.closed) == (0, 0, 0)
    assert snapshot(uri, "ablation") == state


def test_sync_from_an_empty_s3_prefix_is_one_line(s3, tmp_path, capsys):
    bucket = _bucket(s3, "empty")
    with pytest.raises(SystemExit) as exit_:
        run_cli(sync_main, ["--storage", f"{bucket}/runs/none", "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err == f"error: {bucket}/runs/none: no such folder (nothing is stored under it)\n"


def test_a_local_copy_holds_the_records_not_the_checkpoints(offline_s3_sweep, s3):
    bucket, _, _, _ = offline_s3_sweep
    with local_copy(f"{bucket}/runs/offline", lambda rel: rel.endswith(".json")) as folder:
        trials = sorted(p.parent.name for p in folder.glob("*/params.json"))
        assert len(trials) == 2 and list(folder.glob("experiment_state-*.json"))
        assert not [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".json")]
    assert not folder.exists()  # the temp copy is gone
