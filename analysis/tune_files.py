"""Tune's files in a sweep folder, read as data: the one reader that resume, sync and the table share.

A sweep folder on shared storage (NFS, S3) can be written by other people, and Tune restores
it with `cloudpickle.loads`: `tuner.pkl`, `callback-states-*.pkl`, the searcher's state, the
pickled fields embedded in `experiment_state-*.json`, and a trial's `error.pkl`. Unpickling
runs whatever callables a pickle names, so before anything of the project hands a folder to
Tune, every pickle Tune will load is found here and checked WITHOUT being executed
(analysis.pickle_check: its opcodes walked against an allow-list of what Tune 2.60 and this
project write, read off the files real sweeps wrote; re-exported here), including the pickled
fields embedded in experiment_state-*.json.

Also owned here: the experiment state's trial entries as plain data (`read_experiment_state`)
and the trial folders as Tune left them (`read_trial_folders`: params.json, result.json,
error.txt, checkpoints), from which `analysis.sync` replays finished trials when the state is
torn or refused. Everything is read through `pyarrow.fs` (`FileSystem.from_uri`), so the same
code reads a local folder or a URI (s3://...).
"""

from __future__ import annotations

import fnmatch
import json
import pickletools
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow.fs as pafs

from analysis.pickle_check import (ALLOWED_CALLS, ALLOWED_GLOBALS, UntrustedFile, check_pickle, cut_off,
                                   known_code, pickle_problem)
from pix3d.errors import Pix3DError, one_line

__all__ = ["ALLOWED_CALLS", "ALLOWED_GLOBALS", "UntrustedFile", "check_pickle", "known_code", "pickle_problem",
           "SweepFolder", "open_folder", "StateTrial", "ExperimentState", "read_experiment_state",
           "latest_state_path", "pickles_in", "check_folder", "TrialFolder", "iter_results", "read_json_object",
           "read_trial_folders"]


# ------------------------------------------------------------------------------ the folder


