"""What a sweep reports: MLflow tracking while it runs, and the end-of-sweep summary and table.

Owns the sweep's MLflow store (`--mlflow-uri`, or for `--resume` the one saved with the
sweep), the tracking callback (analysis.tracking), one status per trial, the per-trial
summary lines (the pose grids' here; search.fusion builds its own on `trial_rows`), the
closing azimuth (or rotation-error) table read back from MLflow, and the exit code.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable, Mapping

from analysis.run_fields import stopped_text
from pix3d.errors import Pix3DError, one_line
from search.grids import varied_keys
from search.options import read_settings


def sweep_tracking_uri(args: argparse.Namespace, sweep_path: str) -> str | None:
    """The MLflow store of this sweep: for --resume the one recorded in its search_run.json
    (where the restored callback logs), else --mlflow-uri or ./mlflow.db; None with --no-mlflow."""
    if args.no_mlflow:
        return None
    if args.resume:
        saved = read_settings(sweep_path) or {}
        if isinstance(saved.get("mlflow_uri"), str) and saved["mlflow_uri"]:
            return saved["mlflow_uri"]
    from analysis.mlflow_store import default_tracking_uri

    return args.mlflow_uri or default_tracking_uri()


def tracking_callbacks(args: argparse.Namespace, *, experiment: str, grid: str, command: str, manifest: dict,
                       storage: str, uri: str | None = None, search: dict | None = None,
                       space: Mapping[str, Any] | None = None) -> list:
    """The MLflow Tune callback (analysis.tracking), or none when disabled or not installed.
    `search`: a model-based search's study (search.study.search_tags), for its parent run;
    `space`: the sweep's param space, whose varied keys its parent run records."""
    if args.no_mlflow:
        return []
    try:
        from analysis.mlflow_store import default_tracking_uri
        from analysis.tracking import MLflowTrackingCallback
    except ImportError as exc:
        print(f"note: MLflow tracking unavailable ({exc}); results stay in Ray storage")
        return []
    uri = uri or args.mlflow_uri or default_tracking_uri()
    print(f"MLflow: {uri} (experiment {experiment})")
    return [MLflowTrackingCallback(uri, experiment, sweep_name=experiment, grid=grid, command=command,
                                   data_manifest=manifest, storage_path=storage, search=search,
                                   varies=tuple(varied_keys(space or {})))]


def report_table(args: argparse.Namespace, *, experiment: str, trainable: str = "pose", uri: str | None = None,
                 is_search: bool = False) -> None:
    """Rebuild the azimuth table (a search: its view) from MLflow (`uri`: the sweep's store)
    and write its files."""
    if args.no_mlflow:
        return
    try:
        if trainable == "relpose":  # rotation error by fusion x weights x loss
            from analysis.fusion_table import build_table, write_table
        elif is_search:  # best configuration, top trials, importances, history (analysis.search_view)
            from analysis.search_view import build_search_view as build_table
            from analysis.search_view import write_search_view as write_table
        else:
            from analysis.table import build_table, write_table
        from analysis.mlflow_store import default_tracking_uri
    except ImportError as exc:
        print(f"note: azimuth table unavailable ({exc})")
        return
    uri = uri or args.mlflow_uri or default_tracking_uri()
    try:
        table = build_table(uri, experiment)
        paths = write_table(table, Path("table_out") / experiment)
    except (Pix3DError, OSError) as exc:
        print(f"note: could not build the azimuth table: {one_line(exc)}")
        return
    md = paths.get("md")
    if md and Path(md).exists():
        print(Path(md).read_text())
    print("table written: " + ", ".join(str(p) for p in paths.values()))


STOPPED = "stopped"  # the status count of trials a search's scheduler stopped early


def trial_status(result, *, search: bool = False) -> str:
    """ok | ERROR | unfinished (interrupted) | not started; in a search (`search`: ASHA stops
    trials) a trial that ended before its last epoch reads `stopped by ASHA at epoch k`, as in
    the search view, the Optuna study (PRUNED) and its MLflow run's tag."""
    if result.error:
        return "ERROR"
    metrics, config = result.metrics or {}, result.config or {}
    if not metrics.get("epoch"):
        return "not started"
    if metrics["epoch"] >= config.get("epochs", metrics["epoch"]):
        return "ok"
    return stopped_text(metrics["epoch"]) if search else "unfinished"


