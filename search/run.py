"""`python -m search.run --grid NAME`: run a named sweep as Ray Tune trials.

The front door of the project. On a fresh machine `python -m search.run --grid ablation`
generates the built-in synthetic data, prepares the cache, starts a local Ray runtime, runs
every trial (Ray's progress table while it runs), logs them to MLflow and ends with a
per-trial summary and the azimuth table.

Results and checkpoints go to `<storage>/<experiment>/` (storage default ./ray_results,
experiment default = the grid name); `--resume` restores that sweep with `Tuner.restore`,
keeping finished trials and continuing unfinished ones from their last checkpoint. The
settings that shape the trials (grid, data, budget, seeds, epochs) are saved beside it in
`search_run.json`, so a resumed sweep rebuilds exactly the same trainable.

`--address HOST:PORT` joins a running cluster (`ray start --head` / `ray start --address`);
then `--storage` must be a path every node shares (NFS) or a URI (s3://, gs://).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from pix3d.cli import (ArgumentParser, nonempty_str, nonnegative_float, nonnegative_int, positive_float,
                       positive_int, run_cli)
from pix3d.constants import parse_modalities
from pix3d.errors import Pix3DError, UsageError, one_line
from pix3d.fileio import is_uri, write_bytes_to
from search import fusion
from search.grids import GRIDS, Grid, describe_grids, expand, get_grid

SWEEP_SETTINGS_FILE = "search_run.json"
CONNECT_TIMEOUT_S = 5.0  # TCP connect to --address
JOIN_TIMEOUT_S = float(os.environ.get("PIX3D_RAY_JOIN_TIMEOUT_S", "20"))  # a full ray.init probe
# Settings that decide what the trials are; saved with the sweep so --resume rebuilds them.
SWEEP_KEYS = ("grid", "data", "cache", "budget", "seeds", "epochs")
# Seeds per configuration under the `quick` budget when --seeds is not given: two is the
# fewest that gives a spread (mean +- std) and keeps the CPU ablation near ten minutes.
QUICK_SEEDS = 2


def get_args_parser() -> ArgumentParser:
    """The CLI's options (a factory so benchmarks and tests can reuse it)."""
    parser = ArgumentParser(
        prog="python -m search.run",
        description="Run a named grid or search of pose-classifier trainings as Ray Tune trials.",
    )
    parser.add_argument("--grid", help=f"sweep to run: {', '.join(GRIDS)}")
    parser.add_argument("--list", action="store_true", help="list the grids with their trial counts and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the trials it would launch and exit")
    parser.add_argument("--data", default="synthetic", help="Pix3D folder, or 'synthetic' for the built-in set")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default $PIX3D_CACHE or ~/.cache/pix3d-pose)")
    parser.add_argument("--budget", default="auto", help="auto | quick | paper (auto = paper on a GPU, quick otherwise)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="override the epochs of the budget and grid")
    parser.add_argument("--seeds", type=nonnegative_int, default=None, help="seeds per configuration (default: the grid's)")
    parser.add_argument("--address", default=None, help="join a running Ray cluster: auto | HOST:PORT (default: local Ray)")
    parser.add_argument("--storage", default="ray_results", help="results/checkpoints root: PATH (shared on a cluster) or URI")
    parser.add_argument("--experiment", type=nonempty_str, default=None, help="sweep name under --storage and in MLflow (default: the grid name)")
    parser.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--cpus-per-trial", type=positive_float, default=1.0, help="CPUs per trial (sets torch threads)")
    parser.add_argument("--gpus-per-trial", type=nonnegative_float, default=0.0, help="GPUs per trial; fractions pack trials on one GPU")
    parser.add_argument("--max-concurrent", type=positive_int, default=None, help="at most this many trials at once")
    parser.add_argument("--max-failures", type=nonnegative_int, default=2, help="retries of a crashed trial from its last checkpoint")
    parser.add_argument("--resume", action="store_true", help="restore the interrupted sweep <storage>/<experiment>")
    parser.add_argument("--skip-missing-weights", action="store_true",
                        help="fusion grids: without the ImageNet weights file, run only the weights=scratch trials")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: trials with GPUs must train on CUDA (fail at once if not), others on the CPU; "
                             "cpu: train on the CPU even when given GPUs (a deliberate simulation, recorded per run)")
    parser.add_argument("--gpu-memory-gib", type=float, default=None,
                        help="GPU memory (GiB) to plan the packing of trials against (default $PIX3D_GPU_MEMORY_GIB, "
                             "else what the cluster's GPUs report)")
    return parser


