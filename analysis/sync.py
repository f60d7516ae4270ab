"""Replay a sweep from Ray's storage into MLflow (after degraded mode, or into another store).

    python -m analysis.sync --storage ~/ray_results/ablation [--mlflow-uri URI] [--experiment NAME]
    python -m analysis.sync --storage s3://bucket/sweeps/ablation   # keys from the AWS variables

Reads the experiment folder Tune wrote through analysis.tune_files (per trial: params.json,
result.json lines, error.txt; the latest experiment_state-*.json for trial status;
pix3d_sweep.json for the sweep's identity, grid, command and data manifest as the tracking
callback saved them, else search_run.json) and logs it through the same `SweepLogger` as the
live callback. Only data formats are read (JSON): nothing in the folder is unpickled, so a
crafted file in a shared --storage cannot run code here, and a file that is not what it should
be is refused. An experiment state that is torn, or holds an embedded object that would be
refused on --resume, is not trusted for the trials' status: then every trial folder is
replayed on its own (finished when it reported every epoch of its config), so nothing finished is
lost. A local folder or a URI (pyarrow.fs).
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

import posixpath
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pyarrow.fs import FileType

from tqdm import tqdm

from analysis.mlflow_store import check_reachable, default_tracking_uri
from analysis.tune_files import (SweepFolder, latest_state_path, open_folder, read_experiment_state,
                                 read_json_object, read_trial_folders)
from analysis.sweep_logger import (SWEEP_INFO_FILE, SweepInfo, SweepLogger, code_version, make_sweep_id,
                                   normalise_storage_path)
from pix3d.cli import ArgumentParser, nonempty_str, run_cli
from pix3d.errors import Pix3DError, UsageError, one_line

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
    folder: str | None = None   # the trial folder's name in the sweep folder


@dataclass
class SyncReport:
    trials: int = 0
    runs_created: int = 0
    epochs_logged: int = 0
    closed: int = 0
    skipped: list[str] = field(default_factory=list)


# Fields of pix3d_sweep.json / search_run.json that sync uses, and the types they must have.
_INFO_TYPES = {"sweep_id": str, "sweep_name": str, "experiment": str, "grid": str, "command": str,
               "data_manifest": dict, "code_version": str, "storage_path": str, "search": dict,
               "varies": list}


def read_sweep_state(folder: SweepFolder) -> dict | None:
    """The sweep's identity (sweep_id, grid, command, manifest) from JSON files only.

    pix3d_sweep.json (written by the tracking callback), else the grid and command from
    search_run.json; None when neither exists. Tune's callback-states-*.pkl is never read.
    """
    for name in (SWEEP_INFO_FILE, "search_run.json"):
        path = folder.join(name)
        if not folder.is_file(path):
            continue
        state = read_json_object(folder, path, "pix3d sweep record")
        for key, kind in _INFO_TYPES.items():
            if state.get(key) is not None and not isinstance(state[key], kind):
                raise Pix3DError(f"{folder.shown(path)}: not a pix3d sweep record ({key!r} is a "
                                 f"{type(state[key]).__name__}); refusing to read it")
        return state
    return None


def _trial_status_table(folder: SweepFolder, log=None) -> dict[str, tuple[str | None, str | None]] | None:
    """trial_id -> (final status or None, experiment_tag) from the latest experiment state;
    None when there is none, or when it is torn or refused (then said in one warning line)."""
    path = latest_state_path(folder)
    if path is None:
        return None
    try:
        state = read_experiment_state(folder, path)
    except Pix3DError as exc:
        if log is not None:
            log(f"warning: {one_line(exc, limit=600)}; replaying the trials from their own folders instead")
        return None
    return {t.trial_id: (_STATUS.get(t.status), t.experiment_tag) for t in state.trials}


def read_trials(storage: str | Path | SweepFolder, log=None) -> list[StoredTrial]:
    """Every trial of the sweep stored under `storage`, in trial-id order.

    With a readable experiment state only the trials Tune still lists are replayed (a trial
    replaced by `restart_errored` stays on disk but is not part of the sweep any more). When
    the state is torn or refused, each trial folder speaks for itself: failed when it has an
    error.txt, finished when it reported every epoch of its config, else interrupted (left open).
    """
    folder = storage if isinstance(storage, SweepFolder) else open_folder(storage)
    statuses = _trial_status_table(folder, log)
    trials: list[StoredTrial] = []
    unlisted = 0
    for stored in read_trial_folders(folder):
        trial_id = stored.trial_id
        if trial_id is None:
            continue  # never reported: nothing to replay
        if statuses is not None and trial_id in statuses:
            status, key = statuses[trial_id]
        elif statuses is not None and not (stored.finished and not stored.error):
            continue  # replaced (restart_errored) or never finished: not part of the sweep now
        else:
            # No trusted state, or a finished trial that a restored state lost (a torn state
            # once restored as one empty trial): the folder is the record.
            status = "FAILED" if stored.error else ("FINISHED" if stored.finished else None)
            key = None
            unlisted += statuses is not None
        trials.append(StoredTrial(trial_id, key, stored.config, stored.results, status,
                                  stored.error if status == "FAILED" else None, stored.name))
    if unlisted and log is not None:
        log(f"warning: {unlisted} finished trial folder(s) are not in the latest experiment state of "
            f"{folder.where}; replayed from their own folders")
    return sorted(trials, key=lambda t: t.trial_id)


def sync(storage: str | Path, tracking_uri: str, experiment: str | None = None,
         *, progress: bool = True) -> SyncReport:
    """Replay the sweep in `storage` (Tune's experiment folder, or its URI) into MLflow; returns counts."""
    folder = open_folder(storage)
    if folder.kind(folder.path) != FileType.Directory:
        # An object store has no folders, only keys: say what "no such folder" means there.
        where = " (nothing is stored under it)" if "://" in str(storage) else ""
        raise Pix3DError(f"--storage {storage}: no such folder{where}")
    if not read_trial_folders(folder) and latest_state_path(folder) is None:
        raise Pix3DError(f"--storage {storage}: not a Ray Tune experiment folder "
                         "(no experiment_state-*.json and no trial folders with params.json)")
    check_reachable(tracking_uri)
    saved = read_sweep_state(folder) or {}
    name = posixpath.basename(folder.path)
    info = SweepInfo(
        sweep_id=saved.get("sweep_id") or make_sweep_id(folder.where),
        sweep_name=saved.get("sweep_name") or name,
        experiment=experiment or saved.get("experiment") or saved.get("grid") or name,
        grid=saved.get("grid", ""), command=saved.get("command", ""),
        data_manifest=saved.get("data_manifest") or {},
        code_version=saved.get("code_version") or code_version(),
        storage_path=saved.get("storage_path") or normalise_storage_path(folder.where),
        tracking_uri=tracking_uri, search=saved.get("search") or {},
        varies=tuple(saved.get("varies") or ()),  # a sweep saved before it: none, the usual keys
    )
    logger = SweepLogger(tracking_uri, info)
    trials = read_trials(folder, log=lambda line: sys.stderr.write(line + "\n"))
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
