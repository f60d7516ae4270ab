"""optuna-dashboard on a search's persisted study: the interactive view Optuna users know.

    python -m analysis.dashboard --experiment optuna [--mlflow-uri URI] [--port 8080]

Finds the study the way `python -m analysis.table` does (the sweep's MLflow parent run carries
`search.*` tags naming its Optuna storage and study, search.study) and serves it with
optuna-dashboard on 127.0.0.1 (its pages and scripts ship in the wheel: nothing is fetched).
A study kept in memory (a sweep stored under a URI) or no longer on disk is named, not served.
"""

from __future__ import annotations

from typing import Sequence

from analysis.mlflow_store import default_tracking_uri
from analysis.search_view import search_parent
from analysis.study_journal import open_study_storage
from analysis.sweep_logger import SEARCH_TAG_PREFIX
from pix3d.cli import ArgumentParser, nonempty_str, positive_int, run_cli
from pix3d.errors import Pix3DError

HOST = "127.0.0.1"


def study_storage(tracking_uri: str, experiment: str) -> tuple[str, object, str]:
    """(where the study is, its opened Optuna storage, the study name) of the latest search
    logged to `experiment`: a sqlite file, or a journal in the sweep's storage URI."""
    _, _, parent = search_parent(tracking_uri, experiment)
    if parent is None:
        raise Pix3DError(f"experiment {experiment!r} is not a model-based search (no search.* tags on its sweep)")
    tags = parent.data.tags
    storage, name = tags.get(f"{SEARCH_TAG_PREFIX}storage", ""), tags.get(f"{SEARCH_TAG_PREFIX}study", experiment)
    try:
        opened = open_study_storage(storage)
    except Pix3DError as exc:
        raise Pix3DError(f"the Optuna study {name!r} of experiment {experiment!r} cannot be opened: {exc}") from None
    return storage, opened, name


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m analysis.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=nonempty_str, required=True, help="MLflow experiment of the search")
    parser.add_argument("--mlflow-uri", default=None, help="tracking URI (default sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--port", type=positive_int, default=8080, help="port on 127.0.0.1")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    storage, opened, name = study_storage(args.mlflow_uri or default_tracking_uri(), args.experiment)
    try:
        import optuna_dashboard  # optional: pip install optuna-dashboard
    except ImportError:
        raise Pix3DError("optuna-dashboard is not installed (pip install optuna-dashboard)") from None
    print(f"study {name!r} in {storage}: http://{HOST}:{args.port}/dashboard (Ctrl-C to stop)", flush=True)
    optuna_dashboard.run_server(opened, host=HOST, port=args.port)
    return 0


if __name__ == "__main__":
    run_cli(main)
