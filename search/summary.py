"""The end-of-sweep summary's shared part: one status per trial, rows sorted, numbers as shown.

Every kind of sweep (search.kinds) prints its own columns through `summary_lines`; a trial's
status is ok, ERROR, unfinished (interrupted: `--resume` continues it), not started, or in a
kind whose scheduler stops trials early, `stopped by ASHA at epoch k`, as in the search view,
the Optuna study (PRUNED) and its MLflow run's tag.
"""

from __future__ import annotations

import math
from typing import Callable

from analysis.run_fields import stopped_text


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
