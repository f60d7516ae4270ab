"""search.run and trainables.pose on a real local Ray runtime, real pix3d.train.fit, tiny data.

The data is a small synthetic Pix3D folder rendered by the test (real PNGs, all four
modalities) and prepared at the quick budget's 64 px. Trials are the `smoke` grid's: a few
dozen training images, so one trial takes seconds on a loaded 2-core machine.
"""

from __future__ import annotations

import atexit
import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray import tune

from pix3d.errors import Pix3DError
from pix3d.data.prepare import prepare
from pix3d.render.synthetic import SyntheticConfig, generate
from pix3d.train import BUDGETS
from search.grids import get_grid
from search.cluster import check_cluster_resources
from search.run import run_sweep
from tests.inproc import run_module

REPO = Path(__file__).resolve().parents[1]
QUICK_SIZE = BUDGETS["quick"]["image_size"]


_TINY_MASTER: list[Path] = []   # the one rendered and prepared copy of this pytest process


def _tiny_master() -> Path:
    """Render and prepare the tiny set once per process (~6 s of a loaded 2-core machine, ten
    callers); removed when the process exits."""
    if not _TINY_MASTER:
        master = Path(tempfile.mkdtemp(prefix="pix3d-tiny-master-"))
        atexit.register(shutil.rmtree, master, True)
        generate(master / "pix3d-tiny", SyntheticConfig(n=84, seed=0, size=96), workers=1, progress=False, log=None)
        prepare(master / "pix3d-tiny", QUICK_SIZE, cache_dir=master / "cache", progress=False, log=lambda _: None)
        _TINY_MASTER.append(master)
    return _TINY_MASTER[0]


def make_tiny_dataset(root: Path) -> tuple[Path, Path]:
    """84 synthetic images (12 per category, so the seed split keeps one val image each) at
    `root`, with their cache prepared at the quick size: a private copy of the process's one
    rendering (copy2 keeps the files' stamps, and the cache key does not hash the folder's
    path, so the copied cache is a hit for the copied folder)."""
    folder, cache = root / "pix3d-tiny", root / "cache"
    master = _tiny_master()
    shutil.copytree(master / "pix3d-tiny", folder)
    shutil.copytree(master / "cache", cache)
    return folder, cache


def cli_env() -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RAY_ADDRESS", None)  # never join someone else's cluster by accident
    return env


def run_search(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "search.run", *args], cwd=cwd, env=cli_env(),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # what it printed says where it hung
        def tail(data) -> str:
            text = data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
            return re.sub(r"[^\n]*\r", "", text)[-3000:]  # progress bars redrawn with \r: their last state
        pytest.fail(f"search.run {' '.join(args)} ran past {timeout:g}s\n--- stdout:\n{tail(exc.stdout)}"
                    f"\n--- stderr:\n{tail(exc.stderr)}")


def trial_reports(experiment_dir: Path) -> dict[str, list[dict]]:
    """Trial folder -> the reports it made, in order (from Tune's result.json)."""
    out = {}
    for result in sorted(experiment_dir.glob("train_pose_*/result.json")):
        out[result.parent.name] = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    return out


