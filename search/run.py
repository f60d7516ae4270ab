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

This module owns the order of the phases (`main`), the data and trainable the trials get,
and `run_sweep`, the Python API behind the command; each phase lives in its own module:
search.options (command line, saved settings), search.storage (the sweep folder),
search.plan (budget, trials, dry run, GPU plan), search.cluster (Ray, local or a cluster),
search.sweep_lock (one sweep per folder), search.faults (signals, a full disk),
search.report (MLflow, summary, table) and search.fusion (what the relative-pose grids change).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from pix3d.cli import run_cli
from pix3d.constants import parse_modalities
from pix3d.errors import Pix3DError, UsageError
from search import fusion
from search.cluster import check_cluster_resources, check_reachable, init_ray, restart_for_token_auth
from search.faults import ErrorFileCheck, SignalGuard, check_storage_after, full_disk_symptom, sweep_fault
from search.grids import Grid, describe_grids, expand, for_categories, get_grid
from search.options import (SweepSettings, check_options, experiment_name, get_args_parser, read_settings, settings_for,
                            sized_grid, write_settings)
from search.plan import budget_line, build_param_space, cpu_cost, plan_budget, plan_gpus, print_dry_run, probe_gpus
from search.report import close_sweep, summarize, sweep_tracking_uri, tracking_callbacks
from search.storage import check_sweep_folder, experiment_path, grow_search, storage_for
from search.study import search_tags, study_location
from search.sweep_lock import acquire as acquire_lock


def main(argv: Sequence[str] | None = None) -> int:
    """Options, plan, checks, data, the sweep on Ray, then the summary: the command's phases."""
    args = get_args_parser().parse_args(argv)
    check_options(args)
    if args.list:
        print("\n".join(describe_grids(args.seeds)))
        return 0
    experiment = experiment_name(args)
    storage = storage_for(args)
    sweep_path = experiment_path(storage, experiment)
    settings = settings_for(args, storage, experiment)
    grid = sized_grid(get_grid(settings.grid), settings.samples)
    grid = for_categories(grid, data_categories(settings.data)) if getattr(grid, "per_category", False) else grid
    if args.address and not args.dry_run and __name__ == "__main__":
        # As the command only (a library caller keeps its process): Ray reads RAY_AUTH_MODE on
        # import, so this may restart the command in token mode, before any output or work.
        restart_for_token_auth(args.address)
    settings, budget_overrides = plan_budget(grid, settings, args)
    if grid.size(settings.seeds) == 0:
        raise UsageError(f"grid {grid.name} with --seeds {settings.seeds} launches zero trials")

    space = build_param_space(grid, settings, budget_overrides, args)
    cpu_cost(grid, settings, space, args)  # a grid at the published budget on a CPU: its cost, first
    if line := budget_line(grid, budget_overrides, space):
        print(line)
    if grid.trainable == "relpose":  # a missing ImageNet file stops it here, before anything starts
        space = fusion.check_imagenet_weights(grid, space, skip_missing=args.skip_missing_weights)
    if grid.trainable == "pose":  # a folder the published split disagrees with: refused before anything is written
        _published_split(grid, settings, space)
    if args.dry_run:
        if grid.trainable == "pose":
            _dry_run_data(grid, settings)
        print_dry_run(grid, space)
        print(f"results would go to {sweep_path}")
        return 0

    command = shlex.join([sys.executable, "-m", "search.run", *(argv if argv is not None else sys.argv[1:])])
    resume = resume_command(args, storage, experiment)
    # One sweep per folder, until this command ends: taken first, so that a second sweep on a
    # running one is refused naming its holder (and never reads a state being written).
    lock = acquire_lock(sweep_path, command)
    guard = SignalGuard()
    guard.install()
    try:
        check_sweep_folder(sweep_path, grid, space, resume=args.resume)
        if args.address not in (None, "auto"):
            check_reachable(args.address)  # before minutes of data preparation
        if args.mlflow_uri and not args.no_mlflow:
            from analysis.mlflow_store import check_tracking_uri

            check_tracking_uri(args.mlflow_uri)  # a bad scheme or a garbage .db: now, not after the sweep
        data = prepare_data(grid, settings, space)
        uri = sweep_tracking_uri(args, sweep_path)
        results = _run_on_ray(args, grid, space, data, settings, storage=storage, experiment=experiment,
                              command=command, uri=uri, guard=guard, resume_command=resume)
        if guard.received:
            raise guard.interrupted(resume)
        summary = fusion.summarize if grid.trainable == "relpose" else partial(summarize, search=grid.is_search)
        return close_sweep(results, summary, args,
                           experiment=experiment, trainable=grid.trainable, is_search=grid.is_search,
                           storage=storage, uri=uri, sweep_path=sweep_path)
    except KeyboardInterrupt:
        raise guard.interrupted(resume if _has_state(sweep_path) else None) from None
    finally:
        lock.release()
        guard.restore()


