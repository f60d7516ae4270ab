"""Kinds of sweep: what differs between a pose grid, a model-based search and the fusion study.

`search.run` runs every sweep through the same phases (options, plan, checks, data, Ray, the
summary); at each phase it asks the grid, whose class is its kind, for what that kind does.
`SweepKind` says what a kind must answer; one module per kind answers it:

- `pose_grid`: `Grid`, an exhaustive grid of pose trainings (models x modality subsets x
  learning rates x axes x seeds) on a prepared Pix3D cache (trainables.pose).
- `model_search`: `SearchGrid`, a model-based search over the same trainings: TPE (Optuna)
  proposes the configurations, ASHA stops poor ones, the study persists beside the sweep.
- `fusion`: `FusionGrid`, the relative-pose study (trainables.relpose) on a rendered pair set.

The catalogue (`search.grids.GRIDS`) holds the named instances. The parent MLflow run records
the kind (`analysis.run_fields.KIND_TAG`) and `analysis.table.VIEWS` has each kind's table. A
new kind is a module here, its grids in the catalogue, and its view there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from pix3d.errors import UsageError
from search.space import expand

if TYPE_CHECKING:  # annotations only: the settings module reads the catalogue, which imports the kinds
    import argparse

    from search.options import SweepSettings
    from search.study import StudyLocation


class SweepKind:
    """What one kind of sweep does at each phase of `search.run`. Subclasses are frozen
    dataclasses with at least `name` and `description` (a grid of the catalogue); the
    defaults here are an exhaustive grid's."""

    kind: ClassVar[str]  # recorded on the parent run: analysis.table.VIEWS[kind] reads it back
    size_unit: ClassVar[str] = "trials"  # what --list counts
    early_stops: ClassVar[bool] = False  # a scheduler stops trials before their last epoch
    name: str
    description: str

    # ---- the trials
    def size(self, seeds: int | None = None) -> int:
        raise NotImplementedError

    def param_space(self, seeds: int | None = None, budget: Mapping[str, Any] | None = None) -> dict:
        raise NotImplementedError

    def trials(self, seeds: int | None = None, budget: Mapping[str, Any] | None = None) -> list[dict]:
        """Every trial config, as Tune will generate them."""
        return expand(self.param_space(seeds, budget)) if self.size(seeds) else []

    def with_samples(self, samples: int) -> "SweepKind":
        """This grid asked for `samples` configurations (--samples): a search's only."""
        raise UsageError(f"--samples: grid {self.name} is an exhaustive grid, not a search; "
                         "use --seeds, or a search grid (optuna)")

    def for_data(self, data: str) -> "SweepKind":
        """This grid for the data it will run on (a per-category grid gets the data's categories)."""
        return self

    # Whether pix3d.devices' GPU memory estimate models this kind's trials (pix3d.train.fit's).
    memory_modelled: ClassVar[bool] = False

    def known_trials(self, space: dict) -> list[dict] | None:
        """Every trial's config, known before the sweep starts (None: a search proposes them as
        it runs). What a resumed sweep must find in Tune's state, what the GPU memory plan and
        the split check read (a search: its space, whose choices they take as they are)."""
        return expand(space)

    # ---- the plan, before anything starts
    def plan_budget(self, settings: SweepSettings, args: argparse.Namespace,
                    log: Callable = print) -> tuple[SweepSettings, dict]:
        """(settings, the budget's overrides of the trials' config)."""
        raise NotImplementedError

    def check_cost(self, settings: SweepSettings, space: dict, args: argparse.Namespace,
                   log: Callable = print) -> None:
        """Say (or refuse) what the sweep costs on this machine, before the budget line."""

    def check_before_start(self, settings: SweepSettings, space: dict, args: argparse.Namespace) -> dict:
        """Refuse what would fail in every trial, before anything is written; the space to run."""
        return space

    def print_dry_run(self, settings: SweepSettings, space: dict, out: Callable = print) -> None:
        """--dry-run: what would run (and where its data would come from)."""
        raise NotImplementedError

    # ---- the data and the trainable
    def prepare_data(self, settings: SweepSettings, space: dict):
        """What the trials train on (put in Ray's object store once)."""
        raise NotImplementedError

    def train_function(self) -> Callable:
        """The Tune function trainable (trainables.*)."""
        raise NotImplementedError

    # ---- Tune
    def study(self, sweep_path: str, experiment: str) -> StudyLocation | None:
        """Where a search keeps its study (None: no study)."""
        return None

    def tune_options(self, space: dict, study: StudyLocation | None) -> dict:
        """search_alg, scheduler and num_samples of the TuneConfig."""
        return {"search_alg": None, "scheduler": None, "num_samples": 1}

    def parent_search_tags(self, sweep_path: str, experiment: str) -> dict | None:
        """What the MLflow parent run records of a search (search.study.search_tags); else None."""
        return None

    def on_resume(self, sweep_path: str, experiment: str, samples: int | None, write: Callable[[], None]) -> None:
        """A resumed sweep before Tune restores it (`samples`: --samples; a search grows to it,
        `write` saving the settings)."""

    # ---- the end
    def summarize(self, results) -> tuple[list[str], dict[str, int]]:
        """One line per trial, and how many trials ended in each status (search.report)."""
        raise NotImplementedError
