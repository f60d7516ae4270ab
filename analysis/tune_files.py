"""Tune's files in a sweep folder, read as data: the one reader that resume, sync and the table share.

A sweep folder on shared storage (NFS, S3) can be written by other people, and Tune restores
it with `cloudpickle.loads`: `tuner.pkl`, `callback-states-*.pkl`, the searcher's state, the
pickled fields embedded in `experiment_state-*.json`, and a trial's `error.pkl`. Unpickling
runs whatever callables a pickle names, so before anything of the project hands a folder to
Tune, every pickle Tune will load is checked here WITHOUT being executed: its opcodes are
walked (`pickletools.genops`) on a model of the unpickler's stack, and it is refused when it
is truncated, names a global outside `ALLOWED_GLOBALS` (what Tune 2.60 and this project
write, read off the files a real smoke sweep and an Optuna search wrote), calls a global
outside `ALLOWED_CALLS`, or builds a code object other than the few bodies Tune itself
pickles by value (`known_code`: argparse's `identity`, Ray's RayTaskError methods).

Also owned here: the experiment state's trial entries as plain data (`read_experiment_state`)
and the trial folders as Tune left them (`read_trial_folders`: params.json, result.json,
error.txt, checkpoints), from which `analysis.sync` replays finished trials when the state is
torn or refused. Everything is read through `pyarrow.fs` (`FileSystem.from_uri`), so the same
code reads a local folder or a URI (s3://...).
"""

from __future__ import annotations

import builtins
import fnmatch
import functools
import json
import pickletools
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow.fs as pafs

from pix3d.errors import Pix3DError, one_line


class UntrustedFile(Pix3DError):
    """A file in a sweep folder that is not what Tune or the project writes (never loaded)."""


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


# ---------------------------------------------------------------------------- the allow-list

