"""What `search.run` does differently for the relative-pose grids (`FusionGrid`, trainables.relpose).

Budgets come from `relpose.train.BUDGETS` (a pair set and training settings), the data is a
rendered pair set instead of a prepared Pix3D cache, the ImageNet weights file is checked on
the driver before anything starts, and the end-of-sweep summary shows rotation errors.
Everything else (storage, resume, retries, MLflow parent/child runs) is the pose sweeps' own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pix3d.errors import Pix3DError, UsageError

def resolve_budget(budget: str, gpus_per_trial: float, log=print) -> tuple[str, dict]:
    """(name, Tune config overrides) for a fusion grid: the pair set as pairs_* keys, then training."""
    from relpose.train import BUDGETS

    name = budget
    if budget == "auto":
        import torch

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


def check_imagenet_weights(grid, space: dict, *, skip_missing: bool, log=print) -> dict:
    """Resolve the ImageNet file on the driver, into `imagenet_weights`; without it, fail in one
    line naming where to put it, or (skip_missing) keep only the scratch trials."""
    from ray import tune

    from relpose.models import NAMES, imagenet_weights_path

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


def prepare_pairs(settings, space: dict):
    """The sweep's pair set (rendered once into the cache, reused by every later sweep)."""
    from pix3d.data.cache import default_cache_dir
    from relpose.pairs import PairConfig, load_or_make_pairs

    from trainables.relpose import PAIR_KEYS

    config = PairConfig(**{field: type(getattr(PairConfig, field))(space[key])
                           for key, field in PAIR_KEYS.items() if key in space})
    config.check()
    cache = Path(settings.cache) if settings.cache else default_cache_dir()
    return load_or_make_pairs(config, cache, progress=False)


def summarize(results) -> tuple[list[str], dict[str, int]]:
    """One line per trial (fusion, weights, frozen, loss, lr, seed, test rotation error vs no
    motion on the held-out test split; validation when a run has none), status counts."""
    from search.report import lr_text, number_text, summary_lines

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
        return (f"{fusion:<6} {weights:<8} {frozen:<6} {loss:<11} {lr_text(lr):>7} {str(seed):>4} {str(epoch or '-'):>6} "
                f"{number_text(rot, '.2f'):>8} {number_text(identity, '.2f'):>9}  {status}")

    return summary_lines(results, header, row, line, sort_by=6)
