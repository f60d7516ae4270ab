"""The same training bare and inside Tune: the Tune-trial ratio, a trial's fixed costs, two trials' memory.

Owns `bare_fit` (`pix3d.train.fit` in this process, as the trial's config says, and what one
checkpoint write costs), `tune_trials` (the same config as trials of `search.run.run_sweep`,
the sweep's own code path, with `TrialClock` recording on the driver when each trial started,
reported and ended), `fresh_and_reused` (the trial twice: in a fresh actor, then in the same
actor reused, as a sweep runs most of its trials), `tune_ratio` (a trial's images/s against
the bare loop), `fixed_costs` (sweep start, an actor's warm-up, trial start and set-up, first
epoch, checkpoint and report round trip) and `two_trial_memory` (two concurrent trials
through `memory.train_pose_sampled`).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

from ray import tune

from benchmarks.throughput.memory import PROBE_KEY, train_pose_sampled
from pix3d.models import published_lr

REPORTED = ("epoch", "epoch_time_s", "images_per_s", "n_train", "started_at", "time_this_iter_s",
            "time_total_s", "training_iteration", "pid")


class TrialClock(tune.Callback):
    """Driver-side wall clock per trial: when Tune started it, each result, when it ended."""

    def __init__(self) -> None:
        self.trials: dict[str, dict] = {}
        self.fit_called: float | None = None   # set by tune_trials just before the sweep runs
        self.setup_called: float | None = None  # Tune set up its callbacks: its loop is about to start

    def setup(self, **info):
        self.setup_called = time.time()

    def _trial(self, trial) -> dict:
        return self.trials.setdefault(trial.trial_id, {"start": None, "results": [], "end": None})

    def on_trial_start(self, iteration, trials, trial, **info):
        self._trial(trial)["start"] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._trial(trial)["results"].append({"at": time.time(), **{k: result.get(k) for k in REPORTED}})

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._trial(trial)["end"] = time.time()


def trial_config(model: str, modalities: str, budget: dict, **overrides) -> dict:
    """A Tune config as a sweep's trial gets it: the budget, the model at its published lr, one CPU."""
    return {**budget, "model": model, "modalities": modalities, "lr": published_lr(model), "seed": 0,
            "cpus_per_trial": 1, "gpus_per_trial": 0, **overrides}


def bare_fit(config: dict, data) -> dict:
    """`fit` as the trial would run it, in this process: wall time, images/s, per-epoch times,
    and the cost of writing the last checkpoint (`save_checkpoint`) and its size."""
    from pix3d.train import fit, save_checkpoint
    from trainables.pose import train_config_from_tune

    last: dict = {}
    started = time.perf_counter()
    out = fit(train_config_from_tune(config), data, on_epoch=lambda _metrics, checkpoint: last.update(checkpoint))
    wall = time.perf_counter() - started
    history = out["history"]
    images = sum(m["n_train"] for m in history)
    with tempfile.TemporaryDirectory(prefix="tput-ckpt-") as folder:
        path = Path(folder) / "checkpoint.pt"
        t0 = time.perf_counter()
        save_checkpoint(path, last)
        save_s = time.perf_counter() - t0
        size = path.stat().st_size
    return {"wall_s": wall, "images": images, "images_per_s": images / wall,
            "epoch_time_s": [m["epoch_time_s"] for m in history],
            "loop_images_per_s": [m["images_per_s"] for m in history],
            "checkpoint_save_s": save_s, "checkpoint_bytes": size}


def tune_trials(space: dict, data, *, storage: str, experiment: str, callbacks: Sequence = (),
                function=None, max_concurrent: int | None = None, cpus_per_trial: float = 1.0,
                gpus_per_trial: float = 0.0) -> tuple[object, TrialClock, float]:
    """Run `space` through `search.run.run_sweep` (the `smoke` grid's settings: no search, no
    scheduler) with each trial's CPU and GPU share; (ResultGrid, its TrialClock, driver wall
    seconds of tuner.fit)."""
    from search.grids import get_grid
    from search.run import run_sweep

    clock = TrialClock()
    clock.fit_called = time.time()
    started = time.perf_counter()
    results = run_sweep(get_grid("smoke"), space, data, storage=storage, experiment=experiment,
                        max_failures=0, max_concurrent=max_concurrent, callbacks=[clock, *callbacks],
                        function=function, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)
    wall = time.perf_counter() - started
    if results.errors:
        raise RuntimeError(f"benchmark trial failed: {results.errors[0]}")
    return results, clock, wall


