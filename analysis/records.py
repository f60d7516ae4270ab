"""MLflow -> records: the finished trial runs of an experiment as one row per run (or per
run and category), with the notes a reader needs (left-out runs, runs lacking the metric).

Which runs are different points and which are repeats: the table's own keys
(`IDENTITY_COLUMNS`), plus every key a sweep's grid varies beyond them, read from its parent
run (`grid.varies`) and carried as an `axis.<key>` column with each run's value (its params
hold the flattened config). Runs whose parent predates the tag have the usual keys only.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.mlflow_store import ROLE_TAG, check_reachable, client_for, search_all_runs
from analysis.run_fields import VARIES_TAG, read_varies
from pix3d import models as model_registry
from pix3d.errors import Pix3DError, UsageError
from pix3d.metrics import METRICS, metric_spec

# last: each run's last epoch; best: its best; published: the epoch each published value came
# from (pix3d.models.published_epoch), the last where it names none or the run ended before it.
AT_CHOICES = ("last", "best", "published")
BY_CHOICES = ("subset", "category")
RECORD_COLUMNS = ("run_id", "parent_run_id", "sweep_id", "end_time", "model", "modalities",
                  "lr", "seed", "seed_quirks", "split", "oracle", "edges", "value", "baseline", "budget")
ORACLE_TAG = "oracle_inputs"  # analysis.run_fields.ORACLE_TAG: modalities rendered from the CAD model
DEFAULT_SPLIT = "published"  # pix3d.train.TrainConfig's (analysis does not import the loop)
# What tells two runs apart in every table (rows and columns are made of them); for runs
# logged before VARIES_TAG, all of it.
IDENTITY_COLUMNS = ("model", "modalities", "lr", "seed_quirks", "split", "seed")
AXIS_PREFIX = "axis."  # record column of a key a grid varies beyond IDENTITY_COLUMNS


def axis_columns(records: pd.DataFrame) -> list[str]:
    """The records' `axis.<key>` columns: the keys grids varied beyond the usual ones."""
    return [c for c in records.columns if str(c).startswith(AXIS_PREFIX)]


def trial_runs(tracking_uri: str, experiment: str) -> tuple:
    """(client, every trial run of `experiment`). Raises Pix3DError naming what is wrong: an
    unreachable store, no store file, an unknown experiment (listing the existing ones)."""
    client, found = open_experiment(tracking_uri, experiment)
    return client, search_all_runs(client, [found.experiment_id], f"tags.`{ROLE_TAG}` = 'trial'")


def open_experiment(tracking_uri: str, experiment: str) -> tuple:
    """(client, the experiment), with trial_runs's checks and errors; reads no runs."""
    check_reachable(tracking_uri)
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        # Opening it would create an empty store (and say so on stderr): refuse instead.
        raise Pix3DError(f"no MLflow store at {tracking_uri[len('sqlite:///'):]} "
                         "(run a sweep first, or pass --mlflow-uri)")
    client = client_for(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise Pix3DError(f"unknown experiment {experiment!r} in {tracking_uri}; existing: "
                         f"{', '.join(names) if names else '(none)'}")
    return client, found


def _best(history, metric: str) -> float:
    values = [m.value for m in history if math.isfinite(m.value)]
    if not values:
        return math.nan
    return min(values) if metric_spec(metric.split(".")[0]).lower_is_better else max(values)


def grid_axes(client, runs) -> list[str]:
    """The keys the grids of these runs' sweeps vary beyond IDENTITY_COLUMNS, in the grids'
    order, from each parent run's VARIES_TAG (a parent without the tag adds none)."""
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs} - {None}
    if not parents:
        return []
    sweeps = search_all_runs(client, sorted({r.info.experiment_id for r in runs}),
                             f"tags.`{ROLE_TAG}` = 'sweep'")
    keys: dict[str, None] = {}
    for sweep in sweeps:
        if sweep.info.run_id in parents:
            keys.update(dict.fromkeys(read_varies(sweep.data.tags.get(VARIES_TAG)) or ()))
    return [k for k in keys if k not in IDENTITY_COLUMNS]


def _at_epoch(history, last: float, epoch) -> float:
    """The value logged at step `epoch` (a number), else `last` (the run's last epoch)."""
    if not isinstance(epoch, int):
        return last
    at = [m.value for m in history if m.step == epoch]
    return at[-1] if at else last


def run_budget(params) -> str | None:
    """"published" for a run at the published budget (224 px, 25 epochs, the whole training
    split), else what it was ("64 px, 3 epochs, 1300 training images"); None if not logged."""
    size, epochs, cap = (params.get(k) for k in ("image_size", "epochs", "max_train_images"))
    if size is None or epochs is None:
        return None
    cap = None if cap in (None, "None", "null", "") else cap
    if (str(size), str(epochs), cap) == ("224", "25", None):
        return "published"
    return f"{size} px, {epochs} epochs, " + (f"{cap} training images" if cap else "the whole training split")


def _run_label(run) -> str:
    return run.data.tags.get("mlflow.runName") or run.info.run_id[:8]


