"""Check a sweep's saved state before `search.run --resume` hands it to `Tuner.restore`.

Tune restores whatever it finds: after a full disk left `experiment_state-*.json` torn it
printed "Failed to restore the run state" and started one trial with an empty config,
dropping the real ones. So before restoring, the state is read as data (JSON; `tuner.pkl`
only checked for being a whole pickle, never loaded here) and compared with the trials that
the saved settings (`search_run.json`) make. A torn or foreign state is refused with one
line saying what is wrong and what is intact; nothing in storage is written or removed.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Sequence

from pix3d.errors import Pix3DError, one_line

# Resources are the current run's (they may change on resume), not part of what a trial is.
NOT_IDENTITY = ("cpus_per_trial", "gpus_per_trial")


def _latest(folder: Path, pattern: str) -> Path | None:
    found = sorted(glob.glob(str(folder / pattern)))
    return Path(found[-1]) if found else None


def intact_summary(folder: Path) -> str:
    """What the folder still holds that a replay (analysis.sync) can use."""
    with_results = [d for d in folder.iterdir() if d.is_dir() and (d / "result.json").is_file()
                    and (d / "result.json").stat().st_size > 0]
    with_checkpoints = [d for d in with_results if any(d.glob("checkpoint_*"))]
    settings = "search_run.json" if (folder / "search_run.json").is_file() else "no search_run.json"
    return (f"intact: {settings}, {len(with_results)} trial folder(s) with results "
            f"({len(with_checkpoints)} with checkpoints)")


def _whole_pickle(path: Path) -> str | None:
    """None when `path` looks like a complete pickle (protocol header, STOP opcode), else why not."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(max(size - 1, 0))
            tail = fh.read(1)
    except OSError as exc:
        return f"unreadable ({one_line(exc)})"
    if size == 0:
        return "empty (0 bytes)"
    if head[:1] != b"\x80" or tail != b".":
        return f"not a complete pickle ({size} bytes, torn or foreign)"
    return None


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return True


def read_state_configs(folder: Path) -> list[dict]:
    """The trials' configs from the latest experiment_state-*.json; Pix3DError when torn."""
    path = _latest(folder, "experiment_state-*.json")
    if path is None:
        raise _refuse(folder, "no experiment_state-*.json (Tune's record of the trials)")
    try:
        state = json.loads(path.read_text())
        entries = state["trial_data"]
        configs = []
        for entry in entries:
            raw = entry[0] if isinstance(entry, (list, tuple)) else entry
            trial = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(trial.get("config"), dict) or not trial.get("trial_id"):
                raise ValueError("a trial without config or trial_id")
            configs.append(trial["config"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise _refuse(folder, f"{path.name} is torn or foreign ({one_line(exc)})") from None
    return configs


def _refuse(folder: Path, what: str) -> Pix3DError:
    return Pix3DError(
        f"--resume: the sweep state in {folder} cannot be trusted: {what}; {intact_summary(folder)}; "
        f"nothing was changed (replay finished trials with python -m analysis.sync --storage {folder}, "
        "or start again under another --experiment)")


def _key(config: dict, keys: Sequence[str]) -> tuple:
    # Through JSON, as Tune stored them: tuples become lists, floats keep their repr.
    return tuple(json.dumps(config.get(k), sort_keys=True, default=str) for k in keys)


def verify_resume_state(folder: str | Path, expected: list[dict] | None) -> int:
    """Raise Pix3DError unless `folder` holds a whole Tune state whose trials are `expected`.

    `expected`: the grid's trial configs (search.grids.expand of the param space), or None
    for a model-based search, whose trials are proposed as it runs (then only the files are
    checked). Returns the number of trials in the saved state.
    """
    folder = Path(folder)
    problem = _whole_pickle(folder / "tuner.pkl") if (folder / "tuner.pkl").exists() else "missing"
    if problem:
        raise _refuse(folder, f"tuner.pkl is {problem}")
    # The search generator's state: a pickle despite its .json name (Ray 2.60); checked whole.
    for pattern in ("basic-variant-state-*.json", "search_gen_state-*.json"):
        path = _latest(folder, pattern)
        if path is not None and (problem := _whole_pickle(path)) and not _is_json(path):
            raise _refuse(folder, f"{path.name} is {problem}")
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
        missing = len([k for k in want if k not in have])
        raise _refuse(folder, f"it holds {len(saved)} trial(s) where the saved settings make {len(expected)} "
                              f"({missing} of those not in it): a torn or foreign sweep")
    return len(saved)