def fresh_and_reused(config: dict, data, *, storage: str, callbacks: Sequence = (),
                     gpus_per_trial: float = 0.0) -> tuple[dict, dict, dict]:
    """The same trial twice, one after the other (the sweep's actor reuse): the first in a fresh
    actor, the second in the first one's actor. (fresh, reused) TrialClock entries and the
    sweep's start in seconds: run_sweep's call to Tune's loop (`tune_setup_s`: the cache into
    the object store, the Tuner, the callbacks), then to the first trial's start
    (`first_actor_s`: a worker loading the trainable, torch with it)."""
    space = {**config, "seed": tune.grid_search([config.get("seed", 0)] * 2)}
    _, clock, _ = tune_trials(space, data, storage=storage, experiment="one", callbacks=callbacks, max_concurrent=1,
                              cpus_per_trial=float(config.get("cpus_per_trial", 1)), gpus_per_trial=gpus_per_trial)
    fresh, reused = sorted(clock.trials.values(), key=lambda t: t["start"])
    if fresh["results"][0]["pid"] != reused["results"][0]["pid"]:
        raise RuntimeError("benchmark: the second trial did not run in the first one's actor")
    return fresh, reused, {"tune_setup_s": clock.setup_called - clock.fit_called,
                           "first_actor_s": fresh["start"] - clock.setup_called}


def _before_first_epoch(trial: dict) -> float:
    """Seconds of the trial's first iteration that are not its first epoch."""
    first = trial["results"][0]
    return first["time_this_iter_s"] - first["epoch_time_s"]


def tune_ratio(bare: dict, trial: dict) -> dict:
    """A trial's images/s against the bare loop's: over Tune's training time (time_total_s, the
    target), inside the training loop only (reported images_per_s), and from the driver's trial
    start to its end."""
    results = trial["results"]
    images = sum(r["n_train"] for r in results)
    loop = statistics.mean(r["images_per_s"] for r in results)
    total = results[-1]["time_total_s"]
    end_to_end = trial["end"] - trial["start"]
    return {"bare_images_per_s": bare["images_per_s"], "tune_images_per_s": images / total,
            "ratio": (images / total) / bare["images_per_s"],
            "loop_ratio": loop / statistics.mean(bare["loop_images_per_s"]),
            "end_to_end_ratio": (images / end_to_end) / bare["images_per_s"],
            "bare_wall_s": bare["wall_s"], "time_total_s": total, "driver_trial_s": end_to_end}


def fixed_costs(bare: dict, fresh: dict, reused: dict, sweep_start: dict) -> dict:
    """Seconds: the sweep's start (`fresh_and_reused`); a fresh actor's warm-up (what its first trial spends before its first epoch beyond a
    reused actor's trial: torch's lazily imported parts, first use of every kernel); per trial
    its start (Tune's start to the trial function's first line: the data from the object
    store), its set-up (split, statistics, model, optimizer: what the bare fit spends before
    its first epoch too), the first epoch's warm-up over a later one, and per epoch the
    checkpoint write and the report-and-checkpoint round trip."""
    first = reused["results"][0]
    trial_start = first["started_at"] - reused["start"]
    round_trips = [r["time_this_iter_s"] - r["epoch_time_s"] for r in reused["results"][1:]]
    round_trip = statistics.mean(round_trips) if round_trips else 0.0
    epochs = bare["epoch_time_s"]
    return {**sweep_start,
            "actor_warm_up_s": _before_first_epoch(fresh) - _before_first_epoch(reused),
            "trial_start_s": trial_start,
            "trial_setup_s": _before_first_epoch(reused) - trial_start - round_trip,
            "bare_setup_s": bare["wall_s"] - sum(epochs),
            "first_epoch_extra_s": epochs[0] - statistics.mean(epochs[1:]) if len(epochs) > 1 else None,
            "report_round_trip_s": round_trip if round_trips else None,
            "checkpoint_save_s": bare["checkpoint_save_s"], "checkpoint_bytes": bare["checkpoint_bytes"]}


def two_trial_memory(config: dict, data, *, storage: str, probe_dir: Path) -> dict:
    """Two concurrent trials (seeds 0 and 1) sharing the cache: each one's peak process memory and
    the cache's pages in it; `ratio` = (the object store's one copy + every private copy of the
    cache in the trials) / one copy."""
    probe_dir.mkdir(parents=True, exist_ok=True)
    space = {**config, "seed": tune.grid_search([0, 1]), PROBE_KEY: str(probe_dir)}
    tune_trials(space, data, storage=storage, experiment="memory", function=train_pose_sampled)
    peaks = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("*.json"))]
    cache_bytes = peaks[0]["cache_bytes"]
    private_copies = sum(p["cache"]["private"] for p in peaks)
    return {"cache_bytes": cache_bytes, "trials": peaks,
            "cache_in_trials_bytes": cache_bytes + private_copies,
            "ratio": (cache_bytes + private_copies) / cache_bytes,
            "shared_mapping": all(p["cache"]["shared_mapping"] for p in peaks),
            "processes_private_bytes": sum(p["process"]["private"] for p in peaks),
            "processes_rss_bytes": sum(p["process"]["rss"] for p in peaks)}
