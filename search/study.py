"""Where a model-based search keeps its Optuna study, so that `--resume` continues it.

Owns the study's place and name: an Optuna RDB storage `sqlite:///<sweep folder>/optuna.db`
beside Tune's state, the study named after the experiment. Tune pickles the searcher with
the sweep, storage included, and `Tuner.restore` brings it back: the resumed search asks
the same study, whose trials TPE has already seen. A sweep stored under a URI (s3://, a
cluster's object store) cannot hold a database: its study is an Optuna journal of objects
under `<sweep URI>/optuna-journal` (analysis.study_journal, which says why), pickled by Tune
as that URI only, so a resume on any machine continues it and the search view reads it.

The tags returned by `search_tags` go on the sweep's MLflow parent run (`search.*`), which
is how `python -m analysis.table` finds the study and knows the experiment is a search.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.study_journal import JOURNAL_FOLDER, ObjectStoreJournal, journal_storage
from pix3d.fileio import is_uri

STUDY_FILE = "optuna.db"


@dataclass(frozen=True)
class StudyLocation:
    """An Optuna study: its storage (a sqlite URL, a journal's URI; None: in memory) and its name."""

    storage: str | None
    name: str

    @property
    def is_journal(self) -> bool:
        return self.storage is not None and not self.storage.startswith("sqlite:///")

    def open_storage(self):
        """The study's storage (a sqlite file's folder is created), or None for an in-memory study."""
        if self.storage is None:
            return None
        if self.is_journal:
            return journal_storage(self.storage)
        import optuna

        Path(self.storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(self.storage)

    def trial_count(self) -> int:
        """Trials the stored study holds so far (0 when it does not exist yet)."""
        if self.storage is None:
            return 0
        if self.is_journal and not ObjectStoreJournal(self.storage).exists():
            return 0
        if not self.is_journal and not Path(self.storage[len("sqlite:///"):]).is_file():
            return 0
        import optuna

        try:
            study = optuna.load_study(study_name=self.name, storage=self.open_storage())
        except KeyError:  # the database exists, the study does not
            return 0
        return len(study.trials)


def study_location(sweep_path: str, experiment: str) -> StudyLocation:
    """The study of the sweep at `sweep_path` (a local folder or a URI)."""
    if is_uri(sweep_path):
        return StudyLocation(f"{sweep_path.rstrip('/')}/{JOURNAL_FOLDER}", experiment)
    return StudyLocation(f"sqlite:///{Path(sweep_path).resolve() / STUDY_FILE}", experiment)


def search_tags(location: StudyLocation, *, metric: str, mode: str, params) -> dict[str, str]:
    """What the parent run records of a search (`search.<key>` tags)."""
    return {"kind": "optuna", "study": location.name, "storage": location.storage or "",
            "metric": metric, "mode": mode, "params": ",".join(params)}