@dataclass(frozen=True)
class SweepSettings:
    """What decides the trials of a sweep (saved beside it for --resume)."""

    grid: str
    data: str
    cache: str | None
    budget: str
    seeds: int | None
    epochs: int | None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in SWEEP_KEYS}


# ---------------------------------------------------------------------------- validation


def check_options(args) -> None:
    """Reject impossible numbers before anything starts."""
    if args.seeds is not None and args.seeds < 0:
        raise UsageError(f"--seeds must be >= 0, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if not args.cpus_per_trial > 0:
        raise UsageError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial}")
    if args.gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    if args.gpus_per_trial > 1 and not float(args.gpus_per_trial).is_integer():
        raise UsageError(f"--gpus-per-trial above 1 must be a whole number, got {args.gpus_per_trial}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if args.max_failures < 0:
        raise UsageError(f"--max-failures must be >= 0, got {args.max_failures}")
    if args.device == "cuda" and not args.gpus_per_trial > 0:
        raise UsageError("--device cuda needs --gpus-per-trial > 0 (trials without GPUs train on the CPU)")
    if args.gpu_memory_gib is not None and not args.gpu_memory_gib > 0:
        raise UsageError(f"--gpu-memory-gib must be > 0, got {args.gpu_memory_gib}")
    if args.budget not in ("auto", "quick", "paper"):
        raise UsageError(f"--budget must be auto, quick or paper, got {args.budget!r}")


def resolve_storage(storage: str) -> str:
    """Absolute storage path (created, checked writable) or a URI unchanged."""
    if is_uri(storage):
        return storage
    path = Path(storage).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise Pix3DError(f"--storage {storage}: not a writable folder ({exc.strerror or exc})") from None
    return str(path)


def experiment_path(storage: str, experiment: str) -> str:
    return f"{storage.rstrip('/')}/{experiment}"


def _read_settings(path: str) -> dict | None:
    if is_uri(path):
        import pyarrow.fs

        fs, sub = pyarrow.fs.FileSystem.from_uri(path)
        try:
            with fs.open_input_stream(f"{sub}/{SWEEP_SETTINGS_FILE}") as stream:
                return json.loads(stream.read().decode())
        except (OSError, FileNotFoundError):
            return None
    file = Path(path) / SWEEP_SETTINGS_FILE
    if not file.exists():
        return None
    try:
        saved = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise Pix3DError(f"--resume: {file} is torn or foreign ({one_line(exc)}); nothing was changed") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("grid"), str):
        raise Pix3DError(f"--resume: {file} is not a search.run settings file (no grid); nothing was changed")
    return saved


def _write_settings(path: str, settings: SweepSettings, command: str, mlflow_uri: str | None = None) -> None:
    """Save the sweep settings atomically (temp file + rename; a plain write for URIs).

    `mlflow_uri` is the store the sweep's tracking callback logs to: a resumed sweep keeps
    logging there (Tune restores the callback), so its closing table is read from there too."""
    payload = json.dumps({**settings.to_dict(), "command": command, "mlflow_uri": mlflow_uri}, indent=2).encode()
    write_bytes_to(path, SWEEP_SETTINGS_FILE, payload)


# ---------------------------------------------------------------------------- budget / trials


def resolve_run_budget(budget: str, gpus_per_trial: float, log=print, device: str = "auto") -> tuple[str, dict]:
    """Budget overrides for the trials. `auto` follows the trials' GPUs, not the driver's.

    On a cluster the driver often has no GPU while the workers do, so with --gpus-per-trial
    > 0 `auto` means `paper` even when this machine has none; with --device cpu (GPUs
    simulated on the CPU) it means `quick`.
    """
    from pix3d.train import resolve_budget

    if budget == "auto" and gpus_per_trial > 0 and device == "cpu":
        name, overrides, _ = resolve_budget("quick")
        log(f"budget auto -> quick (--device cpu: trials simulate their {gpus_per_trial:g} GPU on the CPU)")
        return name, dict(overrides)
    if budget == "auto" and gpus_per_trial > 0:
        name, overrides, _ = resolve_budget("paper")
        log(f"budget auto -> paper (trials get {gpus_per_trial:g} GPU each)")
        return name, dict(overrides)
    name, overrides, message = resolve_budget(budget)
    log(message)
    return name, dict(overrides)