def resume_command(args: argparse.Namespace, storage: str, experiment: str) -> str:
    """The command that resumes this sweep (what an interrupted or full-disk sweep prints)."""
    extra = ["--address", args.address] if args.address else []
    return shlex.join(["python", "-m", "search.run", "--resume", "--experiment", experiment,
                       "--storage", storage, *extra])


def _has_state(sweep_path: str) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(sweep_path)


def _run_on_ray(args: argparse.Namespace, grid: Grid, space: dict, data, settings: SweepSettings, *,
                storage: str, experiment: str, command: str, uri: str | None, guard: SignalGuard | None = None,
                resume_command: str = ""):
    """Start or join Ray, check it can host the trials, save the settings and run the sweep
    (Ray is shut down after, whatever happens); the ResultGrid."""
    import ray

    sweep_path = experiment_path(storage, experiment)
    # With the GPU size given (--gpu-memory-gib / env), a packing that cannot fit fails before Ray starts.
    planned = args.gpus_per_trial > 0 and plan_gpus(args, grid, space, data, None)
    init_ray(args.address)
    if guard is not None:
        guard.install()  # ray.init put Ray's native SIGTERM handler (a stack dump, exit 134) in place
    error_files = ErrorFileCheck()
    try:
        check_cluster_resources(args.cpus_per_trial, args.gpus_per_trial)
        if args.gpus_per_trial > 0:
            probes = probe_gpus(args)
            if not planned:
                plan_gpus(args, grid, space, data, probes)
        if not args.resume:
            write_settings(sweep_path, settings, command, uri)
        callbacks = tracking_callbacks(args, experiment=experiment, grid=grid.name, command=command,
                                       manifest=getattr(data, "manifest", {}), storage=storage, uri=uri,
                                       search=search_info(grid, sweep_path, experiment),
                                       space=space)
        if args.resume and grid.is_search and args.samples is not None:
            # --resume --samples N: the same study, asked for more trials (the saved size grows too).
            before = grow_search(sweep_path, grid.num_samples)
            if grid.num_samples > before:
                saved = read_settings(sweep_path) or {}
                write_settings(sweep_path, settings, saved.get("command") or command, uri)
                print(f"search {experiment}: grown from {before} to {grid.num_samples} trials (the same Optuna study)")
        if args.resume:
            print(f"resuming sweep {sweep_path}")
            if args.mlflow_uri:
                # Tuner.restore brings back the pickled tracking callback with its own URI.
                sys.stderr.write("warning: --mlflow-uri is ignored by --resume: the sweep keeps logging to the "
                                 "MLflow store it started with; copy it elsewhere with python -m analysis.sync\n")
        results = run_sweep(grid, space, data, storage=storage, experiment=experiment,
                            cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                            max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                            callbacks=[*callbacks, error_files], resume=args.resume, guard=guard)
    except Exception as exc:  # noqa: BLE001 - only a full disk's symptoms become one line here
        if not full_disk_symptom(exc):
            raise
        raise sweep_fault(sweep_path, exc, error_files.torn, resume_command) from None
    finally:
        ray.shutdown()
    check_storage_after(sweep_path, error_files.torn, resume_command)
    return results


