"""The pose grid: an exhaustive grid of pose-classifier trainings on a prepared Pix3D cache.

`Grid` declares only what differs from `TrainConfig`'s defaults: models x modality subsets x
learning rates x seeds x any extra axes (expanded by Tune's own variant generator), extra
cells beside the product, fixed settings, a crop and a budget of its own. As a kind of sweep
it owns the pose budgets (`auto` follows the trials' GPUs; the CPU budgets' default seeds;
the published budget's measured cost on a CPU), the checks against the data (the published
split's membership, the modalities the data can give), the prepared cache, trainables.pose,
and the per-trial summary. Its table is the azimuth table (analysis.table VIEWS["grid"]).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from ray import tune

from pix3d import models as model_registry
from pix3d.constants import ABLATION_SUBSETS, modalities_key, parse_modalities
from pix3d.errors import Pix3DError
from search.kinds import SweepKind
from search.summary import lr_text, number_text, summary_lines
from search.space import CELL_KEY, cell_value, expand, print_trials, published_lr

# Seeds per configuration under the CPU budgets (`quick`, `cpu`) when --seeds is not given: two
# is the fewest that gives a spread (mean +- std) and keeps the CPU ablation within its budget.
QUICK_SEEDS = 2
CPU_BUDGETS = ("quick", "cpu")
# The published training split of Pix3D (pix3d/data/published_split.json): what a step is multiplied by.
PUBLISHED_TRAIN_IMAGES = 9064
MEASURED_BATCH = 2


@dataclass(frozen=True)
class Grid(SweepKind):
    """One named sweep. Empty `models` means every registered model (pix3d.models, read when
    the grid is expanded, so a model registered later is in it); empty `lrs` means each model
    at its published learning rate."""

    kind: ClassVar[str] = "grid"
    memory_modelled: ClassVar[bool] = True

    name: str
    description: str
    models: tuple[str, ...] = ()
    subsets: tuple[tuple[str, ...], ...] = ABLATION_SUBSETS
    lrs: tuple[float, ...] = ()
    axes: Mapping[str, tuple] = field(default_factory=dict)  # extra grid axes (TrainConfig fields)
    fixed: Mapping[str, Any] = field(default_factory=dict)  # constant overrides (win over the budget)
    default_seeds: int = 1
    # Trials beside the product (each a model, a modalities key and values of the axes):
    # e.g. one model and subset with each quirk alone, without multiplying every cell.
    extra_cells: tuple[Mapping[str, Any], ...] = ()
    # How the cache is cropped (pix3d.data.images.CROPS) unless --crop says otherwise; None: margin.
    crop: str | None = None
    # The budget `--budget auto` means for this grid (None: auto's own choice by device).
    budget: str | None = None
    # One more axis, `category`, over the data's categories (search.run fills it from the data).
    per_category: bool = False

    @property
    def model_names(self) -> tuple[str, ...]:
        """The models this grid trains: its own list, else every registered one."""
        return self.models or tuple(model_registry.list_models())

    # ---- the trials
    def size(self, seeds: int | None = None) -> int:
        """Number of trials this grid launches with `seeds` seeds (its default when None)."""
        seeds = self.default_seeds if seeds is None else seeds
        return len(self.cells()) * (len(self.lrs) or 1) * seeds

    def cells(self) -> list[dict[str, Any]]:
        """Model x subset x axes values, then the extra cells: what each (lr, seed) trains."""
        product = [{"model": m, "modalities": modalities_key(s), **dict(zip(self.axes, values))}
                   for m in self.model_names for s in self.subsets
                   for values in itertools.product(*self.axes.values())]
        return product + [dict(c) for c in self.extra_cells]

    def param_space(self, seeds: int | None = None, budget: Mapping[str, Any] | None = None) -> dict:
        """The Tune param space: budget overrides, then this grid's fixed keys and axes."""
        seeds = self.default_seeds if seeds is None else seeds
        space: dict[str, Any] = dict(budget or {})
        space.update(self.fixed)
        if self.extra_cells:
            # Not a product: one grid axis over the cells, each key read from its cell.
            cells = tuple(tuple(sorted(c.items())) for c in self.cells())
            space[CELL_KEY] = tune.grid_search(list(range(len(cells))))
            for key in dict.fromkeys(k for c in self.cells() for k in c):
                space[key] = tune.sample_from(functools.partial(cell_value, cells, key))
        else:
            space["model"] = tune.grid_search(list(self.model_names))
            space["modalities"] = tune.grid_search([modalities_key(s) for s in self.subsets])
        space["lr"] = tune.grid_search(list(self.lrs)) if self.lrs else tune.sample_from(published_lr)
        space["seed"] = tune.grid_search(list(range(seeds)))
        if not self.extra_cells:
            for key, values in self.axes.items():
                space[key] = tune.grid_search(list(values))
        return space

    def for_data(self, data: str) -> "Grid":
        """A per-category grid over the categories of `data` (nothing built); else this grid."""
        return self.for_categories(data_categories(data)) if self.per_category else self

    def for_categories(self, categories) -> "Grid":
        """A per-category grid with its `category` axis over `categories` (others unchanged)."""
        if not self.per_category:
            return self
        return replace(self, axes={**self.axes, "category": tuple(sorted(categories))})

    # ---- the plan
    def plan_budget(self, settings, args: argparse.Namespace, log: Callable = print):
        """(settings, budget overrides): the grid's budget, and the CPU budgets' seeds when
        --seeds was not given."""
        if settings.budget == "auto" and self.budget:
            budget_name, overrides = resolve_run_budget(self.budget, args.gpus_per_trial, log=lambda _: None)
            log(f"budget auto -> {self.budget}: grid {self.name} runs at its own budget "
                f"({', '.join(f'{k}={v}' for k, v in overrides.items())}); --budget NAME to run another")
        else:
            budget_name, overrides = resolve_run_budget(settings.budget, args.gpus_per_trial, log=log,
                                                        device=args.device)
        if settings.seeds is None and budget_name in CPU_BUDGETS and self.default_seeds > QUICK_SEEDS:
            settings = replace(settings, seeds=QUICK_SEEDS)
            log(f"{budget_name} budget: {QUICK_SEEDS} seeds per configuration (grid {self.name} has "
                f"{self.default_seeds} by default; --seeds N to choose)")
        return settings, overrides

    def check_cost(self, settings, space: dict, args: argparse.Namespace, log: Callable = print) -> None:
        """A grid with its own budget (reproduce: the published one) on the CPU: measure one
        training step per model and say what the sweep costs, first. Without an explicit
        --budget a real run then stops (one line): it runs smaller only when asked."""
        on_cpu = args.gpus_per_trial == 0 or args.device == "cpu"
        if not (self.budget and on_cpu):
            return
        if settings.budget not in ("auto", self.budget):
            log(f"budget {settings.budget} (asked for): smaller than grid {self.name}'s {self.budget} budget; "
                "the table labels its runs")
            return
        from pix3d.train import TrainConfig  # torch: only when a cost is measured
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
            f"with all four modalities (measured on {MEASURED_BATCH}, scaled): {', '.join(parts)}; {trials[0]['epochs']} "
            f"epochs x {steps // int(trials[0]['epochs'])} steps over Pix3D's {PUBLISHED_TRAIN_IMAGES} training images -> "
            f"~{seconds / 86400:.1f} days for the {len(trials)} trials one at a time (an upper bound: "
            "fewer modalities cost less)")
        if settings.budget == "auto" and not args.dry_run:
            raise Pix3DError(f"grid {self.name} at the published budget would take ~{seconds / 86400:.1f} days on this "
                             f"CPU (measured above): pass --budget {self.budget} to run it anyway, or --budget cpu|quick "
                             "to run it smaller (the table labels those runs)")

    def check_before_start(self, settings, space: dict, args: argparse.Namespace) -> dict:
        """Say which membership `--split published` trials get (and the crop), from the json only;
        a folder the notebook's membership disagrees with is one error line, nothing written."""
        from pix3d.data.prepare import published_split_plan

        splits = {t.get("split", "published") for t in self.known_trials(space) or [space]}
        print(f"crop: {self.crop_for(settings)}")
        if "published" in splits:
            print(published_split_plan(settings.data).message)
        return space

    def print_dry_run(self, settings, space: dict, out: Callable = print) -> None:
        """Where each modality would come from, then the constant settings once and one line per
        trial (what varies)."""
        self._dry_run_data(settings)
        print_trials(self.name, space, out)

    def _dry_run_data(self, settings) -> None:
        """--dry-run on a dataset folder: where each modality would come from (nothing is built),
        and the same refusal as a real run when the grid needs a modality the data cannot give."""
        from pix3d.data.maps import UNAVAILABLE
        from pix3d.data.prepare import plan_sources

        if str(settings.data) == "synthetic":
            return
        n, sources = plan_sources(settings.data, settings.sources)
        print(f"data {settings.data}: {n} entries; " + "; ".join(
            f"{m} {s}" if s == UNAVAILABLE else f"{m} from {s}" for m, s in sources.items()))
        self._check_modalities({m: s != UNAVAILABLE for m, s in sources.items()}, str(settings.data))

    def _check_modalities(self, available: dict[str, bool], dataset: str) -> None:
        """A grid over normals on data without normals would fail in every such trial: say so now."""
        wanted = {m for subset in self.subsets for m in parse_modalities(subset)}
        missing = sorted(m for m in wanted if not available.get(m, False))
        if missing:
            raise Pix3DError(
                f"grid {self.name} uses {', '.join(missing)}, which the data ({dataset}) does not provide; "
                "add those folders beside img/, choose a source (--normals predict|oracle, --boundaries "
                "canny|predict|oracle), or use a grid without them"
            )

    def crop_for(self, settings) -> str:
        """The cache's crop: --crop, else the grid's (reproduce: the published one), else margin."""
        return settings.crop or self.crop or "margin"

    # ---- the data and the trainable
    def prepare_data(self, settings, space: dict):
        """The prepared cache at the budget's image size (generated/built on first use), checked
        against the grid's modalities."""
        from pix3d.data.prepare import prepare  # torch and the decoders: only when data is built

        cache = Path(settings.cache) if settings.cache else None
        data = prepare(settings.data, int(space.get("image_size", 224)), cache_dir=cache, sources=settings.sources,
                       crop=self.crop_for(settings))
        self._check_modalities(data.available, data.manifest.get("dataset", "?"))
        return data

    def train_function(self) -> Callable:
        from trainables.pose import train_pose  # torch: loaded by the trial's actor

        return train_pose

    # ---- the end
    def summarize(self, results) -> tuple[list[str], dict[str, int]]:
        """One line per trial (model, modalities, lr, seed, final/best azimuth acc) and status counts."""
        return pose_summary(results, search=self.early_stops)