def trial_epochs(experiment_dir: Path) -> dict[str, list[int]]:
    """Trial folder -> the epochs it reported, in order."""
    return {name: [int(r["epoch"]) for r in reports] for name, reports in trial_reports(experiment_dir).items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-data")
    folder, cache = make_tiny_dataset(root)
    data = prepare(folder, QUICK_SIZE, cache_dir=cache, progress=False, log=lambda _: None)
    return folder, cache, data


# Ray: the session-wide `ray_session` fixture of conftest.py (one local instance for the suite).


# ------------------------------------------------------------------------- bad input, no Ray


def run_main(argv) -> tuple[int, str, str]:
    """`python -m search.run *argv` in this process (tests.inproc): (exit code, stdout, stderr)."""
    proc = run_module("search.run", *argv)
    return proc.returncode, proc.stdout, proc.stderr


def test_unknown_grid_lists_the_known_ones(capsys):
    code, _, err = run_main(["--grid", "ablatoin"])
    assert code == 2
    assert err.startswith("error: unknown grid 'ablatoin'; choose from ablation, lr, optuna")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_zero_trials_is_a_usage_error(capsys, tmp_path):
    code, _, err = run_main(["--grid", "smoke", "--seeds", "0", "--storage", str(tmp_path / "s")])
    assert code == 2 and "launches zero trials" in err


def test_unwritable_storage_names_the_path(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_main(["--grid", "smoke", "--storage", str(blocker / "results")])
    assert code == 1
    assert err.startswith(f"error: --storage {blocker / 'results'}: not a writable folder")


def test_resume_with_no_sweep_there(capsys, tmp_path):
    code, _, err = run_main(["--grid", "smoke", "--resume", "--storage", str(tmp_path / "empty")])
    assert code == 1 and "no Tune sweep to restore at" in err and str(tmp_path / "empty" / "smoke") in err


def test_unreachable_address_fails_within_a_bounded_time(capsys, tmp_path):
    started = time.monotonic()
    code, _, err = run_main(["--grid", "smoke", "--address", "127.0.0.1:1", "--storage", str(tmp_path)])
    assert time.monotonic() - started < 15
    assert code == 1 and err.startswith("error: --address 127.0.0.1:1: no Ray cluster reachable")


def test_an_address_that_is_not_a_ray_cluster_fails_within_the_join_timeout(tiny, monkeypatch, capsys, tmp_path):
    """A port that accepts TCP but is no Ray GCS (here a plain listening socket): ray.init
    would retry for minutes; the join probe gives up after JOIN_TIMEOUT_S."""
    import socket

    import search.cluster

    folder, cache, _ = tiny
    monkeypatch.setattr(search.cluster, "JOIN_TIMEOUT_S", 3.0)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # init_ray would set it for the process
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        code, _, err = run_main(["--grid", "smoke", "--address", address, "--data", str(folder),
                                 "--cache", str(cache), "--budget", "quick", "--storage", str(tmp_path)])
    assert time.monotonic() - started < 40
    assert code == 1 and err.startswith(f"error: --address {address}: ")
    assert not (tmp_path / "smoke").exists()  # nothing half-written


@pytest.mark.parametrize("option, value", [("--cpus-per-trial", "0"), ("--gpus-per-trial", "-1"),
                                           ("--max-concurrent", "0"), ("--epochs", "0"), ("--budget", "huge")])
def test_bad_numbers_are_usage_errors(capsys, option, value):
    code, _, err = run_main(["--grid", "smoke", option, value])
    assert code == 2 and option in err


def test_dry_run_prints_every_trial_and_writes_nothing(capsys, tmp_path):
    storage = tmp_path / "never-created"
    code, out, _ = run_main(["--grid", "ablation", "--seeds", "2", "--budget", "quick", "--dry-run",
                             "--storage", str(storage)])
    assert code == 0
    trial_lines = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(trial_lines) == get_grid("ablation").size(2) == 16
    assert sum("model=separate_net" in line and "lr=0.001" in line for line in trial_lines) == 8
    assert "grid ablation: 16 trials" in out and not storage.exists()


@pytest.mark.parametrize("budget, seeds", [("quick", 2), ("paper", 3)])
def test_default_seeds_follow_the_budget(capsys, tmp_path, budget, seeds):
    """Without --seeds the CPU (quick) ablation runs 2 seeds, the paper budget the grid's 3."""
    code, out, _ = run_main(["--grid", "ablation", "--budget", budget, "--dry-run",
                             "--storage", str(tmp_path / "s")])
    n = get_grid("ablation").size(seeds)
    assert code == 0 and f"grid ablation: {n} trials" in out
    assert {f"seed={s}" for s in range(seeds)} == {w for w in out.split() if w.startswith("seed=")}


def test_list_shows_sizes(capsys):
    code, out, _ = run_main(["--list", "--seeds", "3"])
    assert code == 0 and any(line.split()[:2] == ["ablation", "24"] for line in out.splitlines())


# ------------------------------------------------------------------------- real Ray


def test_a_trial_larger_than_any_node_fails_at_once(ray_session):
    with pytest.raises(Pix3DError, match="has no GPUs"):
        check_cluster_resources(1, 0.25)
    with pytest.raises(Pix3DError, match="no Ray node can host a trial of 3 CPU"):
        check_cluster_resources(3, 0)
    check_cluster_resources(2, 0)  # fits: no error


def test_the_crash_aid_refuses_epoch_1_before_any_training():
    """At epoch 1 there is no checkpoint, so every retry would crash again: refused up front."""
    from trainables.pose import crash_hook

    with pytest.raises(Pix3DError, match="crash_once_at_epoch must be >= 2"):
        crash_hook({"crash_once_at_epoch": 1}, resumed_from_epoch=0)
    crash_hook({"crash_once_at_epoch": 2}, resumed_from_epoch=1)(2)  # a retry: never crashes


# Concurrent in the slow suite: one at a time covers the crash, the retry and the reused actor.
@pytest.mark.parametrize("cpus_per_trial", [pytest.param(1, marks=pytest.mark.slow), 2],
                         ids=["concurrent", "one-at-a-time"])
def test_smoke_through_the_python_api_with_a_crash_retried_from_its_checkpoint(ray_session, tiny, tmp_path,
                                                                             cpus_per_trial):
    """Each trial crashes once before reporting epoch 2; Tune retries it from the epoch-1 checkpoint.

    One at a time (2 CPUs per trial on the 2-CPU session) the order is fixed: A crashes and is
    requeued behind B, B crashes, A's retry finishes and its actor is cached, and B's retry runs
    in that reused actor, where Ray gives the trial another directory than a fresh actor does.
    The testing aid once kept its "crashed already" marker there and crashed such retries twice."""
    _, _, data = tiny
    grid = get_grid("smoke")
    space = grid.param_space(1, BUDGETS["quick"])
    # 16 training images: what is checked is the crash, the retry and the epochs, not learning.
    space.update(epochs=3, cpus_per_trial=cpus_per_trial, gpus_per_trial=0, crash_once_at_epoch=2,
                 max_train_images=16)
    results = run_sweep(grid, space, data, storage=str(tmp_path), experiment="crash", max_failures=1,
                        cpus_per_trial=cpus_per_trial)

    def failures(result):
        path = Path(result.path) / "error.txt"
        return path.read_text() if path.exists() else "(no error.txt)"

    assert len(results) == grid.size(1) == 2
    assert not results.errors, "\n".join(failures(r) for r in results if r.error)
    assert {r.config["model"] for r in results} == {"combined_net", "separate_net"}
    pids = []
    for result in results:
        trial_dir = Path(result.path)
        # Resumed from the epoch-1 checkpoint: no epoch reported twice, the retry started at 2.
        # (Tune sometimes drops the pre-crash row from its result log, so [2, 3] is possible.)
        reported = [int(e) for e in result.metrics_dataframe["epoch"]]
        assert reported == sorted(set(reported)) and reported[-1] == 3 and 2 in reported
        assert result.metrics["resumed_from_epoch"] == 1, "the testing aid never crashed this trial"
        assert result.metrics["epoch"] == 3 and 0.0 <= result.metrics["val_azimuth_acc"] <= 1.0
        assert result.checkpoint is not None
        assert result.metrics["node_id"] == ray_session.get_runtime_context().get_node_id()
        assert "testing aid: crash_once_at_epoch=2" in (trial_dir / "error.txt").read_text()
        pids.append(result.metrics["pid"])
    if cpus_per_trial == 2:
        assert len(set(pids)) == 1, f"the second retry did not run in the first one's reused actor: {pids}"


def test_a_trial_in_a_reused_actor_computes_what_a_fresh_one_does(ray_session, tiny, tmp_path):
    """run_sweep reuses a finished trial's actor: the second of two identical trials runs in the
    first one's process (after it trained and set torch's state) and must report the same numbers."""
    _, _, data = tiny
    grid = get_grid("smoke")
    space = grid.param_space(1, BUDGETS["quick"])
    space.update(model="separate_net", seed=tune.grid_search([0, 0]), cpus_per_trial=1, gpus_per_trial=0,
                 max_train_images=16)  # equal numbers need no more than a few batches
    results = run_sweep(grid, space, data, storage=str(tmp_path), experiment="reuse", max_concurrent=1)
    assert len(results) == 2 and not results.errors
    first, second = (result.metrics_dataframe for result in results)
    assert set(first["pid"]) == set(second["pid"]) and len(set(first["pid"])) == 1, "the actor was not reused"
    for key in ("train_loss", "val_loss", "val_azimuth_acc", "val_elevation_acc", "val_inplane_acc"):
        assert list(first[key]) == list(second[key]), key




@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.slow)])
def test_resume_restores_a_trial_whose_named_checkpoint_tune_had_deleted(ray_session, tiny, tmp_path, capsys,
                                                                       request, where):
    """Tune deletes a checkpoint beyond the kept ones at once and saves the state naming the
    newer ones a moment later: a driver killed in between left a state naming a deleted
    checkpoint, and --resume failed that trial on every retry (a CI run with S3). Here the
    state names the only checkpoint of a trial that crashed, and the folder then holds a newer
    one in its place, as the killed driver leaves it; --resume must restore from that."""
    import pyarrow.fs as pafs

    from analysis.tune_files import latest_state_path, open_folder, read_experiment_state

    _, _, data = tiny
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        storage = s3.create_bucket(f"mend-{os.getpid()}-{time.monotonic_ns() % 10**6}") + "/runs"
    else:
        storage = str(tmp_path)
    grid = get_grid("smoke")
    space = grid.param_space(1, BUDGETS["quick"])
    space.update(model="separate_net", epochs=3, cpus_per_trial=1, gpus_per_trial=0, crash_once_at_epoch=2,
                 max_train_images=16)
    (crashed,) = run_sweep(grid, space, data, storage=storage, experiment="mend", max_failures=0)
    assert crashed.error is not None  # crashed before epoch 2, after the epoch-1 checkpoint
    folder = open_folder(f"{storage}/mend")
    (entry,) = read_experiment_state(folder, latest_state_path(folder)).trials
    assert entry.checkpoints == ["checkpoint_000000"] and entry.status == "ERROR"
    trial = folder.join(entry.relative_logdir)
    old = posixpath.join(trial, "checkpoint_000000", "checkpoint.pt")
    new = posixpath.join(trial, "checkpoint_000001", "checkpoint.pt")
    folder.fs.create_dir(posixpath.dirname(new))
    folder.fs.copy_file(old, new)
    folder.fs.delete_dir(posixpath.dirname(old))
    capsys.readouterr()

    (result,) = run_sweep(grid, space, data, storage=storage, experiment="mend", resume=True)
    out = capsys.readouterr().out
    assert f"note: trial {entry.trial_id}: its saved state names checkpoint_000000" in out
    assert "restoring it from checkpoint_000001" in out
    assert result.error is None, result.error
    assert result.metrics["resumed_from_epoch"] == 1 and result.metrics["epoch"] == 3
    # It went on numbering after the checkpoint it restored: epochs 2 and 3 are 000001 and 000002
    # (the stand-in overwritten), and Tune kept those two, deleting the mended 000000.
    kept = [posixpath.basename(i.path) for i in folder.fs.get_file_info(pafs.FileSelector(trial))]
    assert sorted(n for n in kept if n.startswith("checkpoint_")) == ["checkpoint_000001", "checkpoint_000002"]
    assert not [n for n in kept if ".mending-" in n]  # a local staging copy was renamed into place