@dataclass(frozen=True)
class SweepFolder:
    """A sweep's folder on some pyarrow file system; `where` is what messages name."""

    fs: pafs.FileSystem
    path: str
    where: str

    def join(self, *names: str) -> str:
        return posixpath.join(self.path, *names)

    def shown(self, fs_path: str) -> str:
        """`fs_path` as the user wrote the folder (a local path or the URI)."""
        rel = posixpath.relpath(fs_path, self.path)
        return self.where if rel == "." else f"{self.where.rstrip('/')}/{rel}"

    def names(self, sub: str = "") -> list[str]:
        """File and folder names directly under the folder (or its `sub` folder), sorted."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.join(sub) if sub else self.path,
                                                        allow_not_found=True))
        return sorted(posixpath.basename(i.path) for i in infos)

    def kind(self, fs_path: str) -> pafs.FileType:
        return self.fs.get_file_info(fs_path).type

    def is_file(self, fs_path: str) -> bool:
        return self.kind(fs_path) == pafs.FileType.File

    def size(self, fs_path: str) -> int:
        return int(self.fs.get_file_info(fs_path).size or 0)

    def read_bytes(self, fs_path: str) -> bytes:
        try:
            with self.fs.open_input_stream(fs_path) as stream:
                return stream.readall()
        except OSError as exc:
            raise Pix3DError(f"{self.shown(fs_path)}: unreadable ({one_line(exc)})") from None

    def glob(self, pattern: str, sub: str = "") -> list[str]:
        """Full fs paths of the names matching `pattern`, in name order (Tune's newest is last)."""
        base = self.join(sub) if sub else self.path
        return [posixpath.join(base, n) for n in fnmatch.filter(self.names(sub), pattern)]


def open_folder(location: str | Path) -> SweepFolder:
    """A sweep folder from a local path or a URI (`pyarrow.fs.FileSystem.from_uri`)."""
    text = str(location)
    if "://" not in text:
        text = str(Path(text).expanduser().absolute())
    try:
        fs, path = pafs.FileSystem.from_uri(text if "://" in text else Path(text).as_uri())
    except (OSError, ValueError) as exc:
        raise Pix3DError(f"{location}: not a readable folder or storage URI ({one_line(exc)})") from None
    return SweepFolder(fs, path.rstrip("/") or "/", str(location))


# ------------------------------------------------------------------- the experiment state

_FALLBACK = "CLOUDPICKLE_FALLBACK"


@dataclass
class StateTrial:
    """One trial entry of experiment_state-*.json, as data."""

    trial_id: str
    config: dict
    status: str | None
    experiment_tag: str | None
    relative_logdir: str | None
    # The checkpoint folders (checkpoint_NNNNNN) Tune's record of the trial names, oldest first:
    # the last is what a retry or --resume restores. Read off the pickled checkpoint manager's
    # strings (pickletools walks the opcodes; nothing is executed).
    checkpoints: list[str] = field(default_factory=list)


CHECKPOINT_NAME = re.compile(r"(?:^|/)(checkpoint_\d{6})$")


def _named_checkpoints(run_metadata) -> list[str]:
    names: set[str] = set()
    value = json.loads(run_metadata) if isinstance(run_metadata, str) else run_metadata
    for blob, _ in _embedded_pickles(value, ""):
        for _, arg, _ in pickletools.genops(blob):
            if isinstance(arg, str) and (match := CHECKPOINT_NAME.search(arg)):
                names.add(match.group(1))
    return sorted(names)


@dataclass
class ExperimentState:
    path: str                   # as shown to the user
    trials: list[StateTrial] = field(default_factory=list)


def _embedded_pickles(value, where: str) -> Iterator[tuple[bytes, str]]:
    """Every CLOUDPICKLE_FALLBACK blob inside a decoded JSON value (and JSON inside strings)."""
    if isinstance(value, dict):
        if value.get("_type") == _FALLBACK:
            raw = value.get("value")
            try:
                yield bytes.fromhex(raw), where
            except (TypeError, ValueError):
                raise UntrustedFile(f"{where}: refused, not loaded: a pickled field that is not whole hex "
                                    "(torn or crafted)") from None
            return
        for key, item in value.items():
            yield from _embedded_pickles(item, where)
    elif isinstance(value, list):
        for item in value:
            yield from _embedded_pickles(item, where)
    elif isinstance(value, str) and _FALLBACK in value:
        try:
            inner = json.loads(value)
        except ValueError:
            raise UntrustedFile(f"{where}: refused, not loaded: a pickled field in text that is not JSON "
                                "(torn or crafted)") from None
        yield from _embedded_pickles(inner, where)


def read_experiment_state(folder: SweepFolder, fs_path: str) -> ExperimentState:
    """The trial entries of one experiment_state-*.json as data, after checking every pickled
    field in it (Tune would unpickle them all on restore). Pix3DError naming the file when it
    is torn, foreign or holds a refused pickle."""
    where = folder.shown(fs_path)
    try:
        state = json.loads(folder.read_bytes(fs_path).decode("utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("trial_data"), list):
            raise ValueError("no trial_data list")
    except (UnicodeDecodeError, ValueError) as exc:
        raise Pix3DError(f"{where}: torn or foreign Tune experiment state ({one_line(exc)})") from None
    for blob, _ in _embedded_pickles(state, where):
        problem = pickle_problem(blob)
        if problem:
            raise UntrustedFile(f"{where}: refused, not loaded: a pickled field in it ({problem})")
    result = ExperimentState(where)
    try:
        for entry in state["trial_data"]:
            raw = entry[0] if isinstance(entry, (list, tuple)) else entry
            trial = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(trial.get("config"), dict) or not isinstance(trial.get("trial_id"), str):
                raise ValueError("a trial without config or trial_id")
            named = _named_checkpoints(entry[1]) if isinstance(entry, (list, tuple)) and len(entry) > 1 else []
            result.trials.append(StateTrial(trial["trial_id"], trial["config"], trial.get("status"),
                                            trial.get("experiment_tag"), trial.get("relative_logdir"), named))
    except (ValueError, TypeError, IndexError, AttributeError, KeyError) as exc:
        raise Pix3DError(f"{where}: torn or foreign Tune experiment state ({one_line(exc)})") from None
    return result


def latest_state_path(folder: SweepFolder) -> str | None:
    found = folder.glob("experiment_state-*.json")
    return found[-1] if found else None


# -------------------------------------------------------------- every pickle Tune will load

# Tune's pickles at the top of a sweep folder (the searcher's state is a pickle whatever its
# suffix), and the one in a trial folder.
STATE_PICKLES = ("*.pkl", "basic-variant-state-*.json", "search_gen_state-*.json")
TRIAL_PICKLES = ("*.pkl",)


def pickles_in(folder: SweepFolder) -> list[str]:
    """Every file of `folder` that Tune unpickles on restore or when it builds its results."""
    found = {p for pattern in STATE_PICKLES for p in folder.glob(pattern)}
    for sub in folder.names():
        if folder.kind(folder.join(sub)) == pafs.FileType.Directory:
            found.update(p for pattern in TRIAL_PICKLES for p in folder.glob(pattern, sub))
    return sorted(found)


# Tune (JsonLoggerCallback.update_config) truncates and rewrites a trial's params.pkl each time
# the trial starts, and never reads it back. A driver killed in between leaves it empty or cut
# off, and the trial's next start rewrites it: a crash's trace, not a reason to refuse the sweep.
# A whole one is still checked (another tool may load it); a cut-off prefix has passed the walk.
REWRITTEN_PICKLES = ("params.pkl",)


def check_folder(folder: SweepFolder) -> int:
    """Check, without executing, every pickle Tune would load from `folder` and every pickled
    field of its experiment states; UntrustedFile naming the first refused one. Returns how
    many were checked. A searcher state saved as JSON by another searcher is accepted as JSON;
    a cut-off `params.pkl` in a trial folder is accepted (REWRITTEN_PICKLES)."""
    checked = 0
    for fs_path in pickles_in(folder):
        data = folder.read_bytes(fs_path)
        if fs_path.endswith(".json") and _is_json(data):
            continue
        if posixpath.basename(fs_path) in REWRITTEN_PICKLES and cut_off(pickle_problem(data)):
            continue
        check_pickle(data, folder.shown(fs_path))
        checked += 1
    for fs_path in folder.glob("experiment_state-*.json"):
        read_experiment_state(folder, fs_path)
        checked += 1
    return checked


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True


# -------------------------------------------------------------------------- trial folders


@dataclass
class TrialFolder:
    """One trial as its own folder holds it: what a replay needs when the state is gone."""

    name: str
    config: dict
    results: list[dict]
    error: str | None
    checkpoints: list[str]

    @property
    def trial_id(self) -> str | None:
        return next((r["trial_id"] for r in self.results if isinstance(r.get("trial_id"), str)), None)

    @property
    def finished(self) -> bool:
        """Reported every epoch its config asks for (the project's trainables report once per
        epoch; Tune 2.60 never writes a `done: true` line for a function trainable), or
        marked done. Else interrupted, or stopped early by a scheduler: not known as finished."""
        if not self.results:
            return False
        last = self.results[-1]
        epochs = self.config.get("epochs")
        reached = last.get("epoch", last.get("training_iteration"))
        if isinstance(epochs, int) and isinstance(reached, (int, float)) and reached >= epochs:
            return True
        return bool(last.get("done"))


def iter_results(lines: Iterable[str]) -> Iterator[dict]:
    """Parse Tune's result.json (one JSON object per line), skipping a torn last line."""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def read_json_object(folder: SweepFolder, fs_path: str, what: str) -> dict:
    """A JSON object, or a Pix3DError saying the file is not `what`."""
    where = folder.shown(fs_path)
    try:
        value = json.loads(folder.read_bytes(fs_path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Pix3DError(f"{where}: not a readable {what} ({one_line(exc)}); refusing to read it") from None
    if not isinstance(value, dict):
        raise Pix3DError(f"{where}: not a {what} (a JSON {type(value).__name__}, not an object); refusing to read it")
    return value


def read_trial_folders(folder: SweepFolder) -> list[TrialFolder]:
    """Every subfolder with a params.json, in name order, read as data (JSON and text only)."""
    trials = []
    for name in folder.names():
        params = folder.join(name, "params.json")
        if not folder.is_file(params):
            continue
        config = read_json_object(folder, params, "trial params file")
        result_path = folder.join(name, "result.json")
        results: list[dict] = []
        if folder.is_file(result_path):
            text = folder.read_bytes(result_path).decode("utf-8", errors="replace")
            results = list(iter_results(text.splitlines()))
            if not all(isinstance(r, dict) for r in results):
                raise Pix3DError(f"{folder.shown(result_path)}: not Tune results (a line is not a JSON object); "
                                 "refusing to read it")
            ids = [r["trial_id"] for r in results if "trial_id" in r]
            if any(not isinstance(i, str) for i in ids):
                raise Pix3DError(f"{folder.shown(result_path)}: not Tune results (a trial_id is not text)")
        error_path = folder.join(name, "error.txt")
        error = (folder.read_bytes(error_path).decode("utf-8", errors="replace").strip()
                 if folder.is_file(error_path) else None)
        checkpoints = sorted(n for n in folder.names(name) if n.startswith("checkpoint_"))
        trials.append(TrialFolder(name, config, results, error, checkpoints))
    return trials
