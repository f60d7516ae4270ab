"""Log Ray Tune sweeps to MLflow: one parent run per sweep, one child run per trial.

Two entry points share one logger (`SweepLogger`) so that live logging and a later replay
produce the same runs:

- `MLflowTrackingCallback`, a `ray.tune.Callback` on the driver, logs as trials report;
- `analysis.sync` replays a finished sweep from Ray's storage (degraded mode, see below).

Why explicit run ids through `MlflowClient` and never `mlflow.start_run`: Tune calls the
callback for many trials interleaved, and the fluent API keeps one global active run.

Idempotence is by tags: the parent run carries `sweep_id`, each child `sweep_id` and
`trial_id`. A resumed sweep, or a replay, looks them up and continues after the last logged
step instead of creating duplicates.

Degraded mode: a sweep must never fail because MLflow is down. Any MLflow error turns the
logger off for the rest of the sweep with ONE warning that says how to replay; results stay
in Ray's storage (`result.json` per trial) for `python -m analysis.sync`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pix3d.constants import modalities_key
from pix3d.errors import Pix3DError, one_line

try:  # ray is only needed for the callback; sync and the table work without a Ray install
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - ray is a project dependency
    _TuneCallback = object

STATE_KIND = "pix3d.mlflow_tracking"   # marks our entry in Tune's callback-state file
# The sweep's identity as plain JSON in its experiment folder: analysis.sync reads this, never
# Tune's pickled callback state (a crafted pickle in a shared --storage would run code).
SWEEP_INFO_FILE = "pix3d_sweep.json"
ROLE_TAG = "pix3d.role"                # "sweep" on the parent, "trial" on children
FINAL_STATUSES = ("FINISHED", "FAILED")

# Ray bookkeeping that is not a measurement of the model (or is a wall-clock stamp).
_SKIP_METRICS = frozenset({
    "timestamp", "pid", "done", "time_since_restore", "iterations_since_restore",
    "checkpoint_dir_name", "should_checkpoint", "started_at",
})
# Where a trial ran (trainables.pose reports them): tags (the latest placement; a retry may
# move) and, once per run, params `placement.<key>` (where it first ran).
PLACEMENT_KEYS = ("device_kind", "device_name", "gpu_ids", "gpus_given", "node",
                  "cuda_visible_devices", "simulated_gpu", "precision")
_CURVE_KEYS = ("train_loss", "val_loss", "val_azimuth_acc", "val_elevation_acc",
               "val_inplane_acc", "val_azimuth_acc_within1")
_MAX_PARAM_CHARS = 6000   # MLflow's limit on one param value
_BATCH = 100               # MLflow's limit on params per log_batch


class MLflowUnavailableWarning(UserWarning):
    """MLflow could not be reached; the sweep goes on and can be replayed with analysis.sync."""


def default_tracking_uri() -> str:
    """sqlite:///<absolute cwd>/mlflow.db: the file store (./mlruns) raises in MLflow >= 3.13."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def code_version(cwd: str | Path | None = None) -> str:
    """`git describe --always --dirty` of the code that ran, or 'unknown' outside a checkout."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=where,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def normalise_storage_path(path: str | os.PathLike | None) -> str:
    """Absolute local path (or the URI as given): the same sweep gives the same string."""
    if path is None:
        path = "~/ray_results"
    text = os.fspath(path)
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


def make_sweep_id(experiment_dir: str) -> str:
    """Stable id of a sweep: hash of its experiment folder (a resumed sweep keeps its folder)."""
    digest = hashlib.sha1(normalise_storage_path(experiment_dir).encode()).hexdigest()
    return digest[:12]


# Tracking URI schemes MLflow has stores for ("" and file: a local folder).
TRACKING_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql",
                    "databricks", "databricks-uc", "uc")
_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_tracking_uri(tracking_uri: str) -> None:
    """Raise Pix3DError naming the URI when it cannot be a tracking store, without connecting:
    an unknown scheme, or an sqlite URI whose file exists but is not an SQLite database."""
    parsed = urllib.parse.urlparse(tracking_uri)
    if not tracking_uri.strip():
        raise Pix3DError("--mlflow-uri: empty tracking URI")
    scheme = parsed.scheme.split("+")[0]  # postgresql+psycopg2://...
    if len(scheme) == 1:  # a Windows drive letter is a path, not a scheme
        scheme = ""
    if scheme not in TRACKING_SCHEMES:
        raise Pix3DError(f"--mlflow-uri {tracking_uri}: unknown scheme {parsed.scheme!r}; use sqlite:///PATH.db, "
                         "http(s)://HOST:PORT, a folder, or a database URI")
    if scheme == "sqlite" and tracking_uri.startswith("sqlite:///"):
        db_path = Path(tracking_uri[len("sqlite:///"):])
        if db_path.is_file() and db_path.stat().st_size > 0:
            try:
                with open(db_path, "rb") as fh:
                    head = fh.read(len(_SQLITE_MAGIC))
            except OSError as exc:
                raise Pix3DError(f"MLflow store {tracking_uri}: cannot read {db_path} ({one_line(exc)})") from None
            if head != _SQLITE_MAGIC:
                raise Pix3DError(f"MLflow store {tracking_uri}: {db_path} is not an SQLite database")


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Raise Pix3DError naming the URI when the tracking store cannot be reached.

    Probing first matters for HTTP: MLflow's own client retries with back-off for minutes
    before giving up, which a sweep (or a table command) should not sit through.
    """
    check_tracking_uri(tracking_uri)
    parsed = urllib.parse.urlparse(tracking_uri)
    if parsed.scheme in ("http", "https"):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as reply:
                if reply.status != 200:
                    raise Pix3DError(f"MLflow server {tracking_uri} answered {reply.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Pix3DError(f"cannot reach MLflow server {tracking_uri}: {reason}") from None
    elif parsed.scheme == "sqlite":
        # sqlite:////abs/path.db -> /abs/path.db ; sqlite:///rel.db -> rel.db
        db_path = Path(tracking_uri[len("sqlite:///"):])
        if not db_path.parent.is_dir():
            raise Pix3DError(f"MLflow store {tracking_uri}: folder {db_path.parent} does not exist")


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store go beside the database (`<db dir>/mlartifacts/<name>`).

    MLflow's default for a sqlite store is ./mlruns of whatever folder the process runs
    in, which scatters one sweep's artifacts over several folders. Servers choose their own.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in experiment) or "experiment"
    db_path = Path(tracking_uri[len("sqlite:///"):]).resolve()
    return (db_path.parent / "mlartifacts" / slug).as_uri()


def flatten(mapping: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dict -> {'a.b': leaf}; lists and tuples of scalars stay one value."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


def _param_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = "+".join(map(str, value)) if all(isinstance(v, str) for v in value) else list(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def scalar_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite-or-not scalars of one reported result (bools and Ray stamps out)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if key in _SKIP_METRICS or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) or type(value).__name__ in ("float32", "float64", "int64", "int32"):
            out[key] = float(value)
    return out


def result_step(result: Mapping[str, Any]) -> int:
    """step = epoch as the trainable reports it (1-based), else Tune's training_iteration."""
    for key in ("epoch", "training_iteration"):
        value = result.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return int(value)
    return 0


RELPOSE_TAG_KEYS = ("fusion", "weights", "loss")  # trainables.relpose's grid axes


def trial_run_name(config: Mapping[str, Any], trial_id: str = "") -> str:
    """`combined_net rgb+mask lr=1e-05 s0` (+ ` quirks`): a sweep reads as a list in the UI.
    Relative-pose trials (fusion grids): `relpose early scratch pose lr=0.001 s0`."""
    parts = [str(config.get("model", "relpose" if "fusion" in config else "trial"))]
    parts += [str(config[k]) for k in RELPOSE_TAG_KEYS if k in config]
    if "modalities" in config:
        try:
            parts.append(modalities_key(config["modalities"]))
        except ValueError:
            parts.append(str(config["modalities"]))
    if "lr" in config:
        try:
            parts.append(f"lr={float(config['lr']):g}")
        except (TypeError, ValueError):
            parts.append(f"lr={config['lr']}")
    if "seed" in config:
        parts.append(f"s{config['seed']}")
    if config.get("seed_quirks"):
        parts.append("quirks")
    if len(parts) == 1 and trial_id:
        parts.append(trial_id)
    return " ".join(parts)


def trial_tags(config: Mapping[str, Any]) -> dict[str, str]:
    """The tags the table and the UI filter on (docs/interfaces.md)."""
    tags: dict[str, str] = {}
    for key in ("model", "seed", "seed_quirks", "lr", *RELPOSE_TAG_KEYS):
        if key in config:
            tags[key] = str(config[key])
    if "modalities" in config:
        try:
            tags["modalities"] = modalities_key(config["modalities"])
        except ValueError:
            tags["modalities"] = str(config["modalities"])
    return tags


def data_provenance(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a child run needs to say where its data came from: dataset, cache key, sources."""
    picked: dict[str, Any] = {}
    for key in ("dataset", "name", "path", "key", "n", "size", "margin", "version"):
        if key in manifest and not isinstance(manifest[key], list):
            picked[key] = manifest[key]
    for key, value in manifest.items():
        if "source" in key and isinstance(value, Mapping):
            picked[key] = dict(value)
    return {f"data.{k}": v for k, v in flatten(picked).items()}


@dataclass
class SweepInfo:
    """Everything the parent run records; also Tune's saved callback state (for resume/sync)."""

    sweep_id: str
    sweep_name: str
    experiment: str
    grid: str = ""
    command: str = ""
    data_manifest: dict = field(default_factory=dict)
    code_version: str = "unknown"
    storage_path: str = ""
    tracking_uri: str = ""

    def description(self) -> str:
        """The parent run's note: what the sweep was and how to rebuild its table."""
        return (
            f"Sweep `{self.sweep_name}` (grid `{self.grid or '?'}`, sweep_id `{self.sweep_id}`), "
            f"code `{self.code_version}`.\n\n"
            f"Command: `{self.command or '?'}`\n\n"
            f"Ray storage: `{self.storage_path}`\n\n"
            f"Rebuild the azimuth table: `python -m analysis.table --experiment {self.experiment} "
            f"--mlflow-uri {self.tracking_uri}`\n\n"
            f"Replay from Ray storage if runs are missing: `python -m analysis.sync --storage "
            f"{self.storage_path} --mlflow-uri {self.tracking_uri} --experiment {self.experiment}`"
        )


@dataclass
class _ChildState:
    run_id: str
    run_name: str
    last_step: int
    final: bool          # already closed with artifacts (a replay must not redo it)
    # Curve points logged in this session; `complete` is False for a run found in MLflow
    # with earlier steps (resume), whose curves are then read back from MLflow.
    history: dict = field(default_factory=dict)
    complete: bool = True
    fresh: bool = True   # created in this session (no need to re-open it)
    placement: dict = field(default_factory=dict)  # placement tags last set


class SweepLogger:
    """MLflow side of one sweep, by explicit run ids. Raises on MLflow errors (callers guard)."""

    def __init__(self, tracking_uri: str, info: SweepInfo):
        self.tracking_uri = tracking_uri
        self.info = info
        self._client = None
        self._experiment_id: str | None = None
        self._parent_run_id: str | None = None
        self._children: dict[str, _ChildState] = {}
        self._existing: list | None = None

    # -- lookups -------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.info.experiment)
            if found is None:
                self._experiment_id = self.client.create_experiment(
                    self.info.experiment, artifact_location=artifact_location(
                        self.tracking_uri, self.info.experiment))
            else:
                if found.lifecycle_stage == "deleted":
                    raise Pix3DError(f"MLflow experiment {self.info.experiment!r} is deleted; "
                                     "restore it or choose another --experiment")
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def _search(self, filter_string: str):
        return self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                       max_results=50)

    def parent_run_id(self, *, reopen: bool = True) -> str:
        """The sweep's parent run: found by sweep_id tag (resume, replay) or created.

        reopen: a resumed sweep marks its parent RUNNING again; a replay leaves it alone.
        """
        if self._parent_run_id is not None:
            return self._parent_run_id
        found = self._search(f"tags.sweep_id = '{self.info.sweep_id}' and "
                             f"tags.`{ROLE_TAG}` = 'sweep'")
        if found:
            run_id = found[0].info.run_id
            if reopen and found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
                self.client.set_tag(run_id, "resumed", "true")
        else:
            run_id = self._create_parent()
        self._parent_run_id = run_id
        return run_id

    def _create_parent(self) -> str:
        info = self.info
        tags = {
            "sweep_id": info.sweep_id, ROLE_TAG: "sweep", "grid": info.grid,
            "command": info.command[:5000], "code_version": info.code_version,
            "storage_path": info.storage_path, "mlflow.note.content": info.description(),
        }
        run = self.client.create_run(self.experiment_id, run_name=info.sweep_name, tags=tags)
        run_id = run.info.run_id
        params = {"grid": info.grid, "sweep_name": info.sweep_name}
        params.update(data_provenance(info.data_manifest))
        self._log_params(run_id, params)
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / "data_manifest.json"
            manifest.write_text(json.dumps(info.data_manifest, indent=2, default=str))
            self.client.log_artifact(run_id, str(manifest))
        return run_id

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        items = [Param(k[:250], _param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i:i + _BATCH])

    def _existing_children(self) -> list:
        """The sweep's child runs already in MLflow, fetched once (one search, not one per trial)."""
        if self._existing is None:
            runs, token = [], None
            while True:
                page = self.client.search_runs(
                    [self.experiment_id], max_results=1000, page_token=token,
                    filter_string=f"tags.sweep_id = '{self.info.sweep_id}' and "
                                  f"tags.`{ROLE_TAG}` = 'trial'")
                runs.extend(page)
                token = page.token
                if not token:
                    break
            self._existing = runs
        return self._existing

    def _find_child(self, trial_id: str, trial_key: str | None) -> _ChildState | None:
        """Existing child by trial_id; else by trial_key (Tune's experiment_tag, e.g.
        `1_modalities=rgb_mask,seed=0`), because `restart_errored` replaces an errored trial
        by a new trial id with the same tag: that is the same grid point, not a new child."""
        existing = self._existing_children()
        found = [r for r in existing if r.data.tags.get("trial_id") == trial_id]
        if not found and trial_key:
            found = [r for r in existing if r.data.tags.get("trial_key") == trial_key]
            if found:
                old_id = found[0].data.tags.get("trial_id", "")
                self.client.set_tag(found[0].info.run_id, "trial_id", trial_id)
                self.client.set_tag(found[0].info.run_id, "replaced_trial_id", old_id)
        if not found:
            return None
        run = found[0]
        steps = [m.step for key in list(run.data.metrics)[:1]
                 for m in self.client.get_metric_history(run.info.run_id, key)]
        final = run.data.tags.get("status") in FINAL_STATUSES and run.info.status != "RUNNING"
        return _ChildState(run.info.run_id, run.info.run_name or "", max(steps, default=0),
                           final, complete=not steps, fresh=False)

    # -- trials --------------------------------------------------------------------------
    def start_trial(self, trial_id: str, config: Mapping[str, Any],
                    trial_key: str | None = None) -> str:
        """Find or create the trial's child run (cached: one lookup per trial and session)."""
        state = self._children.get(trial_id)
        if state is None:
            state = self._find_child(trial_id, trial_key)
            if state is None:
                state = self._create_child(trial_id, config, trial_key)
            self._children[trial_id] = state
        return state.run_id

    def reopen_trial(self, trial_id: str) -> None:
        """A trial that is running again (retry after failure, resumed sweep) is not final."""
        state = self._children[trial_id]
        if state.fresh and not state.final:
            return
        state.final = False
        self.client.update_run(state.run_id, status="RUNNING")
        self.client.set_tag(state.run_id, "status", "RUNNING")

    def _create_child(self, trial_id: str, config: Mapping[str, Any],
                      trial_key: str | None) -> _ChildState:
        tags = {
            "mlflow.parentRunId": self.parent_run_id(), "sweep_id": self.info.sweep_id,
            "trial_id": trial_id, "grid": self.info.grid, "code_version": self.info.code_version,
            ROLE_TAG: "trial", "status": "RUNNING",
        }
        if trial_key:
            tags["trial_key"] = trial_key
        tags.update(trial_tags(config))
        name = trial_run_name(config, trial_id)
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = flatten(config)
        params.update(data_provenance(self.info.data_manifest))
        self._log_params(run.info.run_id, params)
        return _ChildState(run.info.run_id, name, 0, False)

    def log_result(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        """Log one epoch's scalars at step = epoch; steps already logged are skipped."""
        from mlflow.entities import Metric
        state = self._children[trial_id]
        step = result_step(result)
        if step <= state.last_step:
            return False
        stamp = int(time.time() * 1000)
        scalars = scalar_metrics(result)
        metrics = [Metric(k, v, stamp, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(state.run_id, metrics=metrics[i:i + 1000])
        state.last_step = step
        self._log_placement(state, result)
        for key in _CURVE_KEYS + ("majority_azimuth_acc",):
            if key in scalars:
                state.history.setdefault(key, []).append((step, scalars[key]))
        return True

    def _log_placement(self, state: _ChildState, result: Mapping[str, Any]) -> None:
        """Device, GPU ids, node, precision, simulation flag as tags when they change; as params
        on the run's first placement (params cannot change, so a resumed run keeps its own)."""
        from mlflow.entities import RunTag
        where = {k: str(result[k]).lower() if isinstance(result[k], bool) else str(result[k])
                 for k in PLACEMENT_KEYS if k in result}
        if not where or where == state.placement:
            return
        if not state.placement and state.fresh:
            self._log_params(state.run_id, {f"placement.{k}": v for k, v in where.items()})
        self.client.log_batch(state.run_id, tags=[RunTag(k, v) for k, v in where.items()])
        state.placement = where

    def end_trial(self, trial_id: str, status: str, *, last_result: Mapping[str, Any] | None,
                  error: str | None = None) -> None:
        """Close the child run: status tag, error text, confusion matrix and curves artifacts."""
        state = self._children[trial_id]
        if state.final:
            return
        from mlflow.entities import RunTag
        tags = [RunTag("status", status)]
        if error:
            tags.append(RunTag("error", error[-5000:]))
        self.client.log_batch(state.run_id, tags=tags)
        self._log_trial_artifacts(state, trial_id, last_result or {})
        self.client.set_terminated(state.run_id, status=status)
        state.final = True

    def _curves(self, state: _ChildState) -> dict[str, list[tuple[int, float]]]:
        if state.complete:
            return state.history
        run = self.client.get_run(state.run_id)
        return {key: [(m.step, m.value) for m in self.client.get_metric_history(state.run_id, key)]
                for key in _CURVE_KEYS + ("majority_azimuth_acc",) if key in run.data.metrics}

    def _log_trial_artifacts(self, state: _ChildState, trial_id: str,
                             last_result: Mapping[str, Any]) -> None:
        from analysis import plots
        run_id = state.run_id
        title = state.run_name or trial_id
        with tempfile.TemporaryDirectory() as tmp:
            tmp_dir = Path(tmp)
            confusion = last_result.get("val_azimuth_confusion")
            if confusion is not None:
                matrix = [[int(v) for v in row] for row in confusion]
                epoch = result_step(last_result)
                (tmp_dir / "azimuth_confusion.json").write_text(json.dumps(
                    {"epoch": epoch, "rows": "true bin", "columns": "predicted bin",
                     "bin_labels": plots.azimuth_bin_labels(len(matrix)), "counts": matrix},
                    indent=1))
                plots.plot_confusion(matrix, tmp_dir / "azimuth_confusion.png",
                                     title=f"{title} (epoch {epoch})")
            history = dict(self._curves(state))
            baseline_points = sorted(history.pop("majority_azimuth_acc", []))
            if any(history.values()):
                plots.plot_learning_curves(
                    history, tmp_dir / "learning_curves.png", title=title,
                    baseline=baseline_points[-1][1] if baseline_points else None)
            if any(tmp_dir.iterdir()):
                self.client.log_artifacts(run_id, str(tmp_dir))

    def end_sweep(self, n_trials: int, n_failed: int) -> None:
        """Close the parent run; FAILED only when every trial failed (partial sweeps still count)."""
        run_id = self.parent_run_id()
        self.client.set_tag(run_id, "n_trials", str(n_trials))
        self.client.set_tag(run_id, "n_failed", str(n_failed))
        status = "FAILED" if n_trials and n_failed == n_trials else "FINISHED"
        self.client.set_terminated(run_id, status=status)


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


class MLflowTrackingCallback(_TuneCallback):
    """Tune callback on the driver: a parent run per sweep and a child run per trial.

    storage_path is RunConfig.storage_path and sweep_name RunConfig.name: the sweep's folder
    `storage_path/sweep_name` identifies it (sweep_id), so `--resume` continues the same
    parent run. MLflow errors never stop the sweep (one MLflowUnavailableWarning).
    """

    def __init__(self, tracking_uri: str, experiment: str, *, sweep_name: str, grid: str,
                 command: str, data_manifest: dict, storage_path: str | None):
        storage = normalise_storage_path(storage_path)
        self.tracking_uri = tracking_uri
        self.info = SweepInfo(
            sweep_id=make_sweep_id(f"{storage}/{sweep_name}"), sweep_name=sweep_name,
            experiment=experiment, grid=grid, command=command,
            data_manifest=dict(data_manifest or {}), code_version=code_version(),
            storage_path=f"{storage}/{sweep_name}", tracking_uri=tracking_uri,
        )
        self._logger: SweepLogger | None = None
        self.disabled = False
        self.warnings_issued = 0

    # Tune pickles the run config (tuner.pkl): keep the client out of it.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_logger"] = None
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

    # -- Tune hooks ----------------------------------------------------------------------
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self._guard(save_sweep_info, self.info)
        # Don't let MLflow's HTTP client retry for minutes inside a sweep (user may override).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self._guard(check_reachable, self.tracking_uri)
        self._guard(lambda: self.logger.parent_run_id())

    def on_trial_start(self, iteration, trials, trial, **info):
        def start():
            self.logger.start_trial(trial.trial_id, trial.config, _trial_key(trial))
            self.logger.reopen_trial(trial.trial_id)
        self._guard(start)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        def log():
            self.logger.start_trial(trial.trial_id, trial.config, _trial_key(trial))
            self.logger.log_result(trial.trial_id, result)
        self._guard(log)

    def on_trial_complete(self, iteration, trials, trial, **info):
        def end():
            self.logger.start_trial(trial.trial_id, trial.config, _trial_key(trial))
            self.logger.end_trial(trial.trial_id, "FINISHED", last_result=trial.last_result)
        self._guard(end)

    def on_trial_error(self, iteration, trials, trial, **info):
        def end():
            self.logger.start_trial(trial.trial_id, trial.config, _trial_key(trial))
            self.logger.end_trial(trial.trial_id, "FAILED", last_result=trial.last_result,
                                  error=_read_error(trial))
        self._guard(end)

    def on_experiment_end(self, trials, **info):
        n_failed = sum(1 for t in trials if t.status == "ERROR")
        self._guard(lambda: self.logger.end_sweep(len(trials), n_failed))

    # Saved by Tune in the experiment folder: resume keeps the sweep_id, sync reads it back.
    def get_state(self) -> dict:
        return {"kind": STATE_KIND, **asdict(self.info)}

    def set_state(self, state: dict) -> None:
        if state.get("kind") == STATE_KIND and state.get("sweep_id"):
            self.info.sweep_id = state["sweep_id"]
            self._logger = None
            self._guard(save_sweep_info, self.info)


def save_sweep_info(info: SweepInfo) -> None:
    """Write SWEEP_INFO_FILE (JSON, atomically) into the sweep's folder, local or a URI."""
    payload = json.dumps({k: v for k, v in asdict(info).items() if k != "tracking_uri"},
                         indent=1, default=str).encode()
    from pix3d.fileio import write_bytes_to

    write_bytes_to(info.storage_path, SWEEP_INFO_FILE, payload)


def iter_results(lines: Iterable[str]) -> Iterable[dict]:
    """Parse Tune's result.json (one JSON object per line), skipping a torn last line."""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue
