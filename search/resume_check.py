"""Check a sweep's saved state before `search.run --resume` hands it to `Tuner.restore`.

Tune restores whatever it finds: after a full disk left `experiment_state-*.json` torn it
printed "Failed to restore the run state" and started one trial with an empty config,
dropping the real ones; and it unpickles `tuner.pkl`, the callbacks' and searcher's state and
the pickled fields of the experiment state, so a crafted file there runs code. So before
restoring, every pickle Tune will load is checked without being executed, the state is read
as data (both through analysis.tune_files) and its trials are compared with the ones the
saved settings (`search_run.json`) make. A torn, crafted or foreign state is refused with one
line saying what is wrong and what is intact; nothing in storage is written or removed.

`mend_deleted_checkpoints` then puts back a checkpoint the state names but Tune had deleted:
Tune deletes a trial's checkpoint beyond the `num_to_keep` newest at once and uploads its state
naming the newer ones a moment later, so a driver killed (SIGKILL, a lost node) in between
leaves a state whose trial cannot be restored ("Could not recover from checkpoint as it does
not exist on storage anymore", the trial then fails on every retry). The trial folder still
holds the newer checkpoints; the oldest of those is copied under the name the state expects
(every file whole: a temp copy renamed locally, single objects in S3), and the trial goes on
from there, repeating no more than the epochs since.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import posixpath
import uuid

import pyarrow.fs as pafs

from analysis.tune_files import (SweepFolder, check_folder, latest_state_path, open_folder, pickle_problem,
                                 read_experiment_state, read_trial_folders)
from pix3d.errors import Pix3DError, one_line

# Resources are the current run's (they may change on resume), not part of what a trial is.
NOT_IDENTITY = ("cpus_per_trial", "gpus_per_trial")


def intact_summary(folder: SweepFolder) -> str:
    """What the folder still holds that a replay (analysis.sync) can use."""
    try:
        trials = [t for t in read_trial_folders(folder) if t.results]
    except Pix3DError:
        trials = []
    with_checkpoints = [t for t in trials if t.checkpoints]
    settings = "search_run.json" if folder.is_file(folder.join("search_run.json")) else "no search_run.json"
    return (f"intact: {settings}, {len(trials)} trial folder(s) with results "
            f"({len(with_checkpoints)} with checkpoints)")


def read_state_configs(folder: SweepFolder) -> list[dict]:
    """The trials' configs from the latest experiment_state-*.json; Pix3DError when torn."""
    path = latest_state_path(folder)
    if path is None:
        raise _refuse(folder, "no experiment_state-*.json (Tune's record of the trials)")
    try:
        return [trial.config for trial in read_experiment_state(folder, path).trials]
    except Pix3DError as exc:
        raise _refuse(folder, one_line(exc, limit=600)) from None


def _refuse(folder: SweepFolder, what: str) -> Pix3DError:
    return Pix3DError(
        f"--resume: the sweep state in {folder.where} cannot be trusted: {what}; {intact_summary(folder)}; "
        f"nothing was changed (replay finished trials with python -m analysis.sync --storage {folder.where}, "
        "or start again under another --experiment)")


def _key(config: dict, keys: Sequence[str]) -> tuple:
    # Through JSON, as Tune stored them: tuples become lists, floats keep their repr.
    return tuple(json.dumps(config.get(k), sort_keys=True, default=str) for k in keys)


