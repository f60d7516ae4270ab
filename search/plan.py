"""What a sweep will run, decided before anything starts: budget, trials, GPU packing.

Owns the budget (`auto` follows the trials' GPUs; the CPU budgets' default seeds), the Tune
param space handed to the Tuner, the dry run's listing of it, and the GPU plan: every GPU node
probed for CUDA, and trials refused that cannot share a GPU's memory (search.devices).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import Any, Callable, Sequence

from ray.tune.search.sample import Domain

from search import fusion
from search.grids import Grid, expand
from pix3d.errors import Pix3DError
from search.options import SweepSettings

# Seeds per configuration under the CPU budgets (`quick`, `cpu`) when --seeds is not given: two
# is the fewest that gives a spread (mean +- std) and keeps the CPU ablation within its budget.
QUICK_SEEDS = 2
CPU_BUDGETS = ("quick", "cpu")


def resolve_run_budget(budget: str, gpus_per_trial: float, log: Callable = print,
                       device: str = "auto") -> tuple[str, dict]:
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


def plan_budget(grid: Grid, settings: SweepSettings, args: argparse.Namespace,
                log: Callable = print) -> tuple[SweepSettings, dict]:
    """(settings, budget overrides): the grid's budget, and the CPU budgets' seeds when
    --seeds was not given."""
    if grid.trainable == "relpose":
        budget_name, overrides = fusion.resolve_budget(settings.budget, args.gpus_per_trial, log=log)
    elif settings.budget == "auto" and getattr(grid, "budget", None):
        budget_name, overrides = resolve_run_budget(grid.budget, args.gpus_per_trial, log=lambda _: None)
        log(f"budget auto -> {grid.budget}: grid {grid.name} runs at its own budget "
            f"({', '.join(f'{k}={v}' for k, v in overrides.items())}); --budget NAME to run another")
    else:
        budget_name, overrides = resolve_run_budget(settings.budget, args.gpus_per_trial, log=log, device=args.device)
    # The relative-pose grids keep their seeds: their table reports held-out numbers with a
    # spread over at least three (issue 28), whatever the budget.
    if (settings.seeds is None and budget_name in CPU_BUDGETS and not grid.is_search
            and grid.trainable != "relpose" and grid.default_seeds > QUICK_SEEDS):
        settings = replace(settings, seeds=QUICK_SEEDS)
        log(f"{budget_name} budget: {QUICK_SEEDS} seeds per configuration (grid {grid.name} has "
            f"{grid.default_seeds} by default; --seeds N to choose)")
    return settings, overrides


# The published training split of Pix3D (pix3d/data/published_split.json): what a step is multiplied by.
PUBLISHED_TRAIN_IMAGES = 9064
MEASURED_BATCH = 2


def cpu_cost(grid: Grid, settings: SweepSettings, space: dict, args: argparse.Namespace,
             log: Callable = print) -> None:
    """A grid with its own budget (reproduce: the published one) on the CPU: measure one
    training step per model and say what the sweep costs, first. Without an explicit
    --budget a real run then stops (one line): it runs smaller only when asked."""
    on_cpu = args.gpus_per_trial == 0 or args.device == "cpu"
    if not (getattr(grid, "budget", None) and on_cpu and grid.trainable == "pose" and not grid.is_search):
        return
    if settings.budget not in ("auto", grid.budget):
        log(f"budget {settings.budget} (asked for): smaller than grid {grid.name}'s {grid.budget} budget; "
            "the table labels its runs")
        return
    from pix3d.constants import ABLATION_SUBSETS, modalities_key
    from pix3d.train import TrainConfig
    from pix3d.train.loop import measure_train_step

    trials = expand(space)
    largest = modalities_key(ABLATION_SUBSETS[-1])
    steps = math.ceil(PUBLISHED_TRAIN_IMAGES / int(trials[0]["batch_size"])) * int(trials[0]["epochs"])
    seconds, parts = 0.0, []
    for model in dict.fromkeys(t["model"] for t in trials):
        config = TrainConfig.from_dict({k: v for k, v in trials[0].items() if k in TrainConfig.__dataclass_fields__}
                                       | {"model": model, "modalities": largest, "seed_quirks": False,
                                          "device": "cpu", "threads": max(1, int(args.cpus_per_trial))})
        # Measured on 2 images and scaled: a step's cost is linear in the batch at these sizes,
        # and a dry run on a loaded CPU should not take minutes.
        step = measure_train_step(config.replace(batch_size=MEASURED_BATCH)) * config.batch_size / MEASURED_BATCH
        n = sum(t["model"] == model for t in trials)
        seconds += n * steps * step
        parts.append(f"{step:.1f} s ({model}, {n} trials: ~{steps * step / 3600:.0f} h each)")
    log(f"cost on this CPU: one training step of {trials[0]['batch_size']} images at {trials[0]['image_size']} px "
        f"with all four modalities (measured on {MEASURED_BATCH}, scaled): {', '.join(parts)}; {trials[0]['epochs']} epochs x "
        f"{steps // int(trials[0]['epochs'])} steps over Pix3D's {PUBLISHED_TRAIN_IMAGES} training images -> "
        f"~{seconds / 86400:.1f} days for the {len(trials)} trials one at a time (an upper bound: "
        "fewer modalities cost less)")
    if settings.budget == "auto" and not args.dry_run:
        raise Pix3DError(f"grid {grid.name} at the published budget would take ~{seconds / 86400:.1f} days on this CPU "
                         f"(measured above): pass --budget {grid.budget} to run it anyway, or --budget cpu|quick "
                         "to run it smaller (the table labels those runs)")


def build_param_space(grid: Grid, settings: SweepSettings, budget_overrides: dict, args: argparse.Namespace) -> dict:
    """The grid's space plus resources (the trainable sets threads from them) and --epochs."""
    space = grid.param_space(settings.seeds, budget_overrides)
    if settings.epochs is not None:
        space["epochs"] = settings.epochs
    space["cpus_per_trial"] = args.cpus_per_trial
    space["gpus_per_trial"] = args.gpus_per_trial
    if getattr(args, "device", "auto") != "auto":
        space["device"] = args.device  # "cpu" with GPUs: the trials simulate them (and record it)
    return space