def build_param_space(grid: Grid, settings: SweepSettings, budget_overrides: dict, args) -> dict:
    """The grid's space plus resources (the trainable sets threads from them) and --epochs."""
    space = grid.param_space(settings.seeds, budget_overrides)
    if settings.epochs is not None:
        space["epochs"] = settings.epochs
    space["cpus_per_trial"] = args.cpus_per_trial
    space["gpus_per_trial"] = args.gpus_per_trial
    if getattr(args, "device", "auto") != "auto":
        space["device"] = args.device  # "cpu" with GPUs: the trials simulate them (and record it)
    return space


def describe_trial(config: dict, keys: Sequence[str]) -> str:
    return "  ".join(f"{k}={config[k]}" for k in keys if k in config)


def _describe_domain(value: Any) -> str:
    """Readable Tune domains: choice([...]) and loguniform(lo, hi) instead of object reprs."""
    from ray.tune.search.sample import Categorical, Float, Integer

    if isinstance(value, Categorical):
        return f"choice({list(value.categories)})"
    if isinstance(value, (Float, Integer)):
        sampler = type(value.get_sampler()).__name__.lower().replace("_", "")
        kind = "log" if "log" in sampler else ""
        return f"{kind}uniform({value.lower:g}, {value.upper:g})"
    return repr(value)


def print_dry_run(grid: Grid, space: dict, out=print) -> None:
    """What would run: the constant settings once, then one line per trial (what varies)."""
    if grid.is_search:
        out(f"grid {grid.name}: {grid.num_samples} samples proposed by TPE (Optuna), "
            f"ASHA early stopping, at most {grid.max_concurrent} at once")
        for key, value in space.items():
            out(f"  {key}: {_describe_domain(value)}")
        return
    trials = expand(space)
    varying = [k for k in trials[0] if len({repr(t.get(k)) for t in trials}) > 1]
    fixed = {k: v for k, v in trials[0].items() if k not in varying}
    out(f"grid {grid.name}: {len(trials)} trials; fixed: " + " ".join(f"{k}={v}" for k, v in fixed.items()))
    for i, config in enumerate(trials):
        out(f"  {i:3d}  {describe_trial(config, varying)}")


# ---------------------------------------------------------------------------- Ray


def _check_reachable(address: str) -> None:
    """Fail fast when HOST:PORT does not answer: a TCP probe, bounded by CONNECT_TIMEOUT_S."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--address {address}: expected auto or HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise Pix3DError(
            f"--address {address}: no Ray cluster reachable within {CONNECT_TIMEOUT_S:g}s ({reason}); "
            "start one with `ray start --head` or leave --address out for local Ray"
        ) from None


# Joins the cluster in a child process: ray.init against a port that accepts TCP but is not a
# Ray GCS (a proxy, another service) retries for minutes and cannot be interrupted in-process.
_JOIN_PROBE = (
    "import sys, ray\n"
    "ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False, include_dashboard=False)\n"
    "print('joined', len(ray.nodes()))\n"
)


def _probe_cluster(address: str) -> None:
    """Join once in a child process, bounded by JOIN_TIMEOUT_S; raise naming the address if it fails."""
    import subprocess

    try:
        probe = subprocess.run([sys.executable, "-c", _JOIN_PROBE, address], capture_output=True,
                               text=True, timeout=JOIN_TIMEOUT_S, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        raise Pix3DError(
            f"--address {address}: no Ray cluster answered within {JOIN_TIMEOUT_S:g}s "
            "(is it a Ray head's GCS port, `ray start --head --port`?)"
        ) from None
    if probe.returncode != 0:
        errors = [line for line in probe.stderr.splitlines() if "Error" in line]
        reason = errors[-1].strip() if errors else f"exit code {probe.returncode}"
        raise Pix3DError(f"--address {address}: cannot join the Ray cluster: {reason[:400]}")


def _enable_token_auth() -> None:
    """RAY_AUTH_MODE=token for this process and its children.

    Ray reads the mode into a cached config when it is imported, so setting the variable is
    not enough once `ray` is loaded: Ray's own helper (the one `ray.init()` uses for local
    clusters) also refreshes that cache. It is private, hence the fallback.
    """
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth as enable
    except ImportError:
        return
    enable()


def _forwarded_env() -> dict | None:
    """A runtime_env that carries the driver's $PIX3D_PRECISION to every trial, on any node."""
    value = os.environ.get("PIX3D_PRECISION")
    return {"env_vars": {"PIX3D_PRECISION": value}} if value else None


