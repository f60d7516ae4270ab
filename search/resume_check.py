"""Check a sweep's saved state before `search.run --resume` hands it to `Tuner.restore`.

Tune restores whatever it finds: after a full disk left `experiment_state-*.json` torn it
printed "Failed to restore the run state" and started one trial with an empty config,
dropping the real ones; and it unpickles `tuner.pkl`, the callbacks' and searcher's state and
the pickled fields of the experiment state, so a crafted file there runs code. So before
restoring, every pickle Tune will load is checked without being executed, the state is read
as data (both through analysis.tune_files) and its trials are compared with the ones the
saved settings (`search_run.json`) make. A torn, crafted or foreign state is refused with one
line saying what is wrong and what is intact; nothing in storage is written or removed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

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