def budget_line(grid: Grid, budget_overrides: dict, space: dict) -> str | None:
    """When the grid's fixed settings (or --epochs) replace some of the budget's: what its trials
    run, so the budget line printed before is not read as theirs; else None."""
    changed = {k: space[k] for k, v in budget_overrides.items() if k in space and space[k] != v}
    if not changed:
        return None
    settled = ", ".join(f"{k}={_describe_domain(space[k]) if isinstance(space[k], Domain) else space[k]}"
                        for k in budget_overrides if k in space)
    return (f"grid {grid.name} trials run {settled} (the grid's fixed settings or --epochs replace the "
            f"budget's {', '.join(sorted(changed))})")


def describe_trial(config: dict, keys: Sequence[str]) -> str:
    """`key=value` of `keys` that the trial's config has, on one line."""
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


def print_dry_run(grid: Grid, space: dict, out: Callable = print) -> None:
    """What would run: the constant settings once, then one line per trial (what varies)."""
    if grid.is_search:
        out(f"grid {grid.name}: {grid.num_samples} samples proposed by TPE (Optuna), "
            f"ASHA early stopping, at most {grid.max_concurrent} at once")
        for key, value in space.items():
            out(f"  {key}: {_describe_domain(value)}")
        return
    trials = expand(space)
    # `cell` only indexes a grid's extra cells: their keys are printed instead.
    varying = [k for k in trials[0] if len({repr(t.get(k)) for t in trials}) > 1 and k != "cell"]
    fixed = {k: v for k, v in trials[0].items() if k not in varying and k != "cell"}
    out(f"grid {grid.name}: {len(trials)} trials; fixed: " + " ".join(f"{k}={v}" for k, v in fixed.items()))
    for i, config in enumerate(trials):
        out(f"  {i:3d}  {describe_trial(config, varying)}")


def probe_gpus(args: argparse.Namespace, log: Callable = print) -> list[dict]:
    """Every GPU node must see CUDA before any trial starts (not with --device cpu: simulated)."""
    from search.devices import probe_gpu_nodes

    return probe_gpu_nodes(args.gpus_per_trial, log=log) if args.device != "cpu" else []


def plan_gpus(args: argparse.Namespace, grid: Grid, space: dict, data, probes: list[dict] | None,
              log: Callable = print) -> bool:
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