def init_ray(address: str | None, log=print) -> None:
    """Join `address` or start a private local Ray (all of this machine's cores)."""
    import ray

    if address is None:
        # address="local" always starts a fresh instance: a bare ray.init() would silently
        # join whatever `ray start` cluster happens to run on this machine.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=True, configure_logging=False, runtime_env=_forwarded_env())
        return
    if address != "auto":
        _check_reachable(address)
    # Clusters started with token auth (the default for `ray start` since Ray 2.59/2.60)
    # reject a driver that does not also run in token mode.
    if "RAY_AUTH_MODE" not in os.environ:
        _enable_token_auth()
        log("RAY_AUTH_MODE not set: using token auth to join the cluster (set RAY_AUTH_MODE=disabled to opt out)")
    _probe_cluster(address)
    try:
        ray.init(address=address, configure_logging=False, runtime_env=_forwarded_env())
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Pix3DError(f"--address {address}: cannot join the Ray cluster: {one_line(exc)}") from None


def check_cluster_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Fail at once when no node can host one trial, instead of trials PENDING forever."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    capacity = [(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in nodes]
    if any(cpu >= cpus_per_trial and gpu >= gpus_per_trial for cpu, gpu in capacity):
        return
    total_gpus = sum(gpu for _, gpu in capacity)
    if gpus_per_trial > 0 and total_gpus == 0:
        raise Pix3DError(
            f"--gpus-per-trial {gpus_per_trial:g}: the Ray cluster has no GPUs "
            f"({len(nodes)} node(s)); use --gpus-per-trial 0 or join a GPU cluster with --address"
        )
    largest = ", ".join(f"{cpu:g} CPU/{gpu:g} GPU" for cpu, gpu in capacity) or "no nodes"
    raise Pix3DError(
        f"no Ray node can host a trial of {cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU "
        f"(nodes: {largest}); lower --cpus-per-trial / --gpus-per-trial"
    )


def make_trainable(data, cpus_per_trial: float, gpus_per_trial: float, trainable: str = "pose"):
    """The grid's trainable (train_pose, or train_relpose for fusion grids) with the data in the
    object store (once) and its resources."""
    from ray import tune

    if trainable == "relpose":
        from trainables.relpose import train_relpose as train
    else:
        from trainables.pose import train_pose as train

    trainable = tune.with_parameters(train, data=data)
    return tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})


# ---------------------------------------------------------------------------- tracking / table


def _tracking_callbacks(args, *, experiment: str, grid: str, command: str, manifest: dict, storage: str,
                        uri: str | None = None) -> list:
    """The MLflow Tune callback (analysis.tracking), or none when disabled or not installed."""
    if args.no_mlflow:
        return []
    try:
        from analysis.mlflow_store import default_tracking_uri
        from analysis.tracking import MLflowTrackingCallback
    except ImportError as exc:
        print(f"note: MLflow tracking unavailable ({exc}); results stay in Ray storage")
        return []
    uri = uri or args.mlflow_uri or default_tracking_uri()
    print(f"MLflow: {uri} (experiment {experiment})")
    return [MLflowTrackingCallback(uri, experiment, sweep_name=experiment, grid=grid, command=command,
                                   data_manifest=manifest, storage_path=storage)]


def sweep_tracking_uri(args, sweep_path: str) -> str | None:
    """The MLflow store of this sweep: for --resume the one recorded in its search_run.json
    (where the restored callback logs), else --mlflow-uri or ./mlflow.db; None with --no-mlflow."""
    if args.no_mlflow:
        return None
    if args.resume:
        saved = _read_settings(sweep_path) or {}
        if isinstance(saved.get("mlflow_uri"), str) and saved["mlflow_uri"]:
            return saved["mlflow_uri"]
    from analysis.mlflow_store import default_tracking_uri

    return args.mlflow_uri or default_tracking_uri()


