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
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from dataclasses import replace

import optuna
import pytest
from ray import tune

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
from tests.test_search import QUICK_SIZE, cli_env, make_tiny_dataset, run_main, run_search
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


def test_a_sweep_to_a_missing_bucket_fails_at_once_and_a_dry_run_touches_no_bucket(s3, capsys):
    code, _, err = run_main(["--grid", "smoke", "--storage", "s3://no-such-bucket-zz/runs", "--no-mlflow"])
    assert code == 1 and err.startswith("error: --storage s3://no-such-bucket-zz/runs: not a writable storage")
    assert err.count("\n") == 1
    bucket = _bucket(s3, "dry")
    code, out, _ = run_main(["--grid", "smoke", "--dry-run", "--storage", f"{bucket}/runs"])
    assert code == 0 and f"results would go to {bucket}/runs/smoke" in out
    assert s3.keys(bucket[len("s3://"):]) == []


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
    assert exit_.value.code == 1 and err == f"error: --storage {bucket}/runs/none: no such folder (nothing is stored under it)\n"


def test_a_local_copy_holds_the_records_not_the_checkpoints(offline_s3_sweep, s3):
    bucket, _, _, _ = offline_s3_sweep
    with local_copy(f"{bucket}/runs/offline", lambda rel: rel.endswith(".json")) as folder:
        trials = sorted(p.parent.name for p in folder.glob("*/params.json"))
        assert len(trials) == 2 and list(folder.glob("experiment_state-*.json"))
        assert not [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".json")]
    assert not folder.exists()  # the temp copy is gone


# ------------------------------------------------------------------------- MLflow artifacts in S3


@pytest.mark.slow  # its own mlflow server and a tiny sweep logged to it: 68 s measured on the shared 2-core machine
def test_mlflow_artifacts_in_s3_land_in_the_bucket_and_the_server_serves_them(ray_session, s3, tmp_path):
    from analysis.table import build_table, write_table
    from tests.mlflow_server import mlflow_server

    bucket = _bucket(s3, "mlflow")
    with mlflow_server(tmp_path / "server", artifacts=f"{bucket}/artifacts") as server:
        space = param_space(models=("combined_net",), subsets=("rgb", "rgb+mask"), seeds=(0,))
        run_sweep(tmp_path / "ray", "s3art", server.url, space=space, experiment="s3art", grid="ablation")
        table = build_table(server.url, "s3art")
        written = write_table(table, tmp_path / "table_out")
        keys = s3.keys(bucket[len("s3://"):], "artifacts/")
        parent = table.parent_run_id
        for name in ("table.md", "table.csv", "table.png"):
            (key,) = [k for k in keys if k.endswith(f"/{parent}/artifacts/table/{name}")]
            local = next(p for p in written.values() if p.name == name).read_bytes()
            assert s3.read(bucket[len("s3://"):], key) == local
            # What the UI fetches to show the file: the server reads it from the bucket.
            url = f"{server.url}/get-artifact?path=table/{name}&run_uuid={parent}"
            with urllib.request.urlopen(url, timeout=30) as reply:
                assert reply.status == 200 and reply.read() == local
        # The trials' plots (learning curves, confusion) went to the bucket too.
        assert [k for k in keys if k.endswith("/learning_curves.png")]


# ------------------------------------------------------------------------- sweeps on S3, resumed


def s3_trial_reports(s3, uri: str) -> dict[str, list[dict]]:
    """Trial folder -> its reports, from the result.json objects under the sweep's URI."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    out = {}
    for key in s3.keys(bucket, prefix + "/"):
        parts = key[len(prefix) + 1:].split("/")
        if len(parts) == 2 and parts[1] == "result.json" and parts[0].startswith("train_pose_"):
            text = s3.read(bucket, key).decode()
            out[parts[0]] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return out


def s3_state_trials(s3, uri: str) -> int:
    """How many trials the newest experiment state in the bucket names (0 before there is one)."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    states = sorted(k for k in s3.keys(bucket, prefix + "/") if k.rsplit("/", 1)[-1].startswith("experiment_state-"))
    if not states:
        return 0
    try:
        return len(json.loads(s3.read(bucket, states[-1]))["trial_data"])
    except (ValueError, KeyError):  # caught mid-upload: not yet
        return 0


