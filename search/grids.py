"""Named sweeps as data: each Grid declares only what differs from `TrainConfig`'s defaults.

A grid is either an exhaustive grid (models x modality subsets x learning rates x seeds x any
extra axes, expanded by Tune's own variant generator) or a model-based search (`optuna`:
TPE proposes `num_samples` configs, ASHA stops poor ones early). Following the tuning
playbook, model and modalities are the scientific hyperparameters; the learning rate is a
nuisance one, so `ablation` compares each model at its published rate and `lr` sweeps it.

`param_space(seeds, overrides)` is what `search.run` hands to `ray.tune.Tuner`;
`trials(...)` enumerates the very same space with Tune's generator (for --dry-run and the
sizes in --list), so what is printed is what runs.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Mapping

from ray import tune
from ray.tune.search.sample import Domain

from pix3d import models as model_registry
from pix3d.constants import ABLATION_SUBSETS, modalities_key
from pix3d.errors import UsageError

OPTUNA_METRIC = "val_azimuth_acc"
OPTUNA_MODE = "max"


def published_lr(config: Mapping[str, Any]) -> float:
    """Tune `sample_from` rule: each model at its published learning rate (its registration's).

    A module-level function (not a lambda) so the param space pickles by reference and a
    restored sweep resolves it the same way.
    """
    return model_registry.published_lr(config["model"])


CELL_KEY = "cell"  # a grid with extra cells: which cell a trial is (the trainable ignores it)


def cell_value(cells: tuple[tuple[tuple[str, Any], ...], ...], key: str, config: Mapping[str, Any]) -> Any:
    """Tune `sample_from` rule of a grid with extra cells: trial `config["cell"]`'s `key`
    (module-level and bound with functools.partial, so the space pickles and restores)."""
    return dict(cells[config[CELL_KEY]])[key]


@dataclass(frozen=True)
class Grid:
    """One named sweep. Empty `models` means every registered model (pix3d.models, read when
    the grid is expanded, so a model registered later is in it); empty `lrs` means each model
    at its published learning rate."""

    trainable: ClassVar[str] = "pose"  # which trainable search.run builds (trainables.pose)

    name: str
    description: str
    models: tuple[str, ...] = ()
    subsets: tuple[tuple[str, ...], ...] = ABLATION_SUBSETS
    lrs: tuple[float, ...] = ()
    axes: Mapping[str, tuple] = field(default_factory=dict)  # extra grid axes (TrainConfig fields)
    fixed: Mapping[str, Any] = field(default_factory=dict)  # constant overrides (win over the budget)
    default_seeds: int = 1
    # Model-based search instead of a grid: Tune domains per TrainConfig field.
    search_space: Mapping[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    max_concurrent: int = 2
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
    def is_search(self) -> bool:
        return bool(self.search_space)

    @property
    def model_names(self) -> tuple[str, ...]:
        """The models this grid trains: its own list, else every registered one."""
        return self.models or tuple(model_registry.list_models())

    def size(self, seeds: int | None = None) -> int:
        """Number of trials this grid launches with `seeds` seeds (its default when None)."""
        if self.is_search:
            return self.num_samples
        seeds = self.default_seeds if seeds is None else seeds
        n_lrs = len(self.lrs) or 1
        return len(self.cells()) * n_lrs * seeds

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
        if self.is_search:
            space.setdefault("seed", 0)
            space.setdefault("modalities", modalities_key(self.subsets[-1]))
            if len(self.model_names) == 1:
                space["model"] = self.model_names[0]
            space.update(self.search_space)
            return space
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

    def trials(self, seeds: int | None = None, budget: Mapping[str, Any] | None = None) -> list[dict]:
        """Every trial config of a grid, as Tune will generate them (empty for a search)."""
        if self.is_search or self.size(seeds) == 0:
            return []
        return expand(self.param_space(seeds, budget))

    def search_alg(self, metric: str = OPTUNA_METRIC, mode: str = OPTUNA_MODE, seed: int = 0, *,
                   storage=None, study_name: str | None = None, max_epochs: int | None = None):
        """TPE (Optuna) behind a concurrency limit, or None for a plain grid. `storage` (an
        Optuna RDB storage) and `study_name` keep the study on disk (search.study): a study
        that exists there is continued, its trials known to TPE. A trial ASHA stops before
        `max_epochs` is PRUNED in the study (search.pruning)."""
        if not self.is_search:
            return None
        from optuna.samplers import TPESampler
        from ray.tune.search import ConcurrencyLimiter

        from search.pruning import PruningOptunaSearch  # imports optuna: searches only

        searcher = PruningOptunaSearch(metric=metric, mode=mode, sampler=TPESampler(seed=seed),
                                       storage=storage, study_name=study_name, max_epochs=max_epochs)
        return ConcurrencyLimiter(searcher, max_concurrent=self.max_concurrent)

    @property
    def search_params(self) -> tuple[str, ...]:
        """The config keys the search proposes (empty for a grid)."""
        return tuple(self.search_space)

    def scheduler(self, max_epochs: int, metric: str = OPTUNA_METRIC, mode: str = OPTUNA_MODE):
        """ASHA for a search (one rung per epoch, up to the run's epochs), None for a grid."""
        if not self.is_search:
            return None
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            max_t=max(1, max_epochs),
            grace_period=1,
            reduction_factor=2,
        )


@dataclass(frozen=True)
class FusionGrid:
    """A grid of the relative-pose study (trainables.relpose):
    fusion x weights x frozen x loss x seeds, on one backbone.

    Weights and frozen are the ImageNet question (ImageNet features as they are, frozen, against
    fine-tuned, against the same network from scratch; scratch-frozen is the random-feature
    control), fusion asks early or late, the loss says what supervision it takes. The pair set
    and the training settings come from `relpose.train.BUDGETS` (resolved by search.run); `fixed`
    wins over them.
    """

    trainable: ClassVar[str] = "relpose"
    is_search: ClassVar[bool] = False
    num_samples: ClassVar[int] = 1
    subsets: ClassVar[tuple] = ()  # no pose modalities to check against the data

    name: str
    description: str
    fusions: tuple[str, ...] = ("early", "late")
    weights: tuple[str, ...] = ("imagenet", "scratch")
    losses: tuple[str, ...] = ("photometric", "pose")
    frozen: tuple[bool, ...] = (False, True)  # freeze_backbone: fine-tuned, features as they are
    backbone: str = "resnet18"  # relpose.models.BACKBONES
    lrs: tuple[float, ...] = ()  # empty: the budget's learning rate
    fixed: Mapping[str, Any] = field(default_factory=dict)
    default_seeds: int = 3

    def size(self, seeds: int | None = None) -> int:
        seeds = self.default_seeds if seeds is None else seeds
        return (len(self.fusions) * len(self.weights) * len(self.frozen) * len(self.losses)
                * (len(self.lrs) or 1) * seeds)

    def param_space(self, seeds: int | None = None, budget: Mapping[str, Any] | None = None) -> dict:
        seeds = self.default_seeds if seeds is None else seeds
        space: dict[str, Any] = dict(budget or {})
        space.update(self.fixed)
        space["fusion"] = tune.grid_search(list(self.fusions))
        space["weights"] = tune.grid_search(list(self.weights))
        space["freeze_backbone"] = tune.grid_search(list(self.frozen))
        space["backbone"] = self.backbone
        space["loss"] = tune.grid_search(list(self.losses))
        if self.lrs:
            space["lr"] = tune.grid_search(list(self.lrs))
        space["seed"] = tune.grid_search(list(range(seeds)))
        return space

    def trials(self, seeds: int | None = None, budget: Mapping[str, Any] | None = None) -> list[dict]:
        return expand(self.param_space(seeds, budget)) if self.size(seeds) else []

    def search_alg(self, *args, **kwargs):
        return None

    def scheduler(self, *args, **kwargs):
        return None


# The published notebook's final loop as it ran: every model at lr 1e-4 (set per
# grid), a StepLR created and never stepped, fp32 arithmetic (pinned: a budget's "auto" would
# pick bf16 on GPUs and AMX CPUs), batches of 10. Fixed keys win over the budget.
AS_RUN: dict[str, Any] = {"lr_schedule": "none", "precision": "fp32", "batch_size": 10}


def expand(space: Mapping[str, Any]) -> list[dict]:
    """All configs of a grid-search param space, generated by Tune's own variant generator."""
    from ray.tune.search.variant_generator import generate_variants

    return [dict(config) for _, config in generate_variants(dict(space))]


def varied_keys(space: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The config keys a param space varies: a `grid_search` axis, a sampled domain (a search's
    proposals) or a `sample_from` rule (each model's published lr), nested keys joined by '.'
    as the trial runs' params are. What tells two trials of a sweep apart (its parent MLflow
    run records it: analysis.run_fields.VARIES_TAG), so a new axis needs no edit in analysis."""
    keys: list[str] = []
    for key, value in space.items():
        name = f"{prefix}{key}"
        if name == CELL_KEY:
            continue  # an index into a grid's extra cells: the keys it sets are the axes
        if isinstance(value, Domain) or (isinstance(value, Mapping) and "grid_search" in value):
            keys.append(name)
        elif isinstance(value, Mapping):
            keys += varied_keys(value, f"{name}.")
    return keys


AnyGrid = Grid | FusionGrid  # what get_grid returns: both have size, param_space, trials, trainable

GRIDS: dict[str, AnyGrid] = {
    grid.name: grid
    for grid in (
        Grid(
            "ablation",
            "the published table: both models at their published lr x 4 modality subsets x seeds",
            default_seeds=3,
        ),
        Grid(
            "lr",
            "lr sweep 1e-5..3e-3 (log-spaced, both published rates) x both models, RGB and all four",
            subsets=(ABLATION_SUBSETS[0], ABLATION_SUBSETS[-1]),
            lrs=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3),
        ),
        Grid(
            "optuna",
            "TPE over lr, batch size, weight decay (model a choice, all four modalities), ASHA early stop",
            search_space={
                "model": tune.choice(model_registry.list_models()),
                "lr": tune.loguniform(1e-5, 1e-2),
                "batch_size": tune.choice([8, 10, 16, 32]),
                "weight_decay": tune.loguniform(1e-6, 1e-2),
            },
            num_samples=16,
            max_concurrent=2,
        ),
        Grid(
            "reproduce",
            "the published protocol (its split, Pose-from-Shape's crop, 224 px, 25 epochs, all training "
            "images) and the notebook's recipe as it ran (lr 1e-4, no schedule, fp32, batch 10), quirks "
            "on and off; separate_net RGB+Mask also with each quirk alone",
            lrs=(1e-4,),
            axes={"seed_quirks": (True, False)},
            fixed={**AS_RUN, "split": "published"},
            extra_cells=tuple({"model": "separate_net", "modalities": "rgb+mask", "seed_quirks": q}
                              for q in model_registry.QUIRKS),
            crop="published",
            budget="paper",
        ),
        Grid(
            "as_run",
            "the published notebook as it ran: quirks on, lr 1e-4 for both, no schedule, fp32, batch 10",
            lrs=(1e-4,),
            fixed={**AS_RUN, "seed_quirks": True},
        ),
        Grid(
            "split",
            "how much a random split flatters the table: the ablation on the published split "
            "and on by_model (no CAD model on both sides), side by side",
            axes={"split": ("published", "by_model")},
            default_seeds=3,
        ),
        Grid(
            "per_category",
            "the notebook's per-category training: each model trained and validated on one category "
            "at a time (every category of the data), RGB, at its published lr",
            subsets=(ABLATION_SUBSETS[0],),
            per_category=True,
        ),
        Grid(
            "smoke",
            "tiny end-to-end check: both models on RGB, 2 epochs on at most 24 training images",
            subsets=(ABLATION_SUBSETS[0],),
            lrs=(1e-3,),
            fixed={"epochs": 2, "max_train_images": 24, "batch_size": 8},
        ),
        FusionGrid(
            "fusion",
            "relative pose (ResNet-18): fusion {early, late} x weights {imagenet, scratch} x backbone "
            "{fine-tuned, frozen} x loss {photometric, pose}",
        ),
        FusionGrid(
            "fusion_cpu",
            "the corner of the fusion grid a shared CPU can measure (use --budget cpu): early fusion, "
            "scratch, fine-tuned, loss {photometric, pose} x 3 seeds",
            fusions=("early",),
            weights=("scratch",),
            frozen=(False,),
        ),
        FusionGrid(
            "fusion_alexnet",
            "the fusion grid on the seed study's AlexNet backbone (torchvision's alexnet file for imagenet)",
            backbone="alexnet",
        ),
        FusionGrid(
            "fusion_lr",
            "relative pose from scratch, pose loss: lr 1e-4..3e-3 x both fusions (the nuisance lr)",
            weights=("scratch",),
            losses=("pose",),
            frozen=(False,),
            lrs=(1e-4, 3e-4, 1e-3, 3e-3),
            default_seeds=1,
        ),
        FusionGrid(
            "fusion_smoke",
            "tiny end-to-end check of the fusion grid: 24 pairs at 32 px, 1 epoch, 1 seed",
            fixed={"pairs_n": 24, "pairs_size": 32, "epochs": 1, "batch_size": 8},
            frozen=(False,),
            default_seeds=1,
        ),
    )
}


def get_grid(name: str) -> AnyGrid:
    """The grid called `name`; unknown names raise, listing the known ones."""
    try:
        return GRIDS[name]
    except KeyError:
        raise UsageError(f"unknown grid {name!r}; choose from {', '.join(GRIDS)}") from None


def for_categories(grid: Grid, categories) -> Grid:
    """A per-category grid with its `category` axis over `categories` (others unchanged)."""
    if not getattr(grid, "per_category", False):
        return grid
    return replace(grid, axes={**grid.axes, "category": tuple(sorted(categories))})


def describe_grids(seeds: int | None = None) -> list[str]:
    """One line per grid: name, trial count, description (for --list)."""
    width = max(len(n) for n in GRIDS)
    lines = []
    for grid in GRIDS.values():
        n = grid.size(seeds)
        kind = "samples" if grid.is_search else "trials"
        per = " (x the data's categories)" if getattr(grid, "per_category", False) else ""
        lines.append(f"{grid.name:<{width}}  {n:>4} {kind:<7}  {grid.description}{per}")
    return lines