def _report_table(args, *, experiment: str, trainable: str = "pose", uri: str | None = None) -> None:
    """Rebuild the azimuth table from MLflow (`uri`: the sweep's store) and write md/csv/png."""
    if args.no_mlflow:
        return
    try:
        if trainable == "relpose":  # rotation error by fusion x weights x loss
            from analysis.fusion_table import build_table, write_table
        else:
            from analysis.table import build_table, write_table
        from analysis.mlflow_store import default_tracking_uri
    except ImportError as exc:
        print(f"note: azimuth table unavailable ({exc})")
        return
    uri = uri or args.mlflow_uri or default_tracking_uri()
    try:
        table = build_table(uri, experiment)
        paths = write_table(table, Path("table_out") / experiment)
    except (Pix3DError, OSError) as exc:
        print(f"note: could not build the azimuth table: {one_line(exc)}")
        return
    md = paths.get("md")
    if md and Path(md).exists():
        print(Path(md).read_text())
    print("table written: " + ", ".join(str(p) for p in paths.values()))


# ---------------------------------------------------------------------------- summary


def trial_status(result) -> str:
    """ok | ERROR | unfinished (interrupted, or stopped early by ASHA) | not started."""
    if result.error:
        return "ERROR"
    metrics, config = result.metrics or {}, result.config or {}
    if not metrics.get("epoch"):
        return "not started"
    return "ok" if metrics["epoch"] >= config.get("epochs", metrics["epoch"]) else "unfinished"


def trial_rows(results, row, *, sort_by: int) -> tuple[list[tuple], dict[str, int]]:
    """The summaries' shared part: `row(config, metrics) + (status,)` per trial, sorted on the
    first `sort_by` fields, and how many trials ended in each status."""
    rows, counts = [], {}
    for result in results:
        status = trial_status(result)
        counts[status] = counts.get(status, 0) + 1
        rows.append((*row(result.config or {}, result.metrics or {}), status))
    rows.sort(key=lambda r: tuple(str(x) for x in r[:sort_by]))
    return rows, counts


def summarize(results) -> tuple[list[str], dict[str, int]]:
    """One line per trial (model, modalities, lr, seed, final/best azimuth acc) and status counts."""
    from pix3d.devices import device_label

    header = (f"{'model':<13} {'modalities':<28} {'lr':>8} {'seed':>4} {'epochs':>6} "
              f"{'final az':>8} {'best az':>8}  {'device':<22} status")

    def row(config: dict, metrics: dict) -> tuple:
        final = metrics.get("val_azimuth_acc")
        return (str(config.get("model", "-")), str(config.get("modalities", "-")), config.get("lr"),
                config.get("seed", "-"), metrics.get("epoch"), final,
                metrics.get("best_val_azimuth_acc", final), device_label(metrics))

    rows, counts = trial_rows(results, row, sort_by=4)

    def pct(v) -> str:
        return f"{100 * v:7.2f}%" if isinstance(v, (int, float)) and not math.isnan(v) else "-"

    lines = [header]
    for model, modalities, lr, seed, epoch, final, best, device, status in rows:
        lr_text = f"{lr:.0e}" if isinstance(lr, float) else "-"
        lines.append(f"{model:<13} {modalities:<28} {lr_text:>8} {str(seed):>4} {str(epoch or '-'):>6} "
                     f"{pct(final):>8} {pct(best):>8}  {device:<22} {status}")
    return lines, counts


# ---------------------------------------------------------------------------- main


