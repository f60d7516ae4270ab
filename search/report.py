"""What a sweep reports: MLflow tracking while it runs, and the end-of-sweep summary and table.

Owns the sweep's MLflow store (`--mlflow-uri`, or for `--resume` the one saved with the
sweep), the tracking callback (analysis.tracking), the end: the grid's per-trial summary
(its kind's, on search.summary), the closing table read back from MLflow (the kind's view,
analysis.table.VIEWS), the review links, and the exit code.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from analysis.mlflow_store import default_tracking_uri
from analysis.mlflow_ui import experiment_review_lines
from analysis.table import VIEWS, build_view
from analysis.tracking import MLflowTrackingCallback
from pix3d.errors import Pix3DError, one_line
from search.kinds import SweepKind
from search.options import read_settings
from search.space import varied_keys
from search.summary import STOPPED


def sweep_tracking_uri(args: argparse.Namespace, sweep_path: str) -> str | None:
    """The MLflow store of this sweep: for --resume the one recorded in its search_run.json
    (where the restored callback logs), else --mlflow-uri or ./mlflow.db; None with --no-mlflow."""
    if args.no_mlflow:
        return None
    if args.resume:
        saved = read_settings(sweep_path) or {}
        if isinstance(saved.get("mlflow_uri"), str) and saved["mlflow_uri"]:
            return saved["mlflow_uri"]
    return args.mlflow_uri or default_tracking_uri()


def tracking_callbacks(args: argparse.Namespace, *, experiment: str, grid: SweepKind, command: str, manifest: dict,
                       storage: str, sweep_path: str, uri: str | None = None,
                       space: Mapping[str, Any] | None = None) -> list:
    """The MLflow Tune callback (analysis.tracking), or none when disabled. Its parent run
    records the grid's kind, a search's study (search.study.search_tags) and the keys the
    sweep's param space varies."""
    if args.no_mlflow:
        return []
    uri = uri or args.mlflow_uri or default_tracking_uri()
    print(f"MLflow: {uri} (experiment {experiment})")
    return [MLflowTrackingCallback(uri, experiment, sweep_name=experiment, grid=grid.name, command=command,
                                   data_manifest=manifest, storage_path=storage,
                                   search=grid.parent_search_tags(sweep_path, experiment),
                                   varies=tuple(varied_keys(space or {})), kind=grid.kind)]


def report_table(args: argparse.Namespace, *, experiment: str, kind: str, uri: str | None = None) -> None:
    """Rebuild the sweep's table (its kind's view: analysis.table.VIEWS) from MLflow (`uri`:
    the sweep's store) and write its files."""
    if args.no_mlflow:
        return
    uri = uri or args.mlflow_uri or default_tracking_uri()
    try:
        _, paths = build_view(kind, uri, experiment, Path("table_out") / experiment)
    except (Pix3DError, OSError) as exc:
        print(f"note: could not build the table: {one_line(exc)}")
        return
    md = paths.get("md")
    if md and Path(md).exists():
        print(Path(md).read_text())
    print("table written: " + ", ".join(str(p) for p in paths.values()))


def close_sweep(results, grid: SweepKind, args: argparse.Namespace, *, experiment: str, storage: str,
                uri: str | None, sweep_path: str) -> int:
    """Print the per-trial summary (the grid's: lines and status counts) and the table read
    from `uri`; 1 when a trial failed or did not finish."""
    lines, counts = grid.summarize(results)
    failed = counts.get("ERROR", 0)
    stopped = f", {counts[STOPPED]} stopped by ASHA" if counts.get(STOPPED) else ""
    print(f"\nsweep {experiment}: {len(lines) - 1} trials, {failed} failed{stopped}; results in {sweep_path}")
    print("\n".join(lines))
    report_table(args, experiment=experiment, kind=grid.kind, uri=uri)
    if uri:
        # The grouped link only where groups mean something (a search's trials are one-offs).
        for line in experiment_review_lines(uri, experiment, grouped=VIEWS[grid.kind].grouped):
            print(line)
    pending = counts.get("not started", 0) + counts.get("unfinished", 0)
    if pending:
        # Interrupted (Ctrl-C): Tune saved its state; the same sweep continues from here.
        print(f"{pending} trial(s) did not finish; continue with: python -m search.run --resume "
              f"--experiment {experiment} --storage {storage}")
    return 1 if failed or pending else 0
