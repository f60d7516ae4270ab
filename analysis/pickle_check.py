"""Is a pickle only what Tune and this project write? Answered without executing it.

Unpickling runs whatever callables a pickle names, so the pickles of a sweep folder (which
analysis.tune_files finds and reads) are judged here by walking their opcodes
(`pickletools.genops`) on a model of the unpickler's stack: strings, numbers, tuples and
globals are known, everything else is opaque. A pickle is refused when it is cut off, names a
global outside `ALLOWED_GLOBALS`, calls one outside `ALLOWED_CALLS`, or builds a code object
other than the few bodies Tune itself pickles by value (`known_code`). Pure: no file is read.
"""

from __future__ import annotations

import builtins
import functools
import pickletools

from pix3d.errors import Pix3DError, one_line


class UntrustedFile(Pix3DError):
    """A file in a sweep folder that is not what Tune or the project writes (never loaded)."""


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
    # a sweep stored in S3: Tune's storage context keeps its filesystem (endpoint and region;
    # rebuilding one opens no connection and runs no code of the pickle's)
    "pyarrow._s3fs": ("S3FileSystem._reconstruct",),
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
    # (defined in search.space; sweeps saved before it existed name search.grids)
    "search.space": ("published_lr", "cell_value"),
    "search.grids": ("published_lr", "cell_value"),
    # a grid with extra cells (reproduce): `tune.sample_from(partial(cell_value, cells, key))`;
    # calling partial only builds the wrapper (a pickle cannot call what it built: see _call_problem)
    "functools": ("partial",),
    # a search whose ASHA stops are PRUNED in its Optuna study
    "search.pruning": ("PruningOptunaSearch",),
    # a new sweep names Tune's JSON and CSV loggers itself (no TensorBoard logger)
    "ray.tune.logger.json": ("JsonLoggerCallback",),
    "ray.tune.logger.csv": ("CSVLoggerCallback",),
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
    ("datetime", "datetime"), ("functools", "partial"),
    ("pyarrow._s3fs", "S3FileSystem._reconstruct"),
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


def cut_off(problem: str | None) -> bool:
    """`pickle_problem` found the data empty or not a complete pickle (cut off, or opcodes that
    do not build a value), with nothing refused in what it walked before that point."""
    return bool(problem) and problem.startswith(("empty (0 bytes)", "not a complete pickle"))


def check_pickle(data: bytes, where: str) -> None:
    """UntrustedFile naming `where` unless `data` passes `pickle_problem`."""
    problem = pickle_problem(data)
    if problem:
        raise UntrustedFile(f"{where}: refused, not loaded: {problem}")