def _settings_for(args, storage: str, experiment: str) -> SweepSettings:
    """This run's settings; with --resume, those saved with the sweep win."""
    # Absolute paths, so that --resume works from any working folder.
    data = args.data if args.data == "synthetic" else str(Path(args.data).expanduser().resolve())
    cache = str(args.cache.expanduser().resolve()) if args.cache else None
    fresh = SweepSettings(args.grid, data, cache, args.budget, args.seeds, args.epochs)
    if not args.resume:
        return fresh
    saved = _read_settings(experiment_path(storage, experiment))
    if saved is None:
        return fresh
    merged = SweepSettings(**{k: saved.get(k) for k in SWEEP_KEYS})
    if args.grid and args.grid != merged.grid:
        raise UsageError(f"--resume: sweep {experiment!r} ran grid {merged.grid!r}, not {args.grid!r}")
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_options(args)
    if args.list:
        print("\n".join(describe_grids(args.seeds)))
        return 0
    if not args.grid and not (args.resume and args.experiment):
        raise UsageError("--grid is required (or --resume --experiment NAME); see --list")
    if args.grid:
        get_grid(args.grid)  # unknown names fail here, listing the known ones
    experiment = args.experiment or args.grid
    if "/" in experiment or experiment in (".", ".."):
        raise UsageError(f"--experiment {experiment!r}: must be a plain name")
    # A dry run or a resume creates nothing (a resume of nothing must leave nothing behind).
    if (args.dry_run or args.resume) and not is_uri(args.storage):
        storage = str(Path(args.storage).expanduser().resolve())
    else:
        storage = resolve_storage(args.storage)
    sweep_path = experiment_path(storage, experiment)
    settings = _settings_for(args, storage, experiment)
    if settings.grid is None:
        raise UsageError(f"--resume: no {SWEEP_SETTINGS_FILE} in {sweep_path}; pass --grid and the original options")
    grid = get_grid(settings.grid)
    if grid.trainable == "relpose":
        budget_name, budget_overrides = fusion.resolve_budget(settings.budget, args.gpus_per_trial)
    else:
        budget_name, budget_overrides = resolve_run_budget(settings.budget, args.gpus_per_trial, device=args.device)
    if settings.seeds is None and budget_name == "quick" and not grid.is_search and grid.default_seeds > QUICK_SEEDS:
        settings = replace(settings, seeds=QUICK_SEEDS)
        print(f"quick budget: {QUICK_SEEDS} seeds per configuration (grid {grid.name} has "
              f"{grid.default_seeds} by default; --seeds N to choose)")
    n_trials = grid.size(settings.seeds)
    if n_trials == 0:
        raise UsageError(f"grid {grid.name} with --seeds {settings.seeds} launches zero trials")

    space = build_param_space(grid, settings, budget_overrides, args)
    if grid.trainable == "relpose":  # a missing ImageNet file stops it here, before anything starts
        space = fusion.check_imagenet_weights(grid, space, skip_missing=args.skip_missing_weights)
    if args.dry_run:
        print_dry_run(grid, space)
        print(f"results would go to {sweep_path}")
        return 0

    from ray import tune

    if args.resume and not tune.Tuner.can_restore(sweep_path):
        raise Pix3DError(f"--resume: no Tune sweep to restore at {sweep_path}")
    if not args.resume and tune.Tuner.can_restore(sweep_path):
        raise UsageError(f"a sweep already exists at {sweep_path}; add --resume, or pick another --experiment")
    if args.resume and not is_uri(sweep_path):
        # Before Tuner.restore: a torn state would be restored as a different sweep.
        from search.resume_check import verify_resume_state

        verify_resume_state(sweep_path, None if grid.is_search else expand(space))

    if args.address not in (None, "auto"):
        _check_reachable(args.address)  # before minutes of data preparation
    if args.mlflow_uri and not args.no_mlflow:
        from analysis.mlflow_store import check_tracking_uri

        check_tracking_uri(args.mlflow_uri)  # a bad scheme or a garbage .db: now, not after the sweep
    if grid.trainable == "relpose":
        data = fusion.prepare_pairs(settings, space)
    else:
        data = _prepare_data(settings, int(space.get("image_size", 224)))
        _check_grid_modalities(grid, data)
    command = shlex.join([sys.executable, "-m", "search.run", *(argv if argv is not None else sys.argv[1:])])

    import ray

    # With the GPU size given (--gpu-memory-gib / env), a packing that cannot fit fails before Ray starts.
    planned = args.gpus_per_trial > 0 and plan_gpus(args, grid, space, data, None)
    init_ray(args.address)
    try:
        check_cluster_resources(args.cpus_per_trial, args.gpus_per_trial)
        if args.gpus_per_trial > 0:
            probes = probe_gpus(args)
            if not planned:
                plan_gpus(args, grid, space, data, probes)
        if not args.resume:
            _write_settings(sweep_path, settings, command, sweep_tracking_uri(args, sweep_path))
        callbacks = _tracking_callbacks(args, experiment=experiment, grid=grid.name, command=command,
                                        manifest=getattr(data, "manifest", {}), storage=storage,
                                        uri=sweep_tracking_uri(args, sweep_path))
        if args.resume:
            print(f"resuming sweep {sweep_path}")
            if args.mlflow_uri:
                # Tuner.restore brings back the pickled tracking callback with its own URI.
                sys.stderr.write("warning: --mlflow-uri is ignored by --resume: the sweep keeps logging to the "
                                 "MLflow store it started with; copy it elsewhere with python -m analysis.sync\n")
        results = run_sweep(grid, space, data, storage=storage, experiment=experiment,
                            cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                            max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                            callbacks=callbacks, resume=args.resume)
    finally:
        ray.shutdown()

    lines, counts = (fusion.summarize if grid.trainable == "relpose" else summarize)(results)
    failed = counts.get("ERROR", 0)
    print(f"\nsweep {experiment}: {len(lines) - 1} trials, {failed} failed; results in {sweep_path}")
    print("\n".join(lines))
    _report_table(args, experiment=experiment, trainable=grid.trainable, uri=sweep_tracking_uri(args, sweep_path))
    pending = counts.get("not started", 0) + (counts.get("unfinished", 0) if not grid.is_search else 0)
    if pending:
        # Interrupted (Ctrl-C): Tune saved its state; the same sweep continues from here.
        print(f"{pending} trial(s) did not finish; continue with: python -m search.run --resume "
              f"--experiment {experiment} --storage {storage}")
    return 1 if failed or pending else 0


