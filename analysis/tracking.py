"""Log Ray Tune sweeps to MLflow as they run: the Tune callback on the driver.

`MLflowTrackingCallback` turns Tune's hooks (trial started, result reported, trial ended,
sweep ended) into calls of the sweep's `SweepLogger` (analysis.sweep_logger): one parent run
per sweep, one child run per trial. `analysis.sync` drives the same logger to replay a
finished sweep from Ray's storage, so live logging and a replay produce the same runs.

Off the trials' path: the hooks only queue the logging (copies of what Tune hands them), and
one thread logs it in order, so neither Tune's event loop nor a trial waiting for its report
to be taken waits on MLflow. The sweep's end waits until everything queued is logged, so the
closing table reads complete runs.

Degraded mode: a sweep must never fail because MLflow is down. Any MLflow error turns the
logger off for the rest of the sweep with ONE warning that says how to replay; results stay
in Ray's storage (`result.json` per trial) for `python -m analysis.sync`.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from analysis.mlflow_store import check_reachable
from analysis.sweep_logger import SweepInfo, SweepLogger, code_version, make_sweep_id, normalise_storage_path, save_sweep_info
from pix3d.errors import one_line

try:  # ray is only needed for the callback; sync and the table work without a Ray install
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - ray is a project dependency
    _TuneCallback = object

STATE_KIND = "pix3d.mlflow_tracking"   # marks our entry in Tune's callback-state file


class MLflowUnavailableWarning(UserWarning):
    """MLflow could not be reached; the sweep goes on and can be replayed with analysis.sync."""


def _read_error(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        if path and Path(path).is_file():
            return Path(path).read_text(errors="replace").strip()
    except OSError:
        pass
    return "trial failed (no error file)"


def _trial_key(trial) -> str | None:
    return getattr(trial, "experiment_tag", None) or None


LOGGING_NICENESS = 10   # the logging thread's nice value (Linux): trials come first on a busy machine


def _yield_to_trials() -> None:
    """Lower the calling thread's scheduling priority where the OS allows it per thread (Linux):
    the logging then runs on idle CPU time instead of slowing the trials that share the cores
    with the driver. Elsewhere (or when refused) it runs at normal priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOGGING_NICENESS)
    except (AttributeError, OSError):
        pass


def _trial_fields(trial) -> tuple[str, dict, str | None]:
    """What the logger needs of a trial, copied now (Tune goes on changing the trial)."""
    return trial.trial_id, dict(trial.config), _trial_key(trial)


class MLflowTrackingCallback(_TuneCallback):
    """Tune callback on the driver: a parent run per sweep and a child run per trial.

    storage_path is RunConfig.storage_path and sweep_name RunConfig.name: the sweep's folder
    `storage_path/sweep_name` identifies it (sweep_id), so `--resume` continues the same
    parent run. MLflow errors never stop the sweep (one MLflowUnavailableWarning).
    """

    def __init__(self, tracking_uri: str, experiment: str, *, sweep_name: str, grid: str,
                 command: str, data_manifest: dict, storage_path: str | None, search: dict | None = None,
                 varies: tuple[str, ...] = (), kind: str = ""):
        storage = normalise_storage_path(storage_path)
        self.tracking_uri = tracking_uri
        self.info = SweepInfo(
            sweep_id=make_sweep_id(f"{storage}/{sweep_name}"), sweep_name=sweep_name,
            experiment=experiment, grid=grid, command=command,
            data_manifest=dict(data_manifest or {}), code_version=code_version(),
            storage_path=f"{storage}/{sweep_name}", tracking_uri=tracking_uri,
            search=dict(search or {}), varies=tuple(varies), kind=kind,
        )
        self._logger: SweepLogger | None = None
        self.disabled = False
        self.warnings_issued = 0
        self.logging_s = 0.0          # seconds the logging thread spent on MLflow
        self._queue: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None

    # Tune pickles the run config (tuner.pkl): keep the client and the thread out of it.
    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_logger=None, _queue=None, _thread=None)
        return state

    @property
    def logger(self) -> SweepLogger:
        if self._logger is None:
            self._logger = SweepLogger(self.tracking_uri, self.info)
        return self._logger

    def _degrade(self, exc: BaseException) -> None:
        self.disabled = True
        if self.warnings_issued == 0:
            self.warnings_issued += 1
            warnings.warn(
                f"MLflow at {self.tracking_uri} is unavailable ({one_line(exc)}); "
                f"the sweep goes on without tracking. Replay it later with: python -m "
                f"analysis.sync --storage {self.info.storage_path} --mlflow-uri "
                f"{self.tracking_uri} --experiment {self.info.experiment}",
                MLflowUnavailableWarning, stacklevel=2)

    def _guard(self, action, *args, **kwargs):
        if self.disabled:
            return None
        try:
            return action(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any tracking failure must not stop the sweep
            self._degrade(exc)
            return None

    def _submit(self, action) -> None:
        """Queue `action` for the logging thread (started on first use); it runs guarded, in order."""
        if self._thread is None or not self._thread.is_alive():
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._drain, args=(self._queue,), daemon=True,
                                            name="mlflow-tracking")
            self._thread.start()
        self._queue.put(action)

    def _drain(self, actions: queue.SimpleQueue) -> None:
        _yield_to_trials()
        while (action := actions.get()) is not None:
            started = time.perf_counter()
            self._guard(action)
            self.logging_s += time.perf_counter() - started

    def flush(self) -> None:
        """Wait until everything queued is logged (the thread ends; a later hook starts another)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    # -- Tune hooks: what Tune hands over is copied now, logged later on the thread ---------
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self._guard(save_sweep_info, self.info)
        # Don't let MLflow's HTTP client retry for minutes inside a sweep (user may override).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self._submit(lambda: check_reachable(self.tracking_uri))
        self._submit(lambda: self.logger.parent_run_id())

    def on_trial_start(self, iteration, trials, trial, **info):
        trial_id, config, key = _trial_fields(trial)

        def start():
            self.logger.start_trial(trial_id, config, key)
            self.logger.reopen_trial(trial_id)
        self._submit(start)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trial_id, config, key = _trial_fields(trial)
        result = dict(result)

        def log():
            self.logger.start_trial(trial_id, config, key)
            self.logger.log_result(trial_id, result)
        self._submit(log)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED", None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED", _read_error(trial))

    def _end(self, trial, status: str, error: str | None) -> None:
        trial_id, config, key = _trial_fields(trial)
        last_result = dict(trial.last_result or {})

        def end():
            self.logger.start_trial(trial_id, config, key)
            self.logger.end_trial(trial_id, status, last_result=last_result, error=error)
        self._submit(end)

    def on_experiment_end(self, trials, **info):
        n_trials, n_failed = len(trials), sum(1 for t in trials if t.status == "ERROR")
        self._submit(lambda: self.logger.end_sweep(n_trials, n_failed))
        self.flush()

    # Saved by Tune in the experiment folder: resume keeps the sweep_id, sync reads it back.
    def get_state(self) -> dict:
        return {"kind": STATE_KIND, **asdict(self.info)}

    def set_state(self, state: dict) -> None:
        if state.get("kind") == STATE_KIND and state.get("sweep_id"):
            self.info.sweep_id = state["sweep_id"]
            self._logger = None
            self._guard(save_sweep_info, self.info)
