"""Faults, second round (issue 26, 3, 4, 6): one sweep per folder, signals and full disks end
cleanly, a Ray start-up timeout is one line, and what a local Ray listens on.

Fast tests use a live foreign process as a lock's holder and a real Ray start-up made to time
out; the slow ones run real `search.run` sweeps (a subprocess, signalled while it trains, a
second sweep started beside it, and one on a full 2 MiB tmpfs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.sweep_lock import LOCK_FILE
from tests.test_faults import assert_one_clean_line, full_disk, run_entry  # noqa: F401 - a fixture
from tests.test_search import cli_env, make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- 3. the lock


def _hold_lock(sweep: Path, pid: int, host: str | None = None) -> Path:
    sweep.mkdir(parents=True, exist_ok=True)
    lock = sweep / LOCK_FILE
    lock.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid,
                                "started": "2026-12-05 07:00:00 UTC", "command": "another sweep"}))
    return lock


def test_a_second_sweep_is_refused_naming_the_live_holder(tmp_path, monkeypatch, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = _hold_lock(tmp_path / "results" / "smoke", holder.pid)
        monkeypatch.chdir(tmp_path)
        code, err = run_entry("search.run", ["--grid", "smoke", "--storage", str(tmp_path / "results"),
                                             "--no-mlflow"])
        assert_one_clean_line(code, err, f"is in use by another sweep (host {socket.gethostname()}, "
                                         f"pid {holder.pid}, started 2026-12-05 07:00:00 UTC)")
        assert "one sweep per folder" in err
        assert json.loads(lock.read_text())["pid"] == holder.pid  # the holder's lock is left alone
        assert sorted(p.name for p in lock.parent.iterdir()) == [LOCK_FILE]  # nothing else started
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_on_another_host_is_never_taken_over(tmp_path, monkeypatch, capsys):
    lock = _hold_lock(tmp_path / "results" / "smoke", 1, host="some-other-node")
    monkeypatch.chdir(tmp_path)
    code, err = run_entry("search.run", ["--grid", "smoke", "--resume", "--storage", str(tmp_path / "results"),
                                         "--no-mlflow"])
    assert_one_clean_line(code, err, "host some-other-node, pid 1")
    assert f"if that sweep is gone from host some-other-node, delete {lock}" in err


def test_a_stale_lock_is_taken_over_with_a_warning_and_released(tmp_path, monkeypatch, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    lock = _hold_lock(tmp_path / "results" / "smoke", gone.pid)
    monkeypatch.chdir(tmp_path)
    # --resume of a folder with no Tune state: the lock is taken over, then the resume is refused.
    code, err = run_entry("search.run", ["--grid", "smoke", "--resume", "--storage", str(tmp_path / "results"),
                                         "--no-mlflow"])
    lines = err.strip().splitlines()
    assert lines[0] == (f"warning: {lock}: taking over the lock of a sweep that is gone "
                        f"(host {socket.gethostname()}, pid {gone.pid}, started 2026-12-05 07:00:00 UTC)")
    assert lines[1].startswith("error: --resume: no Tune sweep to restore") and len(lines) == 2 and code == 1
    assert not lock.exists()  # released: the next sweep starts without a warning


def test_a_refused_start_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_entry("search.run", ["--grid", "smoke", "--resume", "--storage", str(tmp_path / "none"),
                                         "--no-mlflow"])
    assert code == 1 and "no Tune sweep to restore" in err
    assert not (tmp_path / "none").exists()


# ------------------------------------------------------------- 4. a Ray start-up timeout


def test_ray_startup_timeout_is_one_line_that_says_what_to_try(tmp_path):
    """A real Ray start-up made to time out: its GCS gets no time to write its port file."""
    env = dict(cli_env(), RAY_gcs_server_port_wait_time_s="0")
    code = ("from pix3d.cli import run_cli\n"
            "from search.cluster import init_ray\n"
            "run_cli(lambda argv: init_ray(None))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and "Ray did not start on this machine in time (Timed out" in errors[0]
    assert "RAY_gcs_server_port_wait_time_s=120" in errors[0] and "--address" in errors[0]


# ------------------------------------------------------------- 6. what a local Ray listens on


def _listening(pid: int) -> set[tuple[str, str]]:
    import psutil

    found = set()
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((proc.name(), conn.laddr.ip))
        except psutil.Error:
            continue
    return found


def _exposed(addresses: set[tuple[str, str]]) -> list[tuple[str, str]]:
    loopback = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    return sorted((name, ip) for name, ip in addresses if ip not in loopback)


def test_session_ray_listens_on_loopback_only(ray_session):
    """The suite's own Ray starts through search.cluster.start_local_ray: nothing beyond loopback."""
    addresses = _listening(os.getpid())
    assert {"gcs_server", "raylet"} <= {name for name, _ in addresses}, sorted(addresses)
    assert _exposed(addresses) == [], sorted(addresses)


