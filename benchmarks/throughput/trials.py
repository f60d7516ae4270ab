"""The same training bare and inside Tune: the Tune-trial ratio, a trial's fixed costs, two trials' memory.

Owns `bare_fit` (`pix3d.train.fit` in this process, as the trial's config says, and what one
checkpoint write costs), `tune_trials` (the same config as trials of `search.run.run_sweep`,
the sweep's own code path, with `TrialClock` recording on the driver when each trial started,
reported and ended), `tune_ratio` (images/s inside the trial against the bare loop),
`fixed_costs` (trial start with its imports, first epoch, the report-and-checkpoint round trip)
and `two_trial_memory` (two concurrent trials through `memory.train_pose_sampled`).
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
                function=None) -> tuple[object, TrialClock, float]:
    """Run `space` through `search.run.run_sweep` (the `smoke` grid's settings: no search, no
    scheduler); (ResultGrid, its TrialClock, driver wall seconds of tuner.fit)."""
    from search.grids import get_grid
    from search.run import run_sweep

    clock = TrialClock()
    clock.fit_called = time.time()
    started = time.perf_counter()
    results = run_sweep(get_grid("smoke"), space, data, storage=storage, experiment=experiment,
                        max_failures=0, callbacks=[clock, *callbacks], function=function)
    wall = time.perf_counter() - started
    if results.errors:
        raise RuntimeError(f"benchmark trial failed: {results.errors[0]}")
    return results, clock, wall


def tune_ratio(bare: dict, clock: TrialClock) -> dict:
    """The one trial's images/s against the bare loop's: inside the training loop (reported
    images_per_s), over Tune's training time (time_total_s), and from the driver's trial start
    to its end (with the actor start and imports)."""
    (trial,) = clock.trials.values()
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


def fixed_costs(bare: dict, clock: TrialClock) -> dict:
    """Seconds: the sweep's start (run_sweep called to the first trial started: Tune's set-up,
    the cache into the object store, the first actor with the trainable's imports); per trial
    its start (Tune's start to the trial function's first line: the data from the object
    store), its set-up before the first epoch (split, statistics, model, and whatever is
    imported there), the first epoch's warm-up over a later one, and the per-epoch
    report-and-checkpoint round trip."""
    trials = [t for t in clock.trials.values() if t["results"]]
    first_start = min(t["start"] for t in trials)
    starts = [t["results"][0]["started_at"] - t["start"] for t in trials]
    round_trips = [r["time_this_iter_s"] - r["epoch_time_s"] for t in trials for r in t["results"][1:]]
    round_trip = statistics.mean(round_trips) if round_trips else None
    setups = [t["results"][0]["time_this_iter_s"] - start - t["results"][0]["epoch_time_s"] - (round_trip or 0.0)
              for t, start in zip(trials, starts)]
    epochs = bare["epoch_time_s"]
    return {"sweep_start_s": first_start - clock.fit_called, "trial_start_s": statistics.mean(starts), "trial_setup_s": statistics.mean(setups),
            "first_epoch_extra_s": epochs[0] - statistics.mean(epochs[1:]) if len(epochs) > 1 else None,
            "report_round_trip_s": round_trip, "checkpoint_save_s": bare["checkpoint_save_s"],
            "checkpoint_bytes": bare["checkpoint_bytes"]}


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