def s3_checkpoints(s3, uri: str) -> dict[str, list[int]]:
    """Trial folder -> the indices of the checkpoints it holds in the bucket."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    out: dict[str, set[int]] = {}
    for key in s3.keys(bucket, prefix + "/"):
        parts = key[len(prefix) + 1:].split("/")
        if len(parts) >= 3 and parts[1].startswith("checkpoint_") and parts[0].startswith("train_pose_"):
            out.setdefault(parts[0], set()).add(int(parts[1][len("checkpoint_"):]))
    return {k: sorted(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3-data")
    return make_tiny_dataset(root)


@pytest.mark.slow  # two CLI runs with their own Ray start-up, uploads per epoch: 42 s measured (10 min under load 30)
def test_a_sweep_on_s3_killed_and_resumed_loses_and_repeats_nothing(s3, tiny_data, tmp_path):
    folder, cache = tiny_data
    epochs_per_trial = 6
    all_epochs = list(range(1, epochs_per_trial + 1))
    bucket = _bucket(s3, "sweeps")
    storage, sweep = f"{bucket}/runs", f"{bucket}/runs/smoke"
    args = ["--grid", "smoke", "--data", str(folder), "--cache", str(cache), "--budget", "quick",
            "--storage", storage, "--no-mlflow", "--epochs", str(epochs_per_trial), "--max-concurrent", "1"]
    # The driver's environment is the node's (cli_env copies it): the AWS variables, no S3 option.
    # Tune uploads its state every 10 s at first ("auto"); every second here, so that the kill
    # below, once the bucket's state names both trials, lands close to an upload.
    driver = subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=tmp_path,
                              env=cli_env() | {"TUNE_GLOBAL_CHECKPOINT_S": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # One trial at a time: kill once the first has checkpointed its last epoch and the second
        # has checkpointed at least once (checkpoints go to the bucket as each epoch reports).
        deadline = time.monotonic() + 1500  # Ray's start-up and the first epochs, on a loaded machine
        while time.monotonic() < deadline:
            progress = sorted(s3_checkpoints(s3, sweep).values(), key=max, reverse=True)
            # The second at its second checkpoint or later. A SIGKILL after Tune deletes a checkpoint
            # and before its next state upload leaves a state naming the deleted one (a Tune race seen
            # here in CI): --resume mends that from the newer checkpoints (docs/cluster.md).
            # And once Tune's state in the bucket names both trials: the driver uploads it every
            # few seconds, and a state saved before the second trial existed makes --resume start
            # that trial anew (nothing lost, its epochs repeated), which this test would not see.
            if (len(progress) == 2 and max(progress[0]) == epochs_per_trial - 1 and max(progress[1]) >= 1
                    and s3_state_trials(s3, sweep) == 2):
                break
            assert driver.poll() is None, "the sweep ended before it could be interrupted"
            time.sleep(0.5)
        else:
            pytest.fail("the sweep made no progress in 1500 s")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    held = s3_checkpoints(s3, sweep)  # what the bucket holds once the driver is dead

    proc = run_search("--resume", "--experiment", "smoke", "--storage", storage, cwd=tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "sweep smoke: 2 trials, 0 failed" in proc.stdout
    after = s3_trial_reports(s3, sweep)
    assert len(after) == 2
    runs = {name: {r["resumed_from_epoch"] for r in reports} for name, reports in after.items()}
    (finished,) = [name for name, starts in runs.items() if starts == {0}]
    (resumed,) = [name for name in after if name != finished]
    # The trial that had finished did not run again.
    assert [r["epoch"] for r in after[finished]] == all_epochs
    # The other continued from its last checkpoint in S3, not from scratch. Tune records a trial's
    # latest checkpoint in the experiment state every num_to_keep (2) checkpoints, so a SIGKILL
    # may lose the last one or two epochs, which run again (at least once); none is skipped.
    (resumed_from,) = runs[resumed] - {0}
    first = [r["epoch"] for r in after[resumed] if r["resumed_from_epoch"] == 0]
    second = [r["epoch"] for r in after[resumed] if r["resumed_from_epoch"] == resumed_from]
    # It resumed from a checkpoint the bucket held when the driver died (index k is epoch k + 1),
    # skipping none. Checkpoints upload as each epoch reports, the trial's result.json on Tune's
    # own sync period, so on a quiet machine the first run's reports in the bucket can stop before
    # the checkpoint it resumed from (measured: reports 1-2, resumed from epoch 4).
    assert first == list(range(1, len(first) + 1))
    assert 1 <= resumed_from <= max(held[resumed]) + 1, (resumed_from, held)
    assert second == list(range(resumed_from + 1, epochs_per_trial + 1))
    print("bucket after the resumed sweep:\n" + "\n".join(s3.keys(bucket[len("s3://"):])))


class InterruptOnce(tune.Callback):
    """Stop the sweep's driver (as Ctrl-C does) when the first trial completes, once."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.marker):
            with open(self.marker, "w") as fh:
                fh.write("interrupted")
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.slow  # two searches of pix3d trainings one at a time: 103 s measured on the shared 2-core machine
def test_a_search_resumed_from_s3_continues_its_study(ray_session, s3, tiny_data, tmp_path):
    from search.run import run_sweep as run_search_sweep

    folder, cache = tiny_data
    data = prepare(folder, QUICK_SIZE, cache_dir=cache, progress=False, log=lambda _: None)
    grid = replace(sized_grid(get_grid("optuna"), 4), max_concurrent=1)  # one at a time: a clean cut
    space = grid.param_space(None, BUDGETS["quick"])
    space.update(epochs=1, cpus_per_trial=1, gpus_per_trial=0)
    storage = f"{_bucket(s3, 'search')}/runs"
    run_search_sweep(grid, space, data, storage=storage, experiment="cut",
                     callbacks=[InterruptOnce(str(tmp_path / "m"))])
    location = study_location(experiment_path(storage, "cut"), "cut")
    before = optuna.load_study(study_name="cut", storage=open_study_storage(location.storage)).trials
    assert 1 <= len(before) < 4  # interrupted: the study is in the bucket, part done

    results = run_search_sweep(grid, space, data, storage=storage, experiment="cut", resume=True)
    after = optuna.load_study(study_name="cut", storage=open_study_storage(location.storage)).trials
    assert [t.number for t in after] == [0, 1, 2, 3] and len(results) == 4
    assert [t.params for t in after[:len(before)]] == [t.params for t in before]  # the same trials, grown
    assert all(t.state.name == "COMPLETE" for t in after)


