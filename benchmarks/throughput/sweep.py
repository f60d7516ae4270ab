"""The sweep as a user runs it: the quick ablation command against its trials' summed training time.

Owns `SweepPlan` (what to run: the `ablation` grid on the built-in set, or under `--quick` the
`smoke` grid on a tiny set), `prepare_data` (the fresh clone's data generation and preparation,
through the real commands, timed), `run_command` (`python -m search.run ...` in a child
process, timed from outside), `sweep_figures` (its wall time against the trials' summed
`time_total_s` over the concurrency, from Tune's own result files) and `mlflow_replay` (what
logging the sweep to MLflow costs: the same `SweepLogger` replaying it into a fresh store).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pix3d.errors import Pix3DError

REPO = Path(__file__).resolve().parents[2]
TINY = {"n": 84, "seed": 0, "size": 96}   # as tests/test_search.py's tiny set: 12 images per category


@dataclass(frozen=True)
class SweepPlan:
    """The sweep to measure and where it runs."""

    grid: str
    work: Path            # holds the data (unless `cache` is elsewhere), Ray storage, mlflow.db, table_out
    cache: Path           # the cache root the command uses
    quick: bool
    cpus_per_trial: int = 1

    @property
    def storage(self) -> Path:
        return self.work / "ray_results"

    @property
    def data(self) -> str:
        return str(self.cache / "pix3d-tiny") if self.quick else "synthetic"

    @property
    def concurrency(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.cpus_per_trial)


def child_env() -> dict:
    """The environment of the commands: this checkout first on the path, no usage stats."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RAY_ADDRESS", None)
    return env


def _run(args: list[str], cwd: Path, what: str) -> tuple[float, str]:
    """Run `python args...`; (wall seconds, stdout). A failure raises with the output's tail."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=child_env(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise Pix3DError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}")
    return wall, proc.stdout


def prepare_data(plan: SweepPlan) -> float:
    """Generate and prepare what the sweep trains on, as on a fresh clone; the seconds it took.
    The built-in set goes through `python -m pix3d.prepare --data synthetic` (generation
    included); the tiny set through `python -m pix3d.synthetic` then `pix3d.prepare`."""
    from pix3d.train import BUDGETS

    size = str(BUDGETS["quick"]["image_size"])
    plan.work.mkdir(parents=True, exist_ok=True)
    plan.cache.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    if plan.quick:
        seconds += _run(["-m", "pix3d.synthetic", "--out", plan.data, "--n", str(TINY["n"]), "--seed",
                         str(TINY["seed"]), "--size", str(TINY["size"])], plan.work, "pix3d.synthetic")[0]
    seconds += _run(["-m", "pix3d.prepare", "--data", plan.data, "--size", size, "--cache", str(plan.cache),
                     "--no-progress"], plan.work, "pix3d.prepare")[0]
    return seconds


def command_args(plan: SweepPlan) -> list[str]:
    """`-m search.run ...` for the plan: the quick budget, its own storage and MLflow store."""
    return ["-m", "search.run", "--grid", plan.grid, "--budget", "quick", "--data", plan.data,
            "--cache", str(plan.cache), "--storage", str(plan.storage),
            "--mlflow-uri", f"sqlite:///{plan.work / 'mlflow.db'}", "--cpus-per-trial", str(plan.cpus_per_trial)]


def run_command(plan: SweepPlan) -> tuple[float, str]:
    """The sweep command, timed from outside: (wall seconds, stdout)."""
    return _run(command_args(plan), plan.work, "search.run")


def trial_results(sweep_dir: Path) -> list[list[dict]]:
    """Every trial's reports, from Tune's result.json files."""
    trials = []
    for path in sorted(sweep_dir.glob("*/result.json")):
        trials.append([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    return [t for t in trials if t]


def sweep_seconds(stdout: str) -> float:
    """The sweep's own wall time, as search.run prints it (`sweep finished in 12.3s`)."""
    match = re.search(r"sweep finished in ([0-9.]+)s", stdout)
    if not match:
        raise Pix3DError("search.run did not print 'sweep finished in ...s'")
    return float(match[1])


def sweep_figures(plan: SweepPlan, command_s: float, stdout: str, data_s: float) -> dict:
    """The sweep's wall time and the whole command's against the trials' summed training time
    (Tune's `time_total_s`) over the concurrency."""
    trials = trial_results(plan.storage / plan.grid)
    trained = sum(t[-1]["time_total_s"] for t in trials)
    ideal = trained / plan.concurrency
    sweep = sweep_seconds(stdout)
    return {"grid": plan.grid, "trials": len(trials), "concurrency": plan.concurrency,
            "trials_time_total_s": trained, "ideal_s": ideal, "sweep_s": sweep, "sweep_ratio": sweep / ideal,
            "data_s": data_s, "command_s": command_s, "command_ratio": (data_s + command_s) / ideal,
            "command_without_data_ratio": command_s / ideal, "around_sweep_s": command_s - sweep,
            **actor_figures(trials)}


def actor_figures(trials: list[list[dict]]) -> dict:
    """How many actors (processes) ran the trials, and the seconds a trial spent before its first
    epoch (its first iteration less that epoch) in a fresh actor and in a reused one."""
    fresh, reused, seen = [], [], set()
    for reports in sorted(trials, key=lambda t: t[0].get("started_at") or 0.0):
        first = reports[0]
        (reused if first["pid"] in seen else fresh).append(first["time_this_iter_s"] - first["epoch_time_s"])
        seen.add(first["pid"])
    return {"actors": len(seen), "fresh_actor_trials": len(fresh), "before_first_epoch_fresh_s": _mean(fresh),
            "before_first_epoch_reused_s": _mean(reused)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def mlflow_replay(plan: SweepPlan) -> dict:
    """What logging the finished sweep to MLflow costs, replayed with the live callback's
    `SweepLogger` (analysis.sync) into a fresh store: the store's creation once, then the
    sweep's runs, metrics and artifacts (per trial)."""
    from mlflow.tracking import MlflowClient

    from analysis.sync import sync

    uri = f"sqlite:///{plan.work / 'replay.db'}"
    started = time.perf_counter()
    MlflowClient(tracking_uri=uri).search_experiments()   # creates the store's tables
    store_s = time.perf_counter() - started
    started = time.perf_counter()
    report = sync(plan.storage / plan.grid, uri, f"{plan.grid}-replay", progress=False)
    seconds = time.perf_counter() - started
    return {"store_setup_s": store_s, "seconds": seconds, "trials": report.trials,
            "per_trial_s": seconds / max(1, report.trials)}