def verify_resume_state(location: str | Path, expected: list[dict] | None) -> int:
    """Raise Pix3DError unless `location` (a folder or URI) holds a whole Tune state whose
    pickles are all what Tune writes and whose trials are `expected`.

    `expected`: the grid's trial configs (search.grids.expand of the param space), or None
    for a model-based search, whose trials are proposed as it runs (then only the files are
    checked). Returns the number of trials in the saved state.
    """
    folder = open_folder(location)
    tuner = folder.join("tuner.pkl")
    if not folder.is_file(tuner):
        raise _refuse(folder, "tuner.pkl is missing")
    if problem := pickle_problem(folder.read_bytes(tuner)):
        raise _refuse(folder, f"{folder.shown(tuner)}: refused, not loaded: {problem}")
    try:
        check_folder(folder)
    except Pix3DError as exc:
        raise _refuse(folder, one_line(exc, limit=600)) from None
    saved = read_state_configs(folder)
    if expected is None:
        return len(saved)
    # The grid's dimensions (what varies) must match; fixed settings are compared where both
    # have them, so a sweep saved by an older version without a newer fixed key still resumes.
    varying = {k for k in expected[0] if len({_key(c, [k]) for c in expected}) > 1}
    common = set(expected[0]) & set(saved[0]) if saved else set()
    keys = sorted((varying | common) - set(NOT_IDENTITY))
    want = sorted(_key(c, keys) for c in expected)
    have = sorted(_key(c, keys) for c in saved)
    if have != want:
        unsaved = Counter(want) - Counter(have)  # the grid's trials the state lacks
        foreign = Counter(have) - Counter(want)  # trials the saved settings do not make
        # A state saved before its grid had made every trial is normal (an object store
        # receives Tune's state every few seconds; a driver killed between two uploads leaves
        # the earlier one): the restored variant generator makes the rest. It is torn when a
        # trial it lacks has a folder of its own (it ran, and the state lost it), or foreign
        # when it holds a trial the saved settings do not make.
        started = {_key(t.config, keys) for t in read_trial_folders(folder) if t.config}
        lost = [k for k in unsaved if k in started]
        missing = sum(unsaved.values())
        if foreign or lost:
            raise _refuse(folder, f"it holds {len(saved)} trial(s) where the saved settings make {len(expected)} "
                                  f"({missing} of those not in it): a torn or foreign sweep")
    return len(saved)


def mend_deleted_checkpoints(location: str | Path, log=print) -> list[str]:
    """Give every unfinished trial the checkpoint its saved state names (see the module's
    docstring); the trial folders mended. A trial whose named checkpoint is gone with no newer
    one to stand in is left as it is (Tune then reports it)."""
    folder = open_folder(location)
    path = latest_state_path(folder)
    if path is None:
        return []
    mended = []
    for trial in read_experiment_state(folder, path).trials:
        if trial.status == "TERMINATED" or not trial.checkpoints or not trial.relative_logdir:
            continue
        named = trial.checkpoints[-1]
        if folder.kind(folder.join(trial.relative_logdir, named)) != pafs.FileType.NotFound:
            continue
        newer = [n for n in folder.names(trial.relative_logdir) if n.startswith("checkpoint_") and n > named]
        # The oldest newer one: a newer one still existing proves it was whole before the kill.
        source = next((n for n in sorted(newer) if folder.kind(folder.join(trial.relative_logdir, n))
                       == pafs.FileType.Directory), None)
        if source is None:
            continue
        _copy_checkpoint(folder, folder.join(trial.relative_logdir, source),
                         folder.join(trial.relative_logdir, named))
        log(f"note: trial {trial.trial_id}: its saved state names {named}, which Tune had deleted before "
            f"saving a newer state (the driver was stopped in between); restoring it from {source}")
        mended.append(trial.relative_logdir)
    return mended


def _copy_checkpoint(folder: SweepFolder, source: str, target: str) -> None:
    """Copy the files of checkpoint folder `source` to `target`, which appears whole or not at all."""
    files = [i.path for i in folder.fs.get_file_info(pafs.FileSelector(source, recursive=True))
             if i.type == pafs.FileType.File]
    if isinstance(folder.fs, pafs.LocalFileSystem):
        staging = f"{target}.mending-{uuid.uuid4().hex[:8]}"
        for name in files:
            dest = posixpath.join(staging, posixpath.relpath(name, source))
            folder.fs.create_dir(posixpath.dirname(dest), recursive=True)
            folder.fs.copy_file(name, dest)
        folder.fs.move(staging, target)  # a rename: whole or not at all
    else:  # an object store: each object appears whole; a checkpoint here is one file
        for name in files:
            folder.fs.copy_file(name, posixpath.join(target, posixpath.relpath(name, source)))
