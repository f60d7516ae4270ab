"""What a sweep will run, decided before anything starts: the param space, GPU packing.

Owns the Tune param space handed to the Tuner (the grid's, with the budget its kind resolved,
--epochs and the resources), the line that says which budget settings the grid replaces, and
the GPU plan: every GPU node probed for CUDA, and trials refused that cannot share a GPU's
memory (search.devices). The budget itself, the cost and the dry run are the kind's
(search.kinds).
"""

from __future__ import annotations

import argparse
from typing import Callable

from ray.tune.search.sample import Domain

from search.devices import estimate_trials, gpu_memory_to_plan, plan_gpu_packing, probe_gpu_nodes
from search.kinds import SweepKind
from search.options import SweepSettings
from search.space import describe_domain


def build_param_space(grid: SweepKind, settings: SweepSettings, budget_overrides: dict, args: argparse.Namespace) -> dict:
    """The grid's space plus resources (the trainable sets threads from them) and --epochs."""
    space = grid.param_space(settings.seeds, budget_overrides)
    if settings.epochs is not None:
        space["epochs"] = settings.epochs
    space["cpus_per_trial"] = args.cpus_per_trial
    space["gpus_per_trial"] = args.gpus_per_trial
    if getattr(args, "device", "auto") != "auto":
        space["device"] = args.device  # "cpu" with GPUs: the trials simulate them (and record it)
    return space


def budget_line(grid: SweepKind, budget_overrides: dict, space: dict) -> str | None:
    """When the grid's fixed settings (or --epochs) replace some of the budget's: what its trials
    run, so the budget line printed before is not read as theirs; else None."""
    changed = {k: space[k] for k, v in budget_overrides.items() if k in space and space[k] != v}
    if not changed:
        return None
    settled = ", ".join(f"{k}={describe_domain(space[k]) if isinstance(space[k], Domain) else space[k]}"
                        for k in budget_overrides if k in space)
    return (f"grid {grid.name} trials run {settled} (the grid's fixed settings or --epochs replace the "
            f"budget's {', '.join(sorted(changed))})")


def probe_gpus(args: argparse.Namespace, log: Callable = print) -> list[dict]:
    """Every GPU node must see CUDA before any trial starts (not with --device cpu: simulated)."""
    return probe_gpu_nodes(args.gpus_per_trial, log=log) if args.device != "cpu" else []


def plan_gpus(args: argparse.Namespace, grid: SweepKind, space: dict, data, probes: list[dict] | None,
              log: Callable = print) -> bool:
    """Refuse trials that cannot share a GPU's memory (search.devices); False, saying nothing,
    when `probes` is None and the GPU size is not given (the probes may tell it later)."""
    memory, source = gpu_memory_to_plan(args.gpu_memory_gib, probes or ())
    if memory is None and probes is None:
        return False
    if not grid.memory_modelled:  # the estimate models pix3d.train.fit only
        log(f"GPU memory plan: not estimated for {grid.kind} trials")
        return True
    configs = grid.known_trials(space) or [space]
    log(plan_gpu_packing(estimate_trials(configs, len(data)), args.gpus_per_trial, memory, source))
    return True
