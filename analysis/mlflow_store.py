"""The MLflow store a sweep logs to and the tables read: which one, is it usable, reading it.

Owns the default store (`sqlite:///<cwd>/mlflow.db`), the checks that name a bad
`--mlflow-uri` before any work (scheme, a file that is not SQLite, a server that does not
answer), where a sqlite store's artifacts go, the tag that marks a run's role in a sweep,
`search_all_runs`, the one way runs are read back page by page, and `log_table_files`, the one
way a table's files and cell metrics reach the sweep's parent run (every table view's).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from pix3d.errors import Pix3DError, one_line

ROLE_TAG = "pix3d.role"                # "sweep" on the parent, "trial" on children
_PAGE = 1000                           # runs per page of search_runs


def default_tracking_uri() -> str:
    """sqlite:///<absolute cwd>/mlflow.db: the file store (./mlruns) raises in MLflow >= 3.13."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


# Tracking URI schemes MLflow has stores for ("" and file: a local folder).
TRACKING_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql",
                    "databricks", "databricks-uc", "uc")
_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_tracking_uri(tracking_uri: str) -> None:
    """Raise Pix3DError naming the URI when it cannot be a tracking store, without connecting:
    an unknown scheme, or an sqlite URI whose file exists but is not an SQLite database."""
    parsed = urllib.parse.urlparse(tracking_uri)
    if not tracking_uri.strip():
        raise Pix3DError("--mlflow-uri: empty tracking URI")
    scheme = parsed.scheme.split("+")[0]  # postgresql+psycopg2://...
    if len(scheme) == 1:  # a Windows drive letter is a path, not a scheme
        scheme = ""
    if scheme not in TRACKING_SCHEMES:
        raise Pix3DError(f"--mlflow-uri {tracking_uri}: unknown scheme {parsed.scheme!r}; use sqlite:///PATH.db, "
                         "http(s)://HOST:PORT, a folder, or a database URI")
    if scheme == "sqlite" and tracking_uri.startswith("sqlite:///"):
        db_path = Path(tracking_uri[len("sqlite:///"):])
        if db_path.is_file() and db_path.stat().st_size > 0:
            try:
                with open(db_path, "rb") as fh:
                    head = fh.read(len(_SQLITE_MAGIC))
            except OSError as exc:
                raise Pix3DError(f"MLflow store {tracking_uri}: cannot read {db_path} ({one_line(exc)})") from None
            if head != _SQLITE_MAGIC:
                raise Pix3DError(f"MLflow store {tracking_uri}: {db_path} is not an SQLite database")


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Raise Pix3DError naming the URI when the tracking store cannot be reached.

    Probing first matters for HTTP: MLflow's own client retries with back-off for minutes
    before giving up, which a sweep (or a table command) should not sit through.
    """
    check_tracking_uri(tracking_uri)
    parsed = urllib.parse.urlparse(tracking_uri)
    if parsed.scheme in ("http", "https"):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as reply:
                if reply.status != 200:
                    raise Pix3DError(f"MLflow server {tracking_uri} answered {reply.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Pix3DError(f"cannot reach MLflow server {tracking_uri}: {reason}") from None
    elif parsed.scheme == "sqlite":
        # sqlite:////abs/path.db -> /abs/path.db ; sqlite:///rel.db -> rel.db
        db_path = Path(tracking_uri[len("sqlite:///"):])
        if not db_path.parent.is_dir():
            raise Pix3DError(f"MLflow store {tracking_uri}: folder {db_path.parent} does not exist")


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store go beside the database (`<db dir>/mlartifacts/<name>`).

    MLflow's default for a sqlite store is ./mlruns of whatever folder the process runs
    in, which scatters one sweep's artifacts over several folders. Servers choose their own.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in experiment) or "experiment"
    db_path = Path(tracking_uri[len("sqlite:///"):]).resolve()
    return (db_path.parent / "mlartifacts" / slug).as_uri()


def search_all_runs(client, experiment_ids: Sequence[str], filter_string: str = "", *,
                    page_size: int = _PAGE) -> list:
    """Every run of `experiment_ids` that matches `filter_string`, fetched page by page
    (one search_runs call returns at most a page)."""
    runs, token = [], None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string=filter_string,
                                  max_results=page_size, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def client_for(tracking_uri: str):
    """An MlflowClient for `tracking_uri` (mlflow imported only when a store is read)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def log_table_files(table, paths: Iterable, out_dir: Path, *, metrics: Mapping[str, float] | None = None,
                    artifact_path: str = "table") -> None:
    """The written files as `<artifact_path>/` artifacts of the sweep's parent run (when the
    table knows it: `parent_run_id`, `tracking_uri`), and `metrics` (step 0) on it; a failure
    names the run, the files stay."""
    if not (table.parent_run_id and table.tracking_uri):
        return
    try:
        from mlflow.entities import Metric

        client = client_for(table.tracking_uri)
        for path in paths:
            client.log_artifact(table.parent_run_id, str(path), artifact_path=artifact_path)
        stamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), stamp, 0) for key, value in (metrics or {}).items()]
        for i in range(0, len(batch), 1000):
            client.log_batch(table.parent_run_id, metrics=batch[i:i + 1000])
    except Exception as exc:  # noqa: BLE001 - the files are written; say what failed
        raise Pix3DError(f"table written to {out_dir}, but logging it to parent run "
                         f"{table.parent_run_id} failed: {one_line(exc)}") from None
