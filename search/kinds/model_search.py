"""The model-based search: TPE (Optuna) proposes pose-training configurations, ASHA stops poor ones.

`SearchGrid` is a pose grid whose trials are not enumerated: `search_space` holds a Tune
domain per TrainConfig field and `num_samples` configurations are proposed one after another
(at most `max_concurrent` at once). As a kind of sweep it owns its Tune configuration (the
searcher on a study persisted beside the sweep, search.study; ASHA, one rung per epoch, whose
stops are PRUNED in the study, search.pruning), a resumed search growing to `--samples`, what
its parent run records of the study, and a summary in which an early stop is ASHA's. Budget,
data and trainable are the pose grid's. Its table is the search view (analysis.search_view).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Mapping

from pix3d.constants import modalities_key
from search.kinds.pose_grid import Grid, resolve_run_budget
from search.space import describe_domain
from search.storage import grow_search
from search.study import StudyLocation, search_tags, study_location

OPTUNA_METRIC = "val_azimuth_acc"
OPTUNA_MODE = "max"


@dataclass(frozen=True)
class SearchGrid(Grid):
    """A named model-based search: Tune domains per TrainConfig field (`search_space`), the
    other fields as a grid's (`models` for a single model, `subsets[-1]` the modalities)."""

    kind: ClassVar[str] = "search"
    size_unit: ClassVar[str] = "samples"
    early_stops: ClassVar[bool] = True

    search_space: Mapping[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    max_concurrent: int = 2

    @property
    def search_params(self) -> tuple[str, ...]:
        """The config keys the search proposes."""
        return tuple(self.search_space)

    def size(self, seeds: int | None = None) -> int:
        return self.num_samples

    def param_space(self, seeds: int | None = None, budget: Mapping[str, Any] | None = None) -> dict:
        """Budget overrides, fixed keys, one seed and the largest subset, then the domains."""
        space: dict[str, Any] = dict(budget or {})
        space.update(self.fixed)
        space.setdefault("seed", 0)
        space.setdefault("modalities", modalities_key(self.subsets[-1]))
        if len(self.model_names) == 1:
            space["model"] = self.model_names[0]
        space.update(self.search_space)
        return space

    def trials(self, seeds: int | None = None, budget: Mapping[str, Any] | None = None) -> list[dict]:
        return []  # proposed while the search runs

    def with_samples(self, samples: int) -> "SearchGrid":
        return replace(self, num_samples=samples)

    def known_trials(self, space: dict) -> list[dict] | None:
        return None  # proposed while the search runs

    def plan_budget(self, settings, args, log: Callable = print):
        """The budget's overrides; a search keeps its one seed under any budget."""
        _, overrides = resolve_run_budget(settings.budget, args.gpus_per_trial, log=log, device=args.device)
        return settings, overrides

    def check_cost(self, settings, space: dict, args, log: Callable = print) -> None:
        return None

    def print_dry_run(self, settings, space: dict, out: Callable = print) -> None:
        self._dry_run_data(settings)
        out(f"grid {self.name}: {self.num_samples} samples proposed by TPE (Optuna), "
            f"ASHA early stopping, at most {self.max_concurrent} at once")
        for key, value in space.items():
            out(f"  {key}: {describe_domain(value)}")

    # ---- Tune
    def study(self, sweep_path: str, experiment: str) -> StudyLocation:
        return study_location(sweep_path, experiment)

    def tune_options(self, space: dict, study: StudyLocation | None) -> dict:
        max_epochs = int(space.get("epochs", 1))
        return {"search_alg": self.search_alg(storage=study and study.open_storage(),
                                              study_name=study and study.name, max_epochs=max_epochs),
                "scheduler": self.scheduler(max_epochs), "num_samples": self.num_samples}

    def search_alg(self, metric: str = OPTUNA_METRIC, mode: str = OPTUNA_MODE, seed: int = 0, *,
                   storage=None, study_name: str | None = None, max_epochs: int | None = None):
        """TPE (Optuna) behind a concurrency limit. `storage` (an Optuna storage) and
        `study_name` keep the study on disk (search.study): a study that exists there is
        continued, its trials known to TPE. A trial ASHA stops before `max_epochs` is PRUNED in
        the study (search.pruning)."""
        from optuna.samplers import TPESampler
        from ray.tune.search import ConcurrencyLimiter

        from search.pruning import PruningOptunaSearch  # imports optuna: searches only

        searcher = PruningOptunaSearch(metric=metric, mode=mode, sampler=TPESampler(seed=seed),
                                       storage=storage, study_name=study_name, max_epochs=max_epochs)
        return ConcurrencyLimiter(searcher, max_concurrent=self.max_concurrent)

    def scheduler(self, max_epochs: int, metric: str = OPTUNA_METRIC, mode: str = OPTUNA_MODE):
        """ASHA, one rung per epoch up to the run's epochs."""
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode,
                             max_t=max(1, max_epochs), grace_period=1, reduction_factor=2)

    def parent_search_tags(self, sweep_path: str, experiment: str) -> dict:
        return search_tags(study_location(sweep_path, experiment), metric=OPTUNA_METRIC, mode=OPTUNA_MODE,
                           params=self.search_params)

    def on_resume(self, sweep_path: str, experiment: str, samples: int | None, write: Callable[[], None]) -> None:
        """--resume --samples N: the same study, asked for more trials (the saved size grows too)."""
        if samples is None:
            return
        before = grow_search(sweep_path, self.num_samples)
        if self.num_samples > before:
            write()
            print(f"search {experiment}: grown from {before} to {self.num_samples} trials (the same Optuna study)")
