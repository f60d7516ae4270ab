"""The fusion study: relative pose between two views (trainables.relpose) on a rendered pair set.

`FusionGrid` is fusion x weights x frozen x loss x seeds on one backbone. Weights and frozen
are the ImageNet question (ImageNet features as they are, frozen, against fine-tuned, against
the same network from scratch; scratch-frozen is the random-feature control), fusion asks
early or late, the loss says what supervision it takes. As a kind of sweep it owns its budgets
(`relpose.train.BUDGETS`: a pair set and training settings, kept at three seeds whatever the
budget, since its table reports held-out numbers with a spread), the ImageNet file checked on
the driver before anything starts, the pair set rendered once into the cache, and a summary in
rotation errors against no motion. Its table is analysis.fusion_table.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from ray import tune

from pix3d.errors import Pix3DError, UsageError
from relpose.models import NAMES, imagenet_weights_path
from relpose.train.config import BUDGETS
from search.kinds import SweepKind
from search.space import print_trials
from search.summary import lr_text, number_text, summary_lines


@dataclass(frozen=True)
class FusionGrid(SweepKind):
    """A grid of the relative-pose study, on one backbone. The pair set and the training
    settings come from the budget; `fixed` wins over them."""

    kind: ClassVar[str] = "fusion"

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

    # ---- the plan
    def plan_budget(self, settings, args: argparse.Namespace, log: Callable = print):
        """(settings, overrides): the pair set as pairs_* keys, then the training settings."""
        return settings, resolve_budget(settings.budget, args.gpus_per_trial, log=log)[1]

    def check_before_start(self, settings, space: dict, args: argparse.Namespace) -> dict:
        return check_imagenet_weights(self, space, skip_missing=args.skip_missing_weights)

    def print_dry_run(self, settings, space: dict, out: Callable = print) -> None:
        print_trials(self.name, space, out)

    # ---- the data and the trainable
    def prepare_data(self, settings, space: dict):
        """The sweep's pair set (rendered once into the cache, reused by every later sweep)."""
        from pix3d.data.cache import default_cache_dir
        from relpose.pairs import PairConfig, load_or_make_pairs
        from trainables.relpose import PAIR_KEYS

        config = PairConfig(**{key_field: type(getattr(PairConfig, key_field))(space[key])
                               for key, key_field in PAIR_KEYS.items() if key in space})
        config.check()
        cache = Path(settings.cache) if settings.cache else default_cache_dir()
        return load_or_make_pairs(config, cache, progress=False)

    def train_function(self) -> Callable:
        from trainables.relpose import train_relpose  # torch: loaded by the trial's actor

        return train_relpose

    # ---- the end
    def summarize(self, results) -> tuple[list[str], dict[str, int]]:
        """One line per trial (fusion, weights, frozen, loss, lr, seed, test rotation error vs no
        motion on the held-out test split; validation when a run has none), status counts."""
        header = (f"{'fusion':<6} {'weights':<8} {'frozen':<6} {'loss':<11} {'lr':>7} {'seed':>4} {'epochs':>6} "
                  f"{'rot deg':>8} {'no-motion':>9}  status")

        def row(config: dict, metrics: dict) -> tuple:
            split = "test_" if "test_rotation_err_deg" in metrics else "val_"
            return (str(config.get("fusion", "-")), str(config.get("weights", "-")),
                    "yes" if config.get("freeze_backbone") else "no", str(config.get("loss", "-")),
                    config.get("lr"), config.get("seed", "-"), metrics.get("epoch"),
                    metrics.get(f"{split}rotation_err_deg"),
                    metrics.get("test_identity_rotation_err_deg" if split == "test_" else "identity_rotation_err_deg"))

        def line(fusion, weights, frozen, loss, lr, seed, epoch, rot, identity, status) -> str:
            return (f"{fusion:<6} {weights:<8} {frozen:<6} {loss:<11} {lr_text(lr):>7} {str(seed):>4} "
                    f"{str(epoch or '-'):>6} {number_text(rot, '.2f'):>8} {number_text(identity, '.2f'):>9}  {status}")

        return summary_lines(results, header, row, line, sort_by=6)


def resolve_budget(budget: str, gpus_per_trial: float, log=print) -> tuple[str, dict]:
    """(name, Tune config overrides) for a fusion grid: the pair set as pairs_* keys, then training."""
    name = budget
    if budget == "auto":
        import torch  # asked only for `auto`: is there a GPU on this machine

        name = "paper" if gpus_per_trial > 0 or torch.cuda.is_available() else "quick"
    if name not in BUDGETS:
        raise UsageError(f"--budget must be auto, {', '.join(BUDGETS)}; got {budget!r}")
    chosen = BUDGETS[name]
    pairs, train = chosen["pairs"], chosen["train"]
    models = f" of {pairs['models_per_category']} models per category" if "models_per_category" in pairs else ""
    log(f"budget {name}: {pairs['n']} view pairs{models} at {pairs['size']} px, orbits up to +-{pairs['max_orbit_deg']:g} deg; "
        + ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in train.items()))
    overrides: dict[str, Any] = {f"pairs_{k}": v for k, v in pairs.items()}
    overrides.update(train)
    return name, overrides


def check_imagenet_weights(grid: FusionGrid, space: dict, *, skip_missing: bool, log=print) -> dict:
    """Resolve the ImageNet file on the driver, into `imagenet_weights`; without it, fail in one
    line naming where to put it, or (skip_missing) keep only the scratch trials."""
    weights = space.get("weights")
    wanted = list(weights["grid_search"]) if isinstance(weights, dict) else [weights]
    if "imagenet" not in wanted:
        return space
    backbone = space.get("backbone", "resnet18")
    path = imagenet_weights_path(backbone)
    if path.is_file():
        # Absolute: a relative TORCH_HOME would otherwise resolve against each trial's working
        # directory (Ray gives every trial its own, and a reused actor yet another).
        space["imagenet_weights"] = str(path.absolute())
        return space
    rest = [w for w in wanted if w != "imagenet"]
    if not skip_missing or not rest:
        raise Pix3DError(
            f"grid {grid.name} needs the ImageNet {NAMES[backbone]} weights at {path} (torchvision's file; nothing is "
            "downloaded: copy it there, or set TORCH_HOME), or add --skip-missing-weights to run the scratch half")
    log(f"note: no ImageNet weights at {path}: --skip-missing-weights runs only the weights={'/'.join(rest)} trials")
    space["weights"] = tune.grid_search(rest)
    return space
