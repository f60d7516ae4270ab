"""An Optuna study kept in a sweep's object storage (s3://...), so that `--resume` continues it
from any machine and the search view reads it from anywhere.

Why a journal and not the sqlite file of a local sweep: an object store cannot hold a live
database (no appends, no locks), and a sqlite file kept on the driver and uploaded after
each trial would be pickled into Tune's state under the driver's local path, which a resume
on another machine does not have. Optuna's JournalStorage records every change of the study
as a log entry; this backend stores each batch of entries as one object,
`<journal>/<first entry number, 12 digits>-<count>.json`, written in one PUT (whole or
absent, never torn), read back in name order. The study is then nothing but the objects
under its URI: nothing to copy at trial ends, and Tune's pickled searcher holds only the
URI. One writer at a time (the sweep's driver runs the searcher); two drivers on one study
would number their entries alike, which the storage's lock (issue 26) rules out.

`open_study_storage` turns the `search.storage` tag of a search's parent run (a sqlite URL
for a local sweep, the journal's URI for an object store) into what optuna.load_study takes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend

from pix3d.errors import Pix3DError, one_line
from pix3d.fileio import filesystem_for, is_uri

JOURNAL_FOLDER = "optuna-journal"


def _entry_range(name: str) -> tuple[int, int] | None:
    """(first entry number, count) from an object's name, or None for a foreign object."""
    stem, dot, ext = name.rpartition(".")
    first, dash, count = stem.partition("-")
    if ext != "json" or not dot or not dash or not (first.isdigit() and count.isdigit()):
        return None
    return int(first), int(count)


class ObjectStoreJournal(BaseJournalBackend):
    """Optuna journal entries as objects under `uri` (any pyarrow filesystem; see module doc)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self._fs = None

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with Tune's searcher: only the URI travels; the client is made where it is used.
        return {"uri": self.uri}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.uri, self._fs = state["uri"], None

    def _filesystem(self):
        if self._fs is None:
            self._fs, self._root = filesystem_for(self.uri)
        return self._fs

    def _objects(self) -> list[tuple[int, int, str]]:
        """(first, count, path) of every journal object, in entry order."""
        import pyarrow.fs  # comes with Ray; imported where the filesystem is

        fs = self._filesystem()
        infos = fs.get_file_info(pyarrow.fs.FileSelector(self._root, allow_not_found=True))
        found = [(*span, info.path) for info in infos
                 if info.type == pyarrow.fs.FileType.File and (span := _entry_range(info.base_name))]
        return sorted(found)

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        fs = self._filesystem()
        for first, count, path in self._objects():
            if first + count <= log_number_from:
                continue
            with fs.open_input_stream(path) as stream:
                entries = json.loads(stream.read().decode())
            yield from entries[max(0, log_number_from - first):]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if not logs:
            return
        objects = self._objects()
        first = objects[-1][0] + objects[-1][1] if objects else 0
        fs = self._filesystem()
        if not objects:
            fs.create_dir(self._root, recursive=True)  # a local folder needs it; S3 takes a marker
        with fs.open_output_stream(f"{self._root}/{first:012d}-{len(logs)}.json") as stream:
            stream.write(json.dumps(logs).encode())

    def exists(self) -> bool:
        """Whether any entry has been written (a study was created)."""
        return bool(self._objects())


def journal_storage(uri: str) -> JournalStorage:
    """The Optuna storage of the journal at `uri` (created on first write)."""
    return JournalStorage(ObjectStoreJournal(uri))


def open_study_storage(storage: str):
    """What optuna.load_study takes for a `search.storage` tag: a sqlite URL as it is, a journal
    URI as its JournalStorage; Pix3DError when the study is not there (opening a missing
    sqlite file or an empty journal would create an empty study)."""
    if not storage:
        raise Pix3DError("it was kept in memory (a sweep from before studies were stored under URIs)")
    if storage.startswith("sqlite:///"):
        if not Path(storage[len("sqlite:///"):]).is_file():
            raise Pix3DError(f"no file {storage[len('sqlite:///'):]}")
        return storage
    if not is_uri(storage):
        raise Pix3DError(f"{storage}: neither a sqlite URL nor a storage URI")
    backend = ObjectStoreJournal(storage)
    try:
        if not backend.exists():
            raise Pix3DError(f"no journal objects under {storage}")
    except OSError as exc:
        raise Pix3DError(f"{storage}: cannot read the study's journal ({one_line(exc)})") from None
    return JournalStorage(backend)