# (module, qualified name) of every global that Tune 2.60 and this project write into a sweep's
# pickles, read off the pickles of a real `search.run --grid smoke` sweep (MLflow on), a real
# `--grid optuna` search, a failed trial's error.pkl and every grid's param space
# (tests/test_tune_files.py checks a real sweep and every grid against them). A Ray version that writes others makes --resume refuse, naming
# the global: add it here after a look at what it does when called.
_TUNE = {
    "ray.tune": ("RunConfig", "CheckpointConfig", "FailureConfig", "Checkpoint"),
    "ray.tune.tune_config": ("TuneConfig",),
    "ray.train": ("SyncConfig",),
    "ray.air._internal.usage": ("AirEntrypoint",),
    "ray.train._internal.storage": ("StorageContext", "_FilesystemSyncer", "_upload_to_fs_path"),
    "ray.train._internal.checkpoint_manager": ("_CheckpointManager",),
    "ray.train._internal.session": ("_TrainingResult",),
    "ray.tune.resources": ("json_to_resources",),
    "ray.tune.stopper.noop": ("NoopStopper",),
    "ray.tune.search.basic_variant": ("_TrialIterator", "_VariantIterator"),
    "ray.exceptions": ("RayTaskError",),
    "ray.tune.experiment.experiment": ("Experiment",),
    # a model-based search (grid optuna): the searcher, its scheduler, Optuna's study and sampler
    "ray.tune.search.sample": ("_BackwardsCompatibleNumpyRng", "Categorical", "Categorical._Uniform", "Float",
                               "Float._LogUniform", "Float._Uniform", "Integer", "Integer._Uniform", "Function"),
    "ray.tune.search.concurrency_limiter": ("ConcurrencyLimiter",),
    "ray.tune.search.optuna.optuna_search": ("OptunaSearch",),
    "ray.tune.schedulers.async_hyperband": ("AsyncHyperBandScheduler", "_Bracket"),
    "optuna.distributions": ("CategoricalDistribution", "FloatDistribution", "IntDistribution"),
    "optuna.pruners._nop": ("NopPruner",),
    "optuna.samplers._lazy_random_state": ("LazyRandomState",),
    "optuna.samplers._random": ("RandomSampler",),
    "optuna.samplers._tpe.parzen_estimator": ("_ParzenEstimator", "_ParzenEstimatorParameters"),
    "optuna.samplers._tpe.sampler": ("TPESampler", "default_weights"),
    "optuna.search_space.intersection": ("IntersectionSearchSpace",),
    "optuna.storages._cached_storage": ("_CachedStorage", "_StudyInfo"),
    "optuna.storages._rdb.storage": ("RDBStorage",),
    "optuna.study._study_direction": ("StudyDirection",),
    "optuna.study.study": ("Study",),
    "optuna.trial._frozen": ("FrozenTrial",),
    "optuna.trial._state": ("TrialState",),
    "optuna.trial._trial": ("Trial",),
    "numpy": ("dtype", "ndarray"),
    "numpy._core.multiarray": ("_reconstruct",),
    "numpy._core.numeric": ("_frombuffer",),
    "numpy.random._mt19937": ("MT19937",),
    "numpy.random._pickle": ("__bit_generator_ctor", "__randomstate_ctor"),
    "datetime": ("datetime",),
    "ray.cloudpickle.cloudpickle": ("_builtin_type", "_make_function", "_function_setstate", "_make_cell",
                                    "_make_empty_cell", "_make_skeleton_class", "_class_setstate"),
    "pyarrow._fs": ("FileSystem._from_uri",),
    # the variant generator keeps Tune's own argument parser
    "argparse": ("ArgumentParser", "HelpFormatter", "_ArgumentGroup", "_StoreAction", "_StoreConstAction",
                 "_StoreTrueAction", "_StoreFalseAction", "_AppendAction", "_AppendConstAction", "_CountAction",
                 "_HelpAction", "_VersionAction", "_SubParsersAction", "_ExtendAction"),
    "builtins": ("int", "str", "type", "property", "RuntimeError"),
    "collections": ("deque",),
    "uuid": ("UUID",),
    "json": ("loads",),
    "re": ("_compile",),
    # this project's callbacks in tuner.pkl: tracking, the retry rule, the error-file check
    "analysis.tracking": ("MLflowTrackingCallback",),
    "analysis.sweep_logger": ("SweepInfo",),
    "search.devices": ("NoRetryOnDeviceError",),
    "search.faults": ("ErrorFileCheck",),
    # grids at each model's published lr: `tune.sample_from(published_lr)` in the variant state
    "search.grids": ("published_lr",),
}
ALLOWED_GLOBALS = frozenset((module, name) for module, names in _TUNE.items() for name in names)

# Of those, the ones a pickle calls (REDUCE) with arguments of its choosing: Tune's decoders,
# cloudpickle's constructors (a code object only from a `known_code` body, below) and plain
# data. The classes are only made through NEWOBJ (no __init__ of theirs runs) and BUILD.
ALLOWED_CALLS = frozenset({
    ("ray.tune.resources", "json_to_resources"), ("pyarrow._fs", "FileSystem._from_uri"),
    ("json", "loads"), ("re", "_compile"), ("builtins", "int"), ("builtins", "str"), ("builtins", "property"),
    ("collections", "deque"), ("uuid", "UUID"),
    # Enums: calling one looks a member up
    ("ray.air._internal.usage", "AirEntrypoint"), ("optuna.study._study_direction", "StudyDirection"),
    ("optuna.trial._state", "TrialState"),
    # numpy arrays and random states, datetimes (an Optuna study's trials)
    ("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__bit_generator_ctor"), ("numpy.random._pickle", "__randomstate_ctor"),
    ("datetime", "datetime"),
    *(("ray.cloudpickle.cloudpickle", name) for name in _TUNE["ray.cloudpickle.cloudpickle"]),
})

