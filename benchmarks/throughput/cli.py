"""`python -m benchmarks.throughput [--quick]`: measure the six parts in one run, print the table,
write the JSON file.

    python -m benchmarks.throughput                      # full: 64 and 224 px, the quick ablation (minutes)
    python -m benchmarks.throughput --quick              # tiny sizes, the smoke grid (the test runs this)
    python -m benchmarks.throughput --data-cache ~/.cache/pix3d-pose   # reuse prepared data: no generation

Order: the machine and its ceiling, the bare steps, the data (generated and prepared as on a
fresh clone, timed), the data path, the bare fit and the same fit in one Tune trial (with the
sweep's MLflow callback), two concurrent trials' memory, then the sweep command in a child
process with its own Ray (ours is shut down first) and its MLflow logging replayed.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from benchmarks.throughput import compute, report, sweep, trials
from pix3d.cli import ArgumentParser, positive_float, positive_int
from pix3d.fileio import ensure_writable_dir, write_json

ALL_FOUR = ("rgb", "mask", "boundaries", "normals")
MODELS = ("combined_net", "separate_net")


@dataclass(frozen=True)
class Sizes:
    """How big each part is: full (the issue's figures) or --quick (tiny, for the test)."""

    step_sizes: tuple[int, ...]
    batch_size: int
    seconds: float
    matmul_n: int
    grid: str
    trial_overrides: dict = field(default_factory=dict)   # on top of the quick budget


FULL = Sizes(step_sizes=(64, 224), batch_size=10, seconds=3.0, matmul_n=1024, grid="ablation")
QUICK = Sizes(step_sizes=(64,), batch_size=4, seconds=0.2, matmul_n=256, grid="smoke",
              trial_overrides={"epochs": 2, "max_train_images": 16, "batch_size": 8})
TUNE_MODEL = "separate_net"   # the shorter trial: fixed costs weigh more, the ratio is the harder one


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and the smoke grid (about a minute or two)")
    p.add_argument("--out", type=Path, default=Path("throughput.json"), help="JSON file of the results")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads of the steps (a trial's: 1 per CPU)")
    p.add_argument("--seconds", type=positive_float, default=None, help="timed seconds per step measurement")
    p.add_argument("--work", type=Path, default=None, help="folder for data, sweeps and stores (default: a temp folder)")
    p.add_argument("--data-cache", type=Path, default=None,
                   help="cache root whose data is already generated and prepared: the data step is skipped")
    p.add_argument("--no-sweep", action="store_true", help="skip part 6 (the sweep command)")
    return p


def measure_compute(results: dict, sizes: Sizes, threads: int, seconds: float, log: Callable) -> None:
    """Parts 1 and 2: the matmul ceiling (the step's threads and all cores) and the bare steps."""
    import os

    log("1. ceiling ...")
    counts = sorted({threads, os.cpu_count() or 1})
    results["ceiling"] = compute.ceiling(counts, n=sizes.matmul_n, seconds=seconds)
    log("2. bare steps ...")
    results["steps"] = compute.bare_steps(MODELS, sizes.step_sizes, ("fp32", "auto"), modalities=ALL_FOUR,
                                          batch_size=sizes.batch_size, threads=threads, seconds=seconds,
                                          ceilings=results["ceiling"])


def measure_data_path(results: dict, data, sizes: Sizes, threads: int, seconds: float) -> None:
    """Part 4 per step size: the prepared cache at its size, a random one of the same layout at others."""
    rows = []
    for size in sizes.step_sizes:
        real = size == data.image_size
        images = data.images if real else compute.random_cache(min(len(data), 256), data.images.shape[1], size)
        rate = compute.data_path(images, ALL_FOUR, batch_size=sizes.batch_size, seconds=seconds, threads=threads)
        steps = {s["model"]: s["images_per_s"] for s in results["steps"] if s["image_size"] == size and s["ran"] == "fp32"}
        rows.append({"image_size": size, "source": "prepared cache" if real else "random uint8 cache",
                     "images_per_s": rate, "multiple_of_step": {m: rate / v for m, v in steps.items()}})
    results["data_path"] = rows
    results["data_path_min_multiple"] = min(x for r in rows for x in r["multiple_of_step"].values())


def measure_trials(results: dict, data, sizes: Sizes, work: Path, log: Callable) -> None:
    """Parts 3 and 5 and the per-trial fixed costs, on a local Ray started as search.run starts it."""
    import ray

    from analysis.tracking import MLflowTrackingCallback
    from pix3d.train import BUDGETS
    from search.cluster import init_ray

    config = trials.trial_config(TUNE_MODEL, "+".join(ALL_FOUR), BUDGETS["quick"], **sizes.trial_overrides)
    results["tune_config"] = f"{TUNE_MODEL}, all four modalities, quick budget {sizes.trial_overrides or ''}".strip()
    log("3. bare fit ...")
    bare = trials.bare_fit(config, data)
    started = time.perf_counter()
    init_ray(None, log=log)
    ray_start = time.perf_counter() - started
    try:
        storage = str(work / "tune")
        tracking = MLflowTrackingCallback(f"sqlite:///{work / 'tune.db'}", "throughput", sweep_name="one",
                                          grid="smoke", command="benchmarks.throughput",
                                          data_manifest=data.manifest, storage_path=storage)
        log("3. the trial in Tune, in a fresh actor then in the same actor reused ...")
        fresh, reused, sweep_start = trials.fresh_and_reused(config, data, storage=storage, callbacks=[tracking])
        results["tune"] = {**trials.tune_ratio(bare, reused), "fresh_actor": trials.tune_ratio(bare, fresh)}
        results["fixed_costs"] = {"ray_start_s": ray_start, **trials.fixed_costs(bare, fresh, reused, sweep_start),
                                  "mlflow_live_s": getattr(tracking, "logging_s", None)}
        log("5. two concurrent trials' memory ...")
        results["memory"] = trials.two_trial_memory({**config, "epochs": 1}, data, storage=storage,
                                                    probe_dir=work / "memory")
    finally:
        ray.shutdown()


def measure_sweep(results: dict, plan: sweep.SweepPlan, data_s: float, log: Callable) -> None:
    """Part 6: the sweep command (own Ray), its figures, and its MLflow logging replayed."""
    log(f"6. sweep: python {' '.join(sweep.command_args(plan))} ...")
    command_s, stdout = sweep.run_command(plan)
    results["sweep"] = sweep.sweep_figures(plan, command_s, stdout, data_s)
    replay = sweep.mlflow_replay(plan)
    results["sweep"]["mlflow_replay"] = replay
    results.setdefault("fixed_costs", {})["mlflow_per_trial_s"] = replay["per_trial_s"]


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    sizes = QUICK if args.quick else FULL
    seconds = args.seconds or sizes.seconds
    work = ensure_writable_dir(args.work or Path(tempfile.mkdtemp(prefix="pix3d-throughput-")), "--work")

    def log(line: str) -> None:
        print(line, flush=True)

    results: dict = {"mode": "quick" if args.quick else "full", "machine": compute.machine_info(),
                     "threads": args.threads, "work": str(work)}
    measure_compute(results, sizes, args.threads, seconds, log)
    plan = sweep.SweepPlan(sizes.grid, work, (args.data_cache or work / "cache").resolve(), args.quick)
    log("data: generated and prepared as on a fresh clone ..." if args.data_cache is None else "data: reused")
    data_s = 0.0 if args.data_cache is not None else sweep.prepare_data(plan)
    from pix3d.data.prepare import prepare
    from pix3d.train import BUDGETS

    data = prepare(plan.data, BUDGETS["quick"]["image_size"], cache_dir=plan.cache, progress=False, log=lambda _: None)
    log("4. data path ...")
    measure_data_path(results, data, sizes, args.threads, seconds)
    measure_trials(results, data, sizes, work, log)
    if not args.no_sweep:
        measure_sweep(results, plan, data_s, log)
    results["verdicts"] = report.verdicts(results)
    results["load_average_at_end"] = compute.load_average()
    write_json(args.out, results)
    print("\n".join(report.table_lines(results)))
    print(f"results -> {args.out}")
    return 0