def probe_gpus(args, log=print) -> list[dict]:
    """Every GPU node must see CUDA before any trial starts (not with --device cpu: simulated)."""
    from search.devices import probe_gpu_nodes

    return probe_gpu_nodes(args.gpus_per_trial, log=log) if args.device != "cpu" else []


def plan_gpus(args, grid: Grid, space: dict, data, probes: list[dict] | None, log=print) -> bool:
    """Refuse trials that cannot share a GPU's memory (search.devices); False, saying nothing,
    when `probes` is None and the GPU size is not given (the probes may tell it later)."""
    from search.devices import estimate_trials, gpu_memory_to_plan, plan_gpu_packing

    memory, source = gpu_memory_to_plan(args.gpu_memory_gib, probes or ())
    if memory is None and probes is None:
        return False
    if getattr(grid, "trainable", "pose") != "pose":  # the estimate models pix3d.train.fit only
        log(f"GPU memory plan: not estimated for {grid.trainable} trials")
        return True
    configs = [space] if grid.is_search else expand(space)
    log(plan_gpu_packing(estimate_trials(configs, len(data)), args.gpus_per_trial, memory, source))
    return True


def _prepare_data(settings: SweepSettings, image_size: int):
    """The prepared cache at the budget's image size (generated/built on first use)."""
    from pix3d.prepare import prepare

    cache = Path(settings.cache) if settings.cache else None
    return prepare(settings.data, image_size, cache_dir=cache)


def _check_grid_modalities(grid: Grid, data) -> None:
    """A grid over normals on data without normals would fail in every such trial: say so now."""
    wanted = {m for subset in grid.subsets for m in parse_modalities(subset)}
    missing = sorted(m for m in wanted if not data.available.get(m, False))
    if missing:
        raise Pix3DError(
            f"grid {grid.name} uses {', '.join(missing)}, which the data ({data.manifest.get('dataset', '?')}) "
            "does not provide; add those folders beside img/ or use a grid without them"
        )


def run_sweep(grid: Grid, space: dict, data, *, storage: str, experiment: str,
              cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, max_concurrent: int | None = None,
              max_failures: int = 2, callbacks: Sequence = (), resume: bool = False):
    """Run (or, with `resume`, restore and finish) one sweep on the connected Ray; the ResultGrid.

    The Python API behind the CLI: Ray must be initialised by the caller. A restored sweep
    gets the same with_parameters trainable, so the cache goes into the object store again
    once and unfinished or errored trials continue from their last checkpoint.
    """
    from ray import tune

    from search.devices import NoRetryOnDeviceError

    trainable = make_trainable(data, cpus_per_trial, gpus_per_trial, grid.trainable)
    sweep_path = experiment_path(storage, experiment)
    started = time.time()
    if resume:
        tuner = tune.Tuner.restore(sweep_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        run_config = tune.RunConfig(
            name=experiment,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # The latest checkpoint is what a retry or --resume continues from. Two, not one:
            # with num_to_keep=1 Tune snapshots the whole experiment state at every report.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[*callbacks, NoRetryOnDeviceError()],
            verbose=1,
        )
        tune_config = tune.TuneConfig(
            search_alg=grid.search_alg(),
            scheduler=grid.scheduler(int(space.get("epochs", 1))),
            num_samples=grid.num_samples if grid.is_search else 1,
            max_concurrent_trials=max_concurrent,
        )
        tuner = tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)
    results = tuner.fit()
    print(f"sweep {'resumed and ' if resume else ''}finished in {time.time() - started:.0f}s")
    return results


if __name__ == "__main__":
    run_cli(main)
