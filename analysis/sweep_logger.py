"""The MLflow side of one sweep: a parent run per sweep, a child run per trial, by run id.

Owns the sweep's identity (`SweepInfo`: a stable sweep_id from its folder, grid, command,
data manifest, code version) and its JSON record in the sweep folder (`pix3d_sweep.json`),
and `SweepLogger`, which both the live callback (analysis.tracking) and the replay
(analysis.sync) drive, so that both produce the same runs.

Explicit run ids through `MlflowClient`, never `mlflow.start_run`: Tune calls the callback for
many trials interleaved, and the fluent API keeps one global active run. Idempotence is by tags
(`sweep_id` on the parent; `sweep_id`, `trial_id` on each child): a resumed sweep, or a replay,
looks them up and continues after the last logged step instead of creating duplicates.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from analysis.mlflow_store import ROLE_TAG, artifact_location, search_all_runs
from analysis.mlflow_ui import ensure_ui_tags, experiment_ui_tags
from analysis.run_fields import (KIND_TAG, ORACLE_TAG, VARIES_TAG, data_provenance, flatten, oracle_inputs,
                                 param_text, result_step, scalar_metrics, size_params, stopped_text, trial_run_name,
                                 trial_tags, varies_text)
from pix3d.errors import Pix3DError
from pix3d.fileio import write_bytes_to

# The sweep's identity as plain JSON in its experiment folder: analysis.sync reads this, never
# Tune's pickled callback state (a crafted pickle in a shared --storage would run code).
SWEEP_INFO_FILE = "pix3d_sweep.json"
FINAL_STATUSES = ("FINISHED", "FAILED")
# Where a trial ran (trainables.pose reports them): tags (the latest placement; a retry may
# move) and, once per run, params `placement.<key>` (where it first ran).
PLACEMENT_KEYS = ("device_kind", "device_name", "gpu_ids", "gpus_given", "node",
                  "cuda_visible_devices", "simulated_gpu", "precision")
_CURVE_KEYS = ("train_loss", "val_loss", "val_azimuth_acc", "val_elevation_acc",
               "val_inplane_acc", "val_azimuth_acc_within1")
_BATCH = 100               # MLflow's limit on params per log_batch
SEARCH_TAG_PREFIX = "search."  # the parent run of a model-based search: its study (analysis.search_view)


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
    # A model-based search: its Optuna study (search.study.search_tags); tags `search.<key>`.
    search: dict = field(default_factory=dict)
    # The config keys the grid varies (search.grids.varied_keys): the parent's VARIES_TAG.
    # A tuple default (a class attribute) so a callback pickled by older code still reads it.
    varies: tuple[str, ...] = ()
    # The kind of sweep (search.kinds): the parent's KIND_TAG, which analysis.table dispatches on.
    kind: str = ""

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
    planned_epochs: int | None = None  # the config's epochs: a trial ending before was stopped early
    sizes: frozenset = frozenset()  # the split-size params it has (a param is logged once)


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
            # MLflow prints a bare experiment address per finished run, which MLflow 3.17 opens
            # on its GenAI side; the sweep prints its own links (analysis.mlflow_ui) instead.
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def search_params(self) -> tuple[str, ...]:
        """The parameters a model-based search samples (none for a grid): UI columns."""
        return tuple(p for p in str(self.info.search.get("params", "")).split(",") if p)

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.info.experiment)
            if found is None:
                # Tagged for the UI (analysis.mlflow_ui): a training experiment, a grouped view.
                self._experiment_id = self.client.create_experiment(
                    self.info.experiment, artifact_location=artifact_location(
                        self.tracking_uri, self.info.experiment), tags=experiment_ui_tags(self.search_params))
            else:
                if found.lifecycle_stage == "deleted":
                    raise Pix3DError(f"MLflow experiment {self.info.experiment!r} is deleted; "
                                     "restore it or choose another --experiment")
                ensure_ui_tags(self.client, found, self.search_params)
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
            ORACLE_TAG: oracle_inputs(info.data_manifest),
            **({VARIES_TAG: varies_text(info.varies)} if info.varies else {}),
            **({KIND_TAG: info.kind} if info.kind else {}),
            **{f"{SEARCH_TAG_PREFIX}{key}": str(value) for key, value in info.search.items()},
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
        items = [Param(k[:250], param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i:i + _BATCH])

    def _existing_children(self) -> list:
        """The sweep's child runs already in MLflow, fetched once (one search, not one per trial)."""
        if self._existing is None:
            self._existing = search_all_runs(
                self.client, [self.experiment_id],
                f"tags.sweep_id = '{self.info.sweep_id}' and tags.`{ROLE_TAG}` = 'trial'")
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
                           final, complete=not steps, fresh=False,
                           planned_epochs=_planned_epochs(run.data.params.get("epochs")),
                           sizes=frozenset(run.data.params))

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
        tags[ORACLE_TAG] = oracle_inputs(self.info.data_manifest, config.get("modalities"))
        name = trial_run_name(config, trial_id, self.search_params)
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = flatten(config)
        params.update(data_provenance(self.info.data_manifest, config.get("split", "published")))
        self._log_params(run.info.run_id, params)
        return _ChildState(run.info.run_id, name, 0, False, planned_epochs=_planned_epochs(config.get("epochs")))

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
        sizes = {k: v for k, v in size_params(result).items() if k not in state.sizes}
        if sizes:  # the split's sizes: fixed for the run, so params, logged with its first result
            self._log_params(state.run_id, sizes)
            state.sizes |= set(sizes)
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
        tags = [RunTag("status", status), RunTag("epochs_trained", str(state.last_step))]
        if status == "FINISHED" and state.planned_epochs and 0 < state.last_step < state.planned_epochs:
            # Tune ends a trial its scheduler stopped as a finished one: say it was stopped, where.
            tags += [RunTag("stopped_early", stopped_text(state.last_step))]
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


def _planned_epochs(value) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def save_sweep_info(info: SweepInfo) -> None:
    """Write SWEEP_INFO_FILE (JSON, atomically) into the sweep's folder, local or a URI."""
    payload = json.dumps({k: v for k, v in asdict(info).items() if k != "tracking_uri"},
                         indent=1, default=str).encode()
    write_bytes_to(info.storage_path, SWEEP_INFO_FILE, payload)