@pytest.mark.slow  # a Ray of its own in a child process (8 s); the session's Ray is checked above
def test_local_ray_is_private_loopback_and_token_auth(tmp_path):
    """search.run's local Ray (init_ray(None)), with a worker running: every listening socket
    of its process tree is on loopback, there is no dashboard, and token auth is on; the
    switch that keeps it on loopback does not leak into the driver's environment."""
    code = ("import os, json, ray\n"
            "from search.cluster import init_ray, LOOPBACK_SWITCH\n"
            "from tests.test_faults_round2 import _listening\n"
            "init_ray(None)\n"
            "ray.get(ray.remote(lambda: 1).remote())\n"
            "from ray._private.authentication.authentication_utils import is_token_auth_enabled\n"
            "print(json.dumps({'dashboard': ray._private.worker.global_worker.node.webui_url,\n"
            "                  'token': bool(is_token_auth_enabled()),\n"
            "                  'leaked': LOOPBACK_SWITCH in os.environ,\n"
            "                  'listening': sorted(_listening(os.getpid()))}))\n")
    env = cli_env()
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    listening = {tuple(pair) for pair in seen["listening"]}
    assert {"gcs_server", "raylet"} <= {name for name, _ in listening}, seen["listening"]
    assert _exposed(listening) == [], seen["listening"]
    assert not seen["dashboard"] and seen["token"] is True and seen["leaked"] is False


# ------------------------------------------------------ 4. signals and a full disk, real sweeps


def _start_sweep(root: Path, storage: Path, *extra: str) -> subprocess.Popen:
    folder, cache = root / "pix3d-tiny", root / "cache"
    return subprocess.Popen([sys.executable, "-m", "search.run", "--grid", "smoke", "--data", str(folder),
                             "--cache", str(cache), "--budget", "quick", "--epochs", "3", "--storage",
                             str(storage), "--no-mlflow", *extra],
                            cwd=root, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("round2")
    make_tiny_dataset(root)
    return root


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError("timed out waiting for the sweep")


@pytest.mark.slow  # one real smoke sweep per signal, stopped while it trains (~1-3 min each on a shared machine)
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_sweep_with_one_resume_line(tiny_data, tmp_path, signum, code):
    from search.resume_check import verify_resume_state

    storage = tmp_path / "results"
    sweep = _start_sweep(tiny_data, storage)
    folder = storage / "smoke"
    try:
        # Two real sweeps on one folder: the second (same command) is refused naming the first.
        _wait_for(lambda: (folder / LOCK_FILE).exists(), sweep)
        second = _start_sweep(tiny_data, storage)
        _, second_err = second.communicate(timeout=300)
        assert_one_clean_line(second.returncode, second_err, f"pid {sweep.pid}")
        # Then stop the first while its trials train (Tune has saved its state and started them).
        _wait_for(lambda: any(folder.glob("experiment_state-*.json")) and any(folder.glob("train_pose_*/")), sweep)
        sweep.send_signal(signum)
        _, err = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert sweep.returncode == code, err[-3000:]
    assert "Traceback" not in err and "SIGTERM received" not in err and "Tuner.restore" not in err
    assert len(errors) == 1 and f"interrupted by {signal.Signals(signum).name}" in errors[0]
    assert f"resume with: python -m search.run --resume --experiment smoke --storage {storage}" in errors[0]
    assert not (folder / LOCK_FILE).exists()
    assert verify_resume_state(folder, None) == 2  # a whole state to resume from


@pytest.mark.slow  # one real smoke sweep onto a 2 MiB tmpfs that its first checkpoint fills (~2-3 min idle,
# over 15 min when the machine is shared by many: Ray's workers run niced)
def test_a_full_disk_during_a_sweep_is_one_line_naming_the_path(tiny_data, full_disk):
    sweep = _start_sweep(tiny_data, full_disk, "--max-failures", "0")
    try:
        _, err = sweep.communicate(timeout=1800)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert sweep.returncode == 1, err[-3000:]
    # Ray prints each failed trial's own traceback (from its worker); the driver ends on one line.
    assert "EOFError" not in err and err.strip().splitlines()[-1] == errors[-1], err[-3000:]
    assert len(errors) == 1 and f"{full_disk}/smoke: disk full during the sweep" in errors[0], errors
    assert "resume with: python -m search.run --resume" in errors[0]