def trial_rows(results, row: Callable[[dict, dict], tuple], *, sort_by: int,
               search: bool = False) -> tuple[list[tuple], dict[str, int]]:
    """The summaries' shared part: `row(config, metrics) + (status,)` per trial, sorted on the
    first `sort_by` fields, and how many trials ended in each status (a search's stopped
    trials counted as STOPPED)."""
    rows, counts = [], {}
    for result in results:
        status = trial_status(result, search=search)
        key = STOPPED if status.startswith("stopped by") else status
        counts[key] = counts.get(key, 0) + 1
        rows.append((*row(result.config or {}, result.metrics or {}), status))
    rows.sort(key=lambda r: tuple(str(x) for x in r[:sort_by]))
    return rows, counts


def number_text(value, fmt: str, scale: float = 1.0, unit: str = "") -> str:
    """`scale * value` in format `fmt` with its `unit`, or '-' for a missing or NaN value."""
    return f"{scale * value:{fmt}}{unit}" if isinstance(value, (int, float)) and not math.isnan(value) else "-"


def lr_text(lr) -> str:
    """A learning rate as the summaries show it (`1e-04`), '-' when missing."""
    return f"{lr:.0e}" if isinstance(lr, float) else "-"


def summary_lines(results, header: str, row: Callable[[dict, dict], tuple], line: Callable[..., str], *,
                  sort_by: int, search: bool = False) -> tuple[list[str], dict[str, int]]:
    """`header`, then `line(*row(config, metrics), status)` per trial in `trial_rows` order;
    and the status counts."""
    rows, counts = trial_rows(results, row, sort_by=sort_by, search=search)
    return [header, *(line(*fields) for fields in rows)], counts


def summarize(results, *, search: bool = False) -> tuple[list[str], dict[str, int]]:
    """One line per trial (model, modalities, lr, seed, final/best azimuth acc) and status counts
    (`search`: a model-based search, whose early stops are ASHA's)."""
    from pix3d.devices import device_label

    header = (f"{'model':<13} {'modalities':<28} {'lr':>8} {'seed':>4} {'epochs':>6} "
              f"{'final az':>8} {'best az':>8}  {'device':<22} status")

    def row(config: dict, metrics: dict) -> tuple:
        final = metrics.get("val_azimuth_acc")
        return (str(config.get("model", "-")), str(config.get("modalities", "-")), config.get("lr"),
                config.get("seed", "-"), metrics.get("epoch"), final,
                metrics.get("best_val_azimuth_acc", final), device_label(metrics))

    def line(model, modalities, lr, seed, epoch, final, best, device, status) -> str:
        final, best = (number_text(v, "7.2f", 100, "%") for v in (final, best))
        return (f"{model:<13} {modalities:<28} {lr_text(lr):>8} {str(seed):>4} {str(epoch or '-'):>6} "
                f"{final:>8} {best:>8}  {device:<22} {status}")

    return summary_lines(results, header, row, line, sort_by=4, search=search)


def close_sweep(results, summary: Callable, args: argparse.Namespace, *, experiment: str, trainable: str,
                is_search: bool, storage: str, uri: str | None, sweep_path: str) -> int:
    """Print the per-trial summary (`summary(results)`: lines and status counts) and the table
    read from `uri`; 1 when a trial failed or did not finish."""
    lines, counts = summary(results)
    failed = counts.get("ERROR", 0)
    stopped = f", {counts[STOPPED]} stopped by ASHA" if counts.get(STOPPED) else ""
    print(f"\nsweep {experiment}: {len(lines) - 1} trials, {failed} failed{stopped}; results in {sweep_path}")
    print("\n".join(lines))
    report_table(args, experiment=experiment, trainable=trainable, uri=uri, is_search=is_search)
    if uri:
        from analysis.mlflow_ui import experiment_review_lines

        # A search's trials are one-off configurations: nothing to average per group.
        for line in experiment_review_lines(uri, experiment, grouped=not is_search):
            print(line)
    pending = counts.get("not started", 0) + (counts.get("unfinished", 0) if not is_search else 0)
    if pending:
        # Interrupted (Ctrl-C): Tune saved its state; the same sweep continues from here.
        print(f"{pending} trial(s) did not finish; continue with: python -m search.run --resume "
              f"--experiment {experiment} --storage {storage}")
    return 1 if failed or pending else 0