def _exception_class(module: str, qualname: str) -> bool:
    """A trial's exception inside error.pkl: any builtin exception class or one of the project's
    (making an exception runs no code of the file's choosing). Looked up by name, not imported."""
    if module == "pix3d.errors":
        return qualname in ("Pix3DError", "UsageError")
    found = getattr(builtins, qualname, None) if module == "builtins" else None
    return isinstance(found, type) and issubclass(found, BaseException)


def allowed_global(module: str, qualname: str) -> bool:
    return (module, qualname) in ALLOWED_GLOBALS or _exception_class(module, qualname)


# The types cloudpickle looks up by name (`_builtin_type(name)`) in Tune's files.
_BUILTIN_TYPES = frozenset({"CodeType", "FunctionType", "CellType", "MappingProxyType"})


@functools.lru_cache(maxsize=1)
def known_code() -> frozenset[tuple[bytes, tuple]]:
    """(bytecode, names) of the functions Tune pickles by value, taken from the running Python
    and Ray, so they match whatever version wrote the files: argparse's `identity` (in the
    variant generator's parser) and the methods of Ray's per-exception RayTaskError class (in
    error.pkl). A code object with any other body is refused."""
    import argparse

    import ray.exceptions  # heavy; only when a pickle builds a code object

    functions = [argparse.ArgumentParser()._registries["type"][None]]
    task_error = type(ray.exceptions.RayTaskError("f", "", RuntimeError("x")).as_instanceof_cause())
    for member in vars(task_error).values():
        accessors = (member.fget, member.fset, member.fdel) if isinstance(member, property) else (member,)
        functions += [f for f in accessors if hasattr(f, "__code__")]
    return frozenset((f.__code__.co_code, f.__code__.co_names) for f in functions)


# -------------------------------------------------------------------------- the opcode walk


class _Global(tuple):
    """(module, name) pushed by GLOBAL / STACK_GLOBAL."""


class _Code:
    """A code object under construction (cloudpickle's `_builtin_type('CodeType')`)."""


_UNKNOWN, _MARK = object(), object()
_CODE_TYPE = _Code()
_SKELETON = _Code()  # a class built by cloudpickle's _make_skeleton_class
_LITERALS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "STRING", "BINSTRING",
             "SHORT_BINSTRING", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "INT", "BININT", "BININT1",
             "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"}
