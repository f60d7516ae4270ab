"""The catalogue of named sweeps: each an instance of its kind (search.kinds), declaring only
what differs from the trainings' defaults.

Kinds: `Grid` (an exhaustive pose grid: models x modality subsets x learning rates x seeds x
any extra axes, expanded by Tune's own variant generator), `SearchGrid` (a model-based search:
TPE proposes `num_samples` configs, ASHA stops poor ones early) and `FusionGrid` (the
relative-pose study). Following the tuning playbook, model and modalities are the scientific
hyperparameters; the learning rate is a nuisance one, so `ablation` compares each model at
its published rate and `lr` sweeps it.

`grid.param_space(seeds, overrides)` is what `search.run` hands to `ray.tune.Tuner`;
`grid.trials(...)` enumerates the very same space with Tune's generator (for --dry-run and the
sizes in --list), so what is printed is what runs. A new grid is one entry in `GRIDS`; a new
kind of sweep is a module in search/kinds/ plus its entries here.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from pix3d import models as model_registry
from pix3d.constants import ABLATION_SUBSETS
from pix3d.errors import UsageError
from search.kinds import SweepKind
from search.kinds.fusion import FusionGrid
from search.kinds.model_search import OPTUNA_METRIC, OPTUNA_MODE, SearchGrid
from search.kinds.pose_grid import Grid
# Named here for sweeps saved before search.space existed: their pickled param spaces refer
# to search.grids.published_lr / cell_value (analysis.pickle_check allows both places).
from search.space import CELL_KEY, cell_value, expand, published_lr, varied_keys  # noqa: F401

__all__ = ["AS_RUN", "CELL_KEY", "GRIDS", "FusionGrid", "Grid", "OPTUNA_METRIC", "OPTUNA_MODE", "SearchGrid",
           "SweepKind", "cell_value", "describe_grids", "expand", "get_grid", "published_lr",
           "varied_keys"]

# The published notebook's final loop as it ran: every model at lr 1e-4 (set per
# grid), a StepLR created and never stepped, fp32 arithmetic (pinned: a budget's "auto" would
# pick bf16 on GPUs and AMX CPUs), batches of 10. Fixed keys win over the budget.
AS_RUN: dict[str, Any] = {"lr_schedule": "none", "precision": "fp32", "batch_size": 10}


GRIDS: dict[str, SweepKind] = {
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
        SearchGrid(
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
            "the corner of the fusion grid a CPU can measure (--budget quick: ~10 min per early-fusion "
            "trial on a core, late twice that): scratch, fine-tuned, fusion x loss {photometric, pose} x 3 seeds",
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


def get_grid(name: str) -> SweepKind:
    """The grid called `name`; unknown names raise, listing the known ones."""
    try:
        return GRIDS[name]
    except KeyError:
        raise UsageError(f"unknown grid {name!r}; choose from {', '.join(GRIDS)}") from None



def describe_grids(seeds: int | None = None) -> list[str]:
    """One line per grid: name, trial count, description (for --list)."""
    width = max(len(n) for n in GRIDS)
    lines = []
    for grid in GRIDS.values():
        n = grid.size(seeds)
        per = " (x the data's categories)" if getattr(grid, "per_category", False) else ""
        lines.append(f"{grid.name:<{width}}  {n:>4} {grid.size_unit:<7}  {grid.description}{per}")
    return lines
