"""Replay a sweep from Ray's storage into MLflow (after degraded mode, or into another store).

    python -m analysis.sync --storage ~/ray_results/ablation [--mlflow-uri URI] [--experiment NAME]
    python -m analysis.sync --storage s3://bucket/sweeps/ablation   # keys from the AWS variables

Reads the experiment folder Tune wrote (per trial: params.json, result.json lines, error.txt;
the latest experiment_state-*.json for trial status; pix3d_sweep.json for the sweep's
identity, grid, command and data manifest as the tracking callback saved them, else
search_run.json) and logs it through the same `SweepLogger` as the live callback. Only data
formats are read (JSON): nothing in the folder is unpickled, so a crafted file in a shared
--storage cannot run code here, and a file that is not what it should be is refused.
Idempotent: runs are found by their sweep_id / trial_id tags and only steps after the last
logged one are added, so a second replay adds nothing.

Why not Tune's public readers of a sweep folder (`ray.tune.ExperimentAnalysis`,
`Tuner.restore(...).get_results()`, `ray.tune.Result.from_path`): in Ray 2.60 each of them
has parts of the folder unpickled (the trials' state embedded in experiment_state-*.json,
tuner.pkl, error.pkl), which is the code execution this module exists to avoid. The price
is reading two Tune file layouts directly: result.json lines and the experiment state's
`trial_data` (status and experiment tag only).
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from analysis.mlflow_store import check_reachable, default_tracking_uri
from analysis.sweep_logger import (SWEEP_INFO_FILE, SweepInfo, SweepLogger, code_version, make_sweep_id,
                                   normalise_storage_path)
from pix3d.cli import ArgumentParser, nonempty_str, run_cli
from pix3d.errors import Pix3DError, UsageError, one_line
from pix3d.fileio import is_uri, local_copy

# Tune's trial status -> the child run's final status (None: still running, leave open).
_STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}


@dataclass
class StoredTrial:
    """One trial as Ray's storage holds it."""

    trial_id: str
    trial_key: str | None
    config: dict
    results: list[dict]
    status: str | None          # FINISHED | FAILED | None (interrupted, not final)
    error: str | None = None
    folder: Path | None = None


@dataclass
class SyncReport:
    trials: int = 0
    runs_created: int = 0
    epochs_logged: int = 0
    closed: int = 0
    skipped: list[str] = field(default_factory=list)


def _latest(folder: Path, pattern: str) -> Path | None:
    found = sorted(glob.glob(str(folder / pattern)))
    return Path(found[-1]) if found else None


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


# Fields of pix3d_sweep.json / search_run.json that sync uses, and the types they must have.
_INFO_TYPES = {"sweep_id": str, "sweep_name": str, "experiment": str, "grid": str, "command": str,
               "data_manifest": dict, "code_version": str, "storage_path": str, "search": dict}