_TUPLES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "EMPTY_TUPLE": 0}
_REFUSED_OPS = {"INST", "OBJ", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"}


def pickle_problem(data: bytes) -> str | None:
    """None when `data` is one whole pickle whose globals and calls are all allowed, else why not.

    Nothing is executed: the opcodes are walked on a model of the unpickler's stack, in which
    strings, numbers, tuples and globals are known and everything else is opaque."""
    if not data:
        return "empty (0 bytes)"
    stack: list = []
    memo: dict = {}
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in _REFUSED_OPS:
                return f"it uses the {name} opcode, which Tune never writes"
            if name in _LITERALS:
                stack.append(arg)
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            elif name == "MARK":
                stack.append(_MARK)
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name in _TUPLES:
                n = _TUPLES[name]
                items = tuple(stack[len(stack) - n:]) if n else ()
                del stack[len(stack) - n:]
                stack.append(items)
            elif name == "TUPLE":
                items = _pop_to_mark(stack)
                stack.append(tuple(items))
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, qualname = arg.split(" ", 1)
                else:
                    qualname, module = stack.pop(), stack.pop()
                    if not isinstance(module, str) or not isinstance(qualname, str):
                        return "it looks up a global whose name is computed (not a plain string)"
                if not allowed_global(module, qualname):
                    return f"it names {module}.{qualname}, which Tune and this project never pickle"
                stack.append(_Global((module, qualname)))
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                problem = _call_problem(func, args)
                if problem:
                    return problem
                stack.append(_result_of(func, args))
            elif name in ("NEWOBJ", "NEWOBJ_EX"):
                if name == "NEWOBJ_EX":
                    stack.pop()
                stack.pop()
                cls = stack.pop()
                if not isinstance(cls, _Global):
                    return f"it instantiates something that is not a named class ({name})"
                stack.append(_UNKNOWN)
            elif name == "STOP":
                break
            else:
                _generic(op, stack)
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        # genops raises ValueError on a cut-off stream; the others mean a malformed stack.
        return f"not a complete pickle ({len(data)} bytes: {one_line(exc)})"
    else:
        if name != "STOP":
            return f"not a complete pickle ({len(data)} bytes, no STOP)"
    return None


def _pop_to_mark(stack: list) -> list:
    items = []
    while True:
        item = stack.pop()
        if item is _MARK:
            return items[::-1]
        items.append(item)


def _generic(op, stack: list) -> None:
    """Any other opcode: pop what it consumes, push opaque values for what it produces."""
    before = op.stack_before
    if pickletools.markobject in before:
        _pop_to_mark(stack)
        for _ in range(before.index(pickletools.markobject)):
            stack.pop()
    else:
        for _ in before:
            stack.pop()
    stack.extend(_UNKNOWN for _ in op.stack_after)


def _result_of(func, args):
    """What a permitted call leaves on the stack, as far as the walk needs to know it."""
    if func == ("ray.cloudpickle.cloudpickle", "_builtin_type") and args == ("CodeType",):
        return _CODE_TYPE
    if func == ("ray.cloudpickle.cloudpickle", "_make_skeleton_class"):
        return _SKELETON
    return _UNKNOWN


def _call_problem(func, args) -> str | None:
    if func is _SKELETON:
        # An instance of a class the pickle itself made (Ray's RayTaskError(<cause>)): its
        # methods are code objects, each checked against known_code when it was built.
        return None
    if func is _CODE_TYPE:
        # CodeType(argcount, posonly, kwonly, nlocals, stacksize, flags, code, consts, names, ...)
        if not (isinstance(args, tuple) and len(args) > 8 and isinstance(args[6], bytes)
                and isinstance(args[8], tuple) and _literal(args[7])
                and (args[6], args[8]) in known_code()):
            return "it builds a code object (a function pickled by value) that Tune never writes"
        return None
    if not isinstance(func, _Global):
        return "it calls something that is not a named global"
    if tuple(func) not in ALLOWED_CALLS and not _exception_class(*func):
        return f"it calls {func[0]}.{func[1]}, which Tune's files never call"
    if func == ("ray.cloudpickle.cloudpickle", "_builtin_type"):
        if not (isinstance(args, tuple) and len(args) == 1 and args[0] in _BUILTIN_TYPES):
            return "it looks up a builtin type that Tune never pickles"
    return None


def _literal(value) -> bool:
    """A constant the walk knows entirely (no opaque object inside)."""
    if isinstance(value, tuple) and not isinstance(value, _Global):
        return all(_literal(v) for v in value)
    return value is None or isinstance(value, (str, bytes, int, float, bool))


def check_pickle(data: bytes, where: str) -> None:
    """UntrustedFile naming `where` unless `data` passes `pickle_problem`."""
    problem = pickle_problem(data)
    if problem:
        raise UntrustedFile(f"{where}: refused, not loaded: {problem}")


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
                raise UntrustedFile(f"{where}: refused, not loaded: a pickled field that is not hex") from None
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
            result.trials.append(StateTrial(trial["trial_id"], trial["config"], trial.get("status"),
                                            trial.get("experiment_tag"), trial.get("relative_logdir")))
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


def check_folder(folder: SweepFolder) -> int:
    """Check, without executing, every pickle Tune would load from `folder` and every pickled
    field of its experiment states; UntrustedFile naming the first refused one. Returns how
    many were checked. A searcher state saved as JSON by another searcher is accepted as JSON."""
    checked = 0
    for fs_path in pickles_in(folder):
        data = folder.read_bytes(fs_path)
        if fs_path.endswith(".json") and _is_json(data):
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