def resolve_run_budget(budget: str, gpus_per_trial: float, log: Callable = print,
                       device: str = "auto") -> tuple[str, dict]:
    """Budget overrides for the trials. `auto` follows the trials' GPUs, not the driver's.

    On a cluster the driver often has no GPU while the workers do, so with --gpus-per-trial
    > 0 `auto` means `paper` even when this machine has none; with --device cpu (GPUs
    simulated on the CPU) it means `quick`.
    """
    from pix3d.train import resolve_budget  # torch

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


def data_categories(data: str) -> list[str]:
    """The categories of a dataset folder's json (or of the built-in set), nothing built."""
    if str(data) == "synthetic":
        from pix3d.render.shapes import CATEGORIES

        return sorted(CATEGORIES)
    from pix3d.data.annotations import read_entries

    _, _, raw = read_entries(Path(data))
    return sorted({e["category"] for e in raw if isinstance(e, dict) and isinstance(e.get("category"), str)})


def pose_summary(results, *, search: bool = False) -> tuple[list[str], dict[str, int]]:
    """One line per trial (model, modalities, lr, seed, final/best azimuth acc) and status counts
    (`search`: a model-based search, whose early stops are ASHA's)."""
    from pix3d.devices import device_label

    header = (f"{'model':<13} {'modalities':<28} {'lr':>8} {'seed':>4} {'epochs':>6} "
              f"{'final az':>8} {'best az':>8}  {'device':<22} status")

    def row(config: dict, metrics: dict) -> tuple:
        final = metrics.get("val_azimuth_acc")
        return (str(config.get("model", "-")), str(config.get("modalities", "-")), config.get("lr"),
                config.get("seed", "-"), metrics.get("epoch"), final,
                metrics.get("best_val_azimuth_acc", final), device_label(metrics))

    def line(model, modalities, lr, seed, epoch, final, best, device, status) -> str:
        final, best = (number_text(v, "7.2f", 100, "%") for v in (final, best))
        return (f"{model:<13} {modalities:<28} {lr_text(lr):>8} {str(seed):>4} {str(epoch or '-'):>6} "
                f"{final:>8} {best:>8}  {device:<22} {status}")

    return summary_lines(results, header, row, line, sort_by=4, search=search)