def test_smoke_grid_end_to_end_through_the_cli(tiny, tmp_path):
    folder, cache, _ = tiny
    storage = tmp_path / "results"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_search("--grid", "smoke", "--data", str(folder), "--cache", str(cache), "--budget", "quick",
                      "--storage", str(storage), "--mlflow-uri", mlflow_uri, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    sweep = storage / "smoke"
    epochs = trial_epochs(sweep)
    assert len(epochs) == 2 and all(e == [1, 2] for e in epochs.values())
    assert len(list(sweep.glob("train_pose_*/checkpoint_*/checkpoint.pt"))) == 4  # 2 kept per trial
    saved = json.loads((sweep / "search_run.json").read_text())
    assert saved["grid"] == "smoke" and saved["data"] == str(folder)
    summary = proc.stdout[proc.stdout.index("sweep smoke: 2 trials, 0 failed"):]
    rows = [line for line in summary.splitlines() if line.startswith(("combined_net", "separate_net"))]
    assert len(rows) == 2 and all("rgb" in row and "ok" in row for row in rows)
    assert (tmp_path / "mlflow.db").exists()
    table = (tmp_path / "table_out" / "smoke" / "table.md").read_text()  # rebuilt from MLflow
    assert "combined_net" in table and "separate_net" in table


@pytest.mark.slow  # two CLI runs with their own Ray start-up: ~100 s on a shared 2-core machine
def test_killed_driver_is_finished_by_resume_without_rerunning_finished_trials(tiny, tmp_path):
    folder, cache, _ = tiny
    # Enough epochs that the second trial is still running when the driver is killed: a smoke
    # epoch takes well under a second on an idle machine, and the poll below has 0.5 s lag.
    epochs_per_trial = 20
    all_epochs = list(range(1, epochs_per_trial + 1))
    storage = tmp_path / "results"
    sweep = storage / "smoke"
    args = ["--grid", "smoke", "--data", str(folder), "--cache", str(cache), "--budget", "quick",
            "--storage", str(storage), "--no-mlflow", "--epochs", str(epochs_per_trial), "--max-concurrent", "1"]
    driver = subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=tmp_path, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # One trial at a time: kill once the first has finished and the second has begun.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            progress = sorted(trial_epochs(sweep).values(), key=len, reverse=True)
            if len(progress) == 2 and progress[0] == all_epochs and progress[1]:
                break
            assert driver.poll() is None, "the sweep ended before it could be interrupted"
            time.sleep(0.5)
        else:
            pytest.fail("the sweep made no progress in 240 s")
    finally:
        # SIGKILL the driver and the Ray runtime it started (its own process group).
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = trial_epochs(sweep)
    finished = [name for name, e in before.items() if e == all_epochs]
    assert len(finished) == 1

    proc = run_search("--resume", "--experiment", "smoke", "--storage", str(storage), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    after = trial_epochs(sweep)
    assert set(after) == set(before)  # no trial started anew
    assert after[finished[0]] == all_epochs  # the finished one did not run again
    (unfinished,) = set(after) - set(finished)
    ran_before, resumed_from = before[unfinished], trial_reports(sweep)[unfinished][-1]["resumed_from_epoch"]
    # From its checkpoint, not from scratch. Tune writes a trial's latest checkpoint into the
    # experiment state periodically, so a SIGKILL can lose the last one or two: those epochs run
    # again (at-least-once, seen once in CI: epoch 2 twice). Nothing before that checkpoint
    # repeats and nothing is skipped.
    assert 1 <= resumed_from <= ran_before[-1], (resumed_from, ran_before)
    assert after[unfinished] == ran_before + list(range(resumed_from + 1, epochs_per_trial + 1))
    assert "sweep smoke: 2 trials, 0 failed" in proc.stdout


def test_sweep_budgets_are_the_training_budgets():
    """search.options lists the budgets without importing torch; it must name every budget
    pix3d.train defines (a new budget must be selectable with search.run --budget)."""
    from pix3d.train import BUDGETS
    from search.options import SWEEP_BUDGETS

    assert set(SWEEP_BUDGETS) == {"auto", *BUDGETS}