# ------------------------------------------------------------------------- a node that shares no disk


@pytest.mark.slow  # a loopback cluster of three Ray nodes and a smoke sweep: 73 s measured (17 min under load 30)
def test_a_worker_without_shared_disk_checkpoints_to_s3_and_its_trial_resumes_on_another(s3, tiny_data, tmp_path):
    import tempfile

    from tests.test_cluster import free_port as ray_port
    from tests.test_cluster import start_node, stop_group

    folder, cache = tiny_data  # on the driver's disk only: trials get the data from Ray's object store
    bucket = _bucket(s3, "nodisk")
    storage, sweep = f"{bucket}/runs", f"{bucket}/runs/smoke"
    epochs = 12  # room to kill a trial between its second checkpoint and its end (an epoch here is ~0.2 s)
    port = ray_port()
    # The token in the environment, not in ~/.ray/auth_token: the workers have HOMEs of their own.
    base = cli_env() | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex(),
                        "RAY_USAGE_STATS_ENABLED": "0"}
    # The head runs no trials (0 CPUs): every trial is placed on a worker.
    head_env = {k: v for k, v in base.items() if not k.startswith(("AWS_", "MLFLOW_S3"))}
    head_tmp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's socket paths

    def worker(name: str) -> tuple[int, str]:
        """A worker in its own working folder, temp dir and HOME, reaching only S3 (its AWS
        variables); the node's process group and its temp dir."""
        home = tmp_path / name
        (home / "tmp").mkdir(parents=True)
        temp_dir = tempfile.mkdtemp(prefix=f"{name[:2]}-", dir="/tmp")
        env = head_env | s3.env | {"HOME": str(home), "TMPDIR": str(home / "tmp")}
        group = start_node(["--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                            "--temp-dir", temp_dir, "--dashboard-agent-listen-port", str(ray_port()),
                            "--disable-usage-stats"], env, cwd=home)
        return group, temp_dir

    groups, temp_dirs = [], [head_tmp]
    driver = None
    try:
        groups.append(start_node(["--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "0",
                                  "--temp-dir", head_tmp, "--include-dashboard", "false",
                                  "--dashboard-port", str(ray_port()), "--dashboard-agent-listen-port", str(ray_port()),
                                  "--disable-usage-stats"], head_env))
        first, first_tmp = worker("worker-a")
        groups.append(first)
        temp_dirs.append(first_tmp)
        driver_dir = tmp_path / "driver"
        driver_dir.mkdir()
        log = driver_dir / "driver.log"
        with open(log, "w") as out:
            driver = subprocess.Popen(
                [sys.executable, "-m", "search.run", "--grid", "smoke", "--address", f"127.0.0.1:{port}",
                 "--data", str(folder), "--cache", str(cache), "--budget", "quick", "--epochs", str(epochs),
                 "--storage", storage, "--no-mlflow", "--cpus-per-trial", "1"],
                cwd=driver_dir, env=base, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        # Kill the worker once a trial has two checkpoints in the bucket and at least four epochs
        # still to run: a trial that already finished (quick epochs, a slow poll) would not move,
        # and the next trial might not have reported yet (CI once lost that race).
        deadline = time.monotonic() + 900
        while not any(1 <= max(c) <= epochs - 5 for c in s3_checkpoints(s3, sweep).values()):
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint reached the bucket in 900 s:\n" + log.read_text()[-3000:]
            time.sleep(0.1)
        os.killpg(first, signal.SIGKILL)
        second, second_tmp = worker("worker-b")
        groups.append(second)
        temp_dirs.append(second_tmp)
        driver.wait(timeout=900)
        out = log.read_text()
        assert driver.returncode == 0, out[-4000:]
        assert "sweep smoke: 2 trials, 0 failed" in out
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        for group in reversed(groups):
            stop_group(group)
        for temp_dir in temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)

    reports = s3_trial_reports(s3, sweep)
    assert len(reports) == 2 and all(rs[-1]["epoch"] == epochs for rs in reports.values())
    moved = [rs for rs in reports.values() if len({r["node_id"] for r in rs}) == 2]
    assert len(moved) == 1, "no trial (or both) ran on two workers: " + json.dumps(
        {name: [(r["epoch"], r["resumed_from_epoch"], r["node_id"][:8]) for r in rs] for name, rs in reports.items()})
    (moved,) = moved
    before = [r for r in moved if r["resumed_from_epoch"] == 0]
    after = [r for r in moved if r["resumed_from_epoch"] > 0]
    # On the second worker, from the checkpoint the first left in S3 (not from scratch), to the end.
    resumed_from = after[0]["resumed_from_epoch"]
    assert {r["node_id"] for r in before}.isdisjoint({r["node_id"] for r in after})
    assert 1 <= resumed_from <= before[-1]["epoch"]
    assert [r["epoch"] for r in after] == list(range(resumed_from + 1, epochs + 1))