def _runs_lacking(runs, metric: str, limit: int = 8) -> str:
    """'a, b, c (+N more)': the runs (by name) that did not log `metric`."""
    names = sorted(_run_label(r) for r in runs)
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def load_records(tracking_uri: str, experiment: str, *, metric: str = "val_azimuth_acc",
                 at: str = "last", by: str = "subset") -> tuple[pd.DataFrame, list[str], str | None]:
    """Finished trial runs of `experiment` -> (one row per run, notes, latest parent run id).

    With by="category": one row per run and category (`<metric>.<category>`, logged at the
    end of a trial), with a `category` column. Runs that lack the metric (logged by older
    code) are left out and named in a note. Raises Pix3DError naming what is wrong: unknown
    experiment (listing the existing ones), no finished runs, no run with the metric,
    unreachable store.
    """
    if at not in AT_CHOICES:
        raise UsageError(f"--at {at!r}: choose from {', '.join(AT_CHOICES)}")
    if by not in BY_CHOICES:
        raise UsageError(f"--by {by!r}: choose from {', '.join(BY_CHOICES)}")
    if at == "published" and by == "category":
        raise UsageError("--at published compares with the published table's cells: use it with --by subset "
                         "(per-category values are logged at a trial's end only)")
    spec = metric_spec(metric)
    if by == "category" and not spec.per_category:
        per_category = [m.name for m in METRICS.values() if m.per_category]
        raise UsageError(f"--by category: only {', '.join(per_category)} are logged per category, "
                         f"not {metric}")
    prefix = f"{metric}."

    def has_metric(run) -> bool:
        if by == "category":
            return any(key.startswith(prefix) for key in run.data.metrics)
        return metric in run.data.metrics
    client, runs = trial_runs(tracking_uri, experiment)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    notes = []
    if len(finished) < len(runs):
        by_status = pd.Series([r.info.status for r in runs if r.info.status != "FINISHED"]).value_counts()
        notes.append("left out (not finished): " + ", ".join(f"{n} {s}" for s, n in by_status.items()))
    if not finished:
        raise Pix3DError(f"experiment {experiment!r} has no finished trial runs "
                         f"({len(runs)} trial runs in all)")
    what = f"{metric} per category" if by == "category" else repr(metric)
    with_metric = [r for r in finished if has_metric(r)]
    if not with_metric:
        logged = sorted(k for k in set().union(*(r.data.metrics for r in finished)) if "." not in k)
        raise Pix3DError(f"no finished run of experiment {experiment!r} logged metric "
                         f"{what} (runs from older code lack the newer metrics); logged: "
                         f"{', '.join(logged) or '(none)'}")
    if len(with_metric) < len(finished):
        lacking = [r for r in finished if not has_metric(r)]
        notes.append(f"{len(lacking)} finished run(s) lack {what} (logged before it existed?) "
                     f"and were left out: {_runs_lacking(lacking, metric)}")
    axes = grid_axes(client, with_metric)
    records = []
    for run in with_metric:
        tags, params = run.data.tags, run.data.params
        keys = ([k for k in sorted(run.data.metrics) if k.startswith(prefix)]
                if by == "category" else [metric])
        for key in keys:
            value = run.data.metrics[key]
            if at == "best":
                value = _best(client.get_metric_history(run.info.run_id, key), key)
            lr_text = tags.get("lr", params.get("lr", "nan"))
            model = tags.get("model", params.get("model", "?"))
            modalities = tags.get("modalities", params.get("modalities", "rgb"))
            if at == "published":
                value = _at_epoch(client.get_metric_history(run.info.run_id, key), value,
                                  model_registry.published_epoch(model, key, modalities))
            record = {
                "run_id": run.info.run_id, "parent_run_id": tags.get("mlflow.parentRunId"),
                "sweep_id": tags.get("sweep_id"), "end_time": run.info.end_time or 0,
                "model": model, "modalities": modalities,
                "lr": float(lr_text), "seed": tags.get("seed", params.get("seed", "?")),
                # True (all four), False (none) or the "+"-joined quirks switched on alone.
                "seed_quirks": _quirks(tags.get("seed_quirks", params.get("seed_quirks", "False"))),
                # A run without one trained on TrainConfig's default split.
                # A run trained on one category (per_category grid) is its own row, never a published cell.
                "split": tags.get("split", params.get("split", DEFAULT_SPLIT))
                + (f" ({tags['train_category']} only)" if tags.get("train_category") else ""),
                # Trained on maps rendered from the CAD model at the true pose: not comparable.
                "oracle": tags.get(ORACLE_TAG, "none") not in ("", "none"),
                # What the boundaries channel showed (3D or texture edges); "" before it was logged.
                "edges": params.get("data.edges", ""),
                "budget": run_budget(params),
                "value": value,
                "baseline": (run.data.metrics.get(spec.baseline, math.nan)
                             if spec.baseline and by == "subset" else math.nan),
            }
            # Every run's value, whichever sweep it came from: its params hold the whole config.
            record.update({AXIS_PREFIX + axis: params.get(axis, tags.get(axis, "?")) for axis in axes})
            if by == "category":
                record["category"] = key[len(prefix):]
            records.append(record)
    columns = (list(RECORD_COLUMNS) + [AXIS_PREFIX + axis for axis in axes]
               + (["category"] if by == "category" else []))
    frame = pd.DataFrame(records, columns=columns)
    latest_parent = frame.sort_values("end_time")["parent_run_id"].dropna()
    return frame, notes, (latest_parent.iloc[-1] if len(latest_parent) else None)


def _quirks(text: str):
    """A run's seed_quirks tag as pix3d.models.quirks_value gives it; an unknown name as written."""
    try:
        return model_registry.quirks_value(text)
    except Pix3DError:
        return text
