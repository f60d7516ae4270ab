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
search.report (MLflow, summary, table). What differs between kinds of sweep (a pose grid, a
model-based search, the fusion study: budget, checks, data, trainable, Tune's searcher and
scheduler, summary, table) the grid answers itself: its class is its kind (search.kinds).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from contextlib import nullcontext
from typing import Callable, Sequence

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from analysis.mlflow_store import check_tracking_uri
from pix3d.cli import run_cli
from pix3d.errors import UsageError
from search.cluster import check_cluster_resources, check_reachable, init_ray, restart_for_token_auth
from search.devices import NoRetryOnDeviceError
from search.faults import ErrorFileCheck, SignalGuard, check_storage_after, full_disk_symptom, sweep_fault
from search.grids import SweepKind, describe_grids, get_grid
from search.options import (SweepSettings, check_options, experiment_name, get_args_parser, read_settings, settings_for,
                            sized_grid, write_settings)
from search.plan import budget_line, build_param_space, plan_gpus, probe_gpus
from search.report import close_sweep, sweep_tracking_uri, tracking_callbacks
from search.resume_check import mend_deleted_checkpoints
from search.storage import check_sweep_folder, experiment_path, storage_for
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
    grid = sized_grid(get_grid(settings.grid), settings.samples).for_data(settings.data)
    if args.address and not args.dry_run and __name__ == "__main__":
        # As the command only (a library caller keeps its process): Ray reads RAY_AUTH_MODE on
        # import, so this may restart the command in token mode, before any output or work.
        restart_for_token_auth(args.address)
    settings, budget_overrides = grid.plan_budget(settings, args)
    if grid.size(settings.seeds) == 0:
        raise UsageError(f"grid {grid.name} with --seeds {settings.seeds} launches zero trials")

    space = build_param_space(grid, settings, budget_overrides, args)
    grid.check_cost(settings, space, args)  # a grid at the published budget on a CPU: its cost, first
    if line := budget_line(grid, budget_overrides, space):
        print(line)
    # What would fail in every trial (a missing ImageNet file, a folder the published split
    # disagrees with) is refused here, before anything is written.
    space = grid.check_before_start(settings, space, args)
    if args.dry_run:
        grid.print_dry_run(settings, space)
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
            check_tracking_uri(args.mlflow_uri)  # a bad scheme or a garbage .db: now, not after the sweep
        data = grid.prepare_data(settings, space)
        uri = sweep_tracking_uri(args, sweep_path)
        results = _run_on_ray(args, grid, space, data, settings, storage=storage, experiment=experiment,
                              command=command, uri=uri, guard=guard, resume_command=resume)
        if guard.received:
            raise guard.interrupted(resume)
        return close_sweep(results, grid, args, experiment=experiment, storage=storage, uri=uri,
                           sweep_path=sweep_path)
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
    return tune.Tuner.can_restore(sweep_path)


def _run_on_ray(args: argparse.Namespace, grid: SweepKind, space: dict, data, settings: SweepSettings, *,
                storage: str, experiment: str, command: str, uri: str | None, guard: SignalGuard | None = None,
                resume_command: str = ""):
    """Start or join Ray, check it can host the trials, save the settings and run the sweep
    (Ray is shut down after, whatever happens); the ResultGrid."""
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
        callbacks = tracking_callbacks(args, experiment=experiment, grid=grid, command=command,
                                       manifest=getattr(data, "manifest", {}), storage=storage,
                                       sweep_path=sweep_path, uri=uri, space=space)
        if args.resume:
            grid.on_resume(sweep_path, experiment, args.samples, lambda: write_settings(
                sweep_path, settings, (read_settings(sweep_path) or {}).get("command") or command, uri))
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


NO_AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"  # Ray: no CSV/JSON/TensorBoard loggers added


def run_sweep(grid: SweepKind, space: dict, data, *, storage: str, experiment: str,
              cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, max_concurrent: int | None = None,
              max_failures: int = 2, callbacks: Sequence = (), resume: bool = False,
              function: Callable | None = None, guard: SignalGuard | None = None):
    """Run (or, with `resume`, restore and finish) one sweep on the connected Ray; the ResultGrid.

    The Python API behind the CLI: Ray must be initialised by the caller. A restored sweep
    gets the same with_parameters trainable, so the cache goes into the object store again
    once and unfinished or errored trials continue from their last checkpoint. `function`
    replaces the grid's trainable function (benchmarks wrap train_pose to measure it).
    """
    trainable = tune.with_resources(tune.with_parameters(function or grid.train_function(), data=data),
                                    {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    sweep_path = experiment_path(storage, experiment)
    study = grid.study(sweep_path, experiment)
    if study is not None and study.storage:
        done = study.trial_count()
        print(f"Optuna study {study.name!r} in {study.storage}: "
              + (f"continued, {done} trial(s) so far" if done else "new"))
    started = time.time()
    if resume:
        # A driver killed between Tune deleting a checkpoint and saving its state leaves a state
        # naming the deleted one: put it back from the newer ones first (search.resume_check).
        mend_deleted_checkpoints(sweep_path)
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
            **grid.tune_options(space, study),  # searcher, scheduler, num_samples: the kind's
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