def search_info(grid: Grid, sweep_path: str, experiment: str) -> dict | None:
    """For a model-based search, what its MLflow parent run records (search.study); else None."""
    if not grid.is_search:
        return None
    from search.grids import OPTUNA_METRIC, OPTUNA_MODE

    return search_tags(study_location(sweep_path, experiment), metric=OPTUNA_METRIC, mode=OPTUNA_MODE,
                       params=grid.search_params)


def prepare_data(grid: Grid, settings: SweepSettings, space: dict):
    """What the trials train on: the fusion grids' pair set, or the prepared cache at the
    budget's image size (generated/built on first use) checked against the grid's modalities."""
    if grid.trainable == "relpose":
        return fusion.prepare_pairs(settings, space)
    from pix3d.data.prepare import prepare

    cache = Path(settings.cache) if settings.cache else None
    data = prepare(settings.data, int(space.get("image_size", 224)), cache_dir=cache, sources=settings.sources,
                   crop=crop_of(grid, settings))
    _check_grid_modalities(grid, data.available, data.manifest.get("dataset", "?"))
    return data


def data_categories(data: str) -> list[str]:
    """The categories of a dataset folder's json (or of the built-in set), nothing built."""
    if str(data) == "synthetic":
        from pix3d.render.shapes import CATEGORIES

        return sorted(CATEGORIES)
    from pix3d.data.annotations import read_entries

    _, _, raw = read_entries(Path(data))
    return sorted({e["category"] for e in raw if isinstance(e, dict) and isinstance(e.get("category"), str)})


def crop_of(grid: Grid, settings: SweepSettings) -> str:
    """The cache's crop: --crop, else the grid's (reproduce: the published one), else margin."""
    return settings.crop or getattr(grid, "crop", None) or "margin"


def _published_split(grid: Grid, settings: SweepSettings, space: dict) -> None:
    """Say which membership `--split published` trials get (and the crop), from the json only;
    a folder the notebook's membership disagrees with is one error line, nothing written."""
    from pix3d.data.prepare import published_split_plan

    splits = {t.get("split", "published") for t in ([space] if grid.is_search else expand(space))}
    print(f"crop: {crop_of(grid, settings)}")
    if "published" in splits:
        print(published_split_plan(settings.data).message)


def _dry_run_data(grid: Grid, settings: SweepSettings) -> None:
    """--dry-run on a dataset folder: where each modality would come from (nothing is built),
    and the same refusal as a real run when the grid needs a modality the data cannot give."""
    from pix3d.data.maps import UNAVAILABLE
    from pix3d.data.prepare import plan_sources

    if str(settings.data) == "synthetic":
        return
    n, sources = plan_sources(settings.data, settings.sources)
    print(f"data {settings.data}: {n} entries; " + "; ".join(
        f"{m} {s}" if s == UNAVAILABLE else f"{m} from {s}" for m, s in sources.items()))
    _check_grid_modalities(grid, {m: s != UNAVAILABLE for m, s in sources.items()}, str(settings.data))


def _check_grid_modalities(grid: Grid, available: dict[str, bool], dataset: str) -> None:
    """A grid over normals on data without normals would fail in every such trial: say so now."""
    wanted = {m for subset in grid.subsets for m in parse_modalities(subset)}
    missing = sorted(m for m in wanted if not available.get(m, False))
    if missing:
        raise Pix3DError(
            f"grid {grid.name} uses {', '.join(missing)}, which the data ({dataset}) does not provide; "
            "add those folders beside img/, choose a source (--normals predict|oracle, --boundaries "
            "canny|predict|oracle), or use a grid without them"
        )