def _read_json_object(path: Path, what: str) -> dict:
    """A JSON object from `path`, or a Pix3DError saying the file is not `what`."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Pix3DError(f"{path}: not a readable {what} ({one_line(exc)}); refusing to read it") from None
    if not isinstance(value, dict):
        raise Pix3DError(f"{path}: not a {what} (a JSON {type(value).__name__}, not an object); refusing to read it")
    return value


def read_sweep_state(folder: Path) -> dict | None:
    """The sweep's identity (sweep_id, grid, command, manifest) from JSON files only.

    pix3d_sweep.json (written by the tracking callback), else the grid and command from
    search_run.json; None when neither exists. Tune's callback-states-*.pkl is never read.
    """
    for name in (SWEEP_INFO_FILE, "search_run.json"):
        path = folder / name
        if not path.is_file():
            continue
        state = _read_json_object(path, "pix3d sweep record")
        for key, kind in _INFO_TYPES.items():
            if state.get(key) is not None and not isinstance(state[key], kind):
                raise Pix3DError(f"{path}: not a pix3d sweep record ({key!r} is a "
                                 f"{type(state[key]).__name__}); refusing to read it")
        return state
    return None


def _trial_status_table(folder: Path) -> dict[str, tuple[str | None, str | None]]:
    """trial_id -> (final status or None, experiment_tag) from the latest experiment state."""
    path = _latest(folder, "experiment_state-*.json")
    if path is None:
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Pix3DError(f"{path}: unreadable Tune experiment state ({one_line(exc)})") from None
    table: dict[str, tuple[str | None, str | None]] = {}
    try:
        for entry in state.get("trial_data", []):
            raw = entry[0] if isinstance(entry, (list, tuple)) else entry
            trial = json.loads(raw) if isinstance(raw, str) else raw
            table[trial["trial_id"]] = (_STATUS.get(trial.get("status")), trial.get("experiment_tag"))
    except (AttributeError, KeyError, TypeError, IndexError, json.JSONDecodeError) as exc:
        raise Pix3DError(f"{path}: not a Tune experiment state ({one_line(exc)}); refusing to read it") from None
    return table


def read_trials(folder: Path) -> list[StoredTrial]:
    """Every trial of the sweep stored under `folder`, in trial-id order.

    With an experiment state file only the trials Tune still lists are replayed (a trial
    replaced by `restart_errored` stays on disk but is not part of the sweep any more).
    """
    statuses = _trial_status_table(folder)
    trials: list[StoredTrial] = []
    for params_path in sorted(folder.glob("*/params.json")):
        trial_dir = params_path.parent
        config = _read_json_object(params_path, "trial params file")
        result_path = trial_dir / "result.json"
        try:
            results = list(iter_results(result_path.read_text().splitlines())) if result_path.exists() else []
        except (OSError, UnicodeDecodeError) as exc:
            raise Pix3DError(f"{result_path}: unreadable trial results ({one_line(exc)})") from None
        if not all(isinstance(r, dict) for r in results):
            raise Pix3DError(f"{result_path}: not Tune results (a line is not a JSON object); refusing to read it")
        trial_id = next((r["trial_id"] for r in results if "trial_id" in r), None)
        if trial_id is not None and not isinstance(trial_id, str):
            raise Pix3DError(f"{result_path}: not Tune results (trial_id {trial_id!r} is not text)")
        if trial_id is None:
            continue  # never reported: nothing to replay
        error_path = trial_dir / "error.txt"
        error = error_path.read_text(errors="replace").strip() if error_path.exists() else None
        if statuses:
            if trial_id not in statuses:
                continue
            status, key = statuses[trial_id]
        else:
            status, key = ("FAILED" if error else "FINISHED"), None
        trials.append(StoredTrial(trial_id, key, config, results, status,
                                  error if status == "FAILED" else None, trial_dir))
    return sorted(trials, key=lambda t: t.trial_id)


def _is_record(relative: str) -> bool:
    """The files of a stored sweep that a replay reads (JSON and error text only: no checkpoints, no binary state)."""
    parts = relative.split("/")
    if len(parts) == 1:
        return parts[0].endswith(".json")
    return len(parts) == 2 and parts[1] in ("params.json", "result.json", "error.txt")


def sync(storage: str | Path, tracking_uri: str, experiment: str | None = None,
         *, progress: bool = True) -> SyncReport:
    """Replay the sweep in `storage` (Tune's experiment folder, or its URI) into MLflow; returns counts."""
    if is_uri(str(storage)):
        # An object store (s3://...): its records are copied to a temp folder and read as one;
        # the sweep keeps its identity (name, id, storage path) from the URI.
        with local_copy(str(storage), _is_record) as folder:
            return _sync_folder(folder, str(storage).rstrip("/"), tracking_uri, experiment, progress=progress)
    return _sync_folder(Path(storage).expanduser(), None, tracking_uri, experiment, progress=progress)


def _sync_folder(folder: Path, uri: str | None, tracking_uri: str, experiment: str | None,
                 *, progress: bool) -> SyncReport:
    """`sync` of a local folder (`uri`: where it was copied from, when it is a copy)."""
    storage = uri or folder
    if not folder.is_dir():
        raise Pix3DError(f"--storage {storage}: no such folder")
    if not any(folder.glob("*/params.json")) and _latest(folder, "experiment_state-*.json") is None:
        raise Pix3DError(f"--storage {storage}: not a Ray Tune experiment folder "
                         "(no experiment_state-*.json and no trial folders with params.json)")
    check_reachable(tracking_uri)
    saved = read_sweep_state(folder) or {}
    name = uri.rsplit("/", 1)[-1] if uri else folder.name
    info = SweepInfo(
        sweep_id=saved.get("sweep_id") or make_sweep_id(str(storage)),
        sweep_name=saved.get("sweep_name") or name,
        experiment=experiment or saved.get("experiment") or saved.get("grid") or name,
        grid=saved.get("grid", ""), command=saved.get("command", ""),
        data_manifest=saved.get("data_manifest") or {},
        code_version=saved.get("code_version") or code_version(),
        storage_path=saved.get("storage_path") or normalise_storage_path(storage),
        tracking_uri=tracking_uri, search=saved.get("search") or {},
    )
    logger = SweepLogger(tracking_uri, info)
    trials = read_trials(folder)
    report = SyncReport(trials=len(trials))
    logger.parent_run_id(reopen=False)
    for trial in tqdm(trials, desc=f"sync {info.sweep_name}", unit="trial", disable=not progress):
        known = trial.trial_id in logger._children
        logger.start_trial(trial.trial_id, trial.config, trial.trial_key)
        state = logger._children[trial.trial_id]
        report.runs_created += int(not known and state.fresh)
        if state.final:
            continue  # closed with artifacts already: nothing to add
        if not state.fresh:
            logger.reopen_trial(trial.trial_id)
        report.epochs_logged += sum(logger.log_result(trial.trial_id, r) for r in trial.results)
        if trial.status is not None:
            logger.end_trial(trial.trial_id, trial.status,
                             last_result=trial.results[-1] if trial.results else None,
                             error=trial.error)
            report.closed += 1
    changed = report.runs_created or report.epochs_logged or report.closed
    if changed and all(t.status is not None for t in trials):
        logger.end_sweep(len(trials), sum(t.status == "FAILED" for t in trials))
    return report


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m analysis.sync", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True,
                        help="the sweep's Ray Tune experiment folder (storage_path/name), or its URI "
                             "(s3://bucket/path/name: endpoint and keys from the AWS_* variables)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="tracking URI (default sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--experiment", type=nonempty_str, default=None,
                        help="MLflow experiment (default: the one the sweep was logged to)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.experiment is not None and not args.experiment.strip():
        raise UsageError("--experiment: empty name")
    uri = args.mlflow_uri or default_tracking_uri()
    report = sync(args.storage, uri, args.experiment, progress=not args.no_progress)
    print(f"synced {report.trials} trials from {args.storage} to {uri}: "
          f"{report.runs_created} runs created, {report.epochs_logged} epochs logged, "
          f"{report.closed} runs closed")
    return 0


if __name__ == "__main__":
    run_cli(main)