def make_trainable(data, cpus_per_trial: float, gpus_per_trial: float, trainable: str = "pose",
                   function: Callable | None = None):
    """The grid's trainable (train_pose, or train_relpose for fusion grids; `function` instead
    when given) with the data in the object store (once) and its resources."""
    from ray import tune

    if function is not None:
        train = function
    elif trainable == "relpose":
        from trainables.relpose import train_relpose as train
    else:
        from trainables.pose import train_pose as train

    trainable = tune.with_parameters(train, data=data)
    return tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})


NO_AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"  # Ray: no CSV/JSON/TensorBoard loggers added


def run_sweep(grid: Grid, space: dict, data, *, storage: str, experiment: str,
              cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, max_concurrent: int | None = None,
              max_failures: int = 2, callbacks: Sequence = (), resume: bool = False,
              function: Callable | None = None, guard: SignalGuard | None = None):
    """Run (or, with `resume`, restore and finish) one sweep on the connected Ray; the ResultGrid.

    The Python API behind the CLI: Ray must be initialised by the caller. A restored sweep
    gets the same with_parameters trainable, so the cache goes into the object store again
    once and unfinished or errored trials continue from their last checkpoint. `function`
    replaces the grid's trainable function (benchmarks wrap train_pose to measure it).
    """
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from search.devices import NoRetryOnDeviceError

    trainable = make_trainable(data, cpus_per_trial, gpus_per_trial, grid.trainable, function)
    sweep_path = experiment_path(storage, experiment)
    study = study_location(sweep_path, experiment) if grid.is_search else None
    if study is not None and study.storage:
        done = study.trial_count()
        print(f"Optuna study {study.name!r} in {study.storage}: "
              + (f"continued, {done} trial(s) so far" if done else "new"))
    started = time.time()
    if resume:
        # The searcher comes back from Tune's state with its storage: the same study goes on.
        tuner = tune.Tuner.restore(sweep_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        run_config = tune.RunConfig(
            name=experiment,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # The latest checkpoint is what a retry or --resume continues from. Two, not one:
            # with num_to_keep=1 Tune snapshots the whole experiment state at every report.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[*callbacks, NoRetryOnDeviceError(), JsonLoggerCallback(), CSVLoggerCallback()],
            verbose=1,
        )
        tune_config = tune.TuneConfig(
            search_alg=grid.search_alg(storage=study and study.open_storage(), study_name=study and study.name,
                                       max_epochs=int(space.get("epochs", 1))),
            scheduler=grid.scheduler(int(space.get("epochs", 1))),
            num_samples=grid.num_samples if grid.is_search else 1,
            max_concurrent_trials=max_concurrent,
            # A finished trial's actor runs the next trial: no new worker process, no second
            # import of torch (seconds of CPU per trial, measured by benchmarks.throughput).
            # A trial seeds everything it draws from, so it computes the same in a reused actor.
            reuse_actors=True,
        )
        tuner = tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)
    # Tune adds a TensorBoard logger unless told not to, and prints a `tensorboard --logdir` hint
    # into its temporary session folder; MLflow is this project's viewer. A new sweep names the
    # JSON and CSV loggers itself (each trial's result.json, which analysis.sync replays); a
    # restored one keeps Tune's defaults, since a sweep started by older code named none.
    previous = os.environ.get(NO_AUTO_LOGGERS)
    if not resume and previous is None:
        os.environ[NO_AUTO_LOGGERS] = "1"
    try:
        with guard.fitting() if guard is not None else nullcontext():
            results = tuner.fit()
    finally:
        if previous is None:
            os.environ.pop(NO_AUTO_LOGGERS, None)
    if guard is not None and guard.received:
        return results  # stopped by a signal: the caller says how to resume
    print(f"sweep {'resumed and ' if resume else ''}finished in {time.time() - started:.1f}s")
    return results


if __name__ == "__main__":
    run_cli(main)
