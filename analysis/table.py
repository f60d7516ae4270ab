"""The azimuth accuracy table, rebuilt from what MLflow logged.

    python -m analysis.table --experiment ablation [--mlflow-uri URI] [--metric val_azimuth_acc]
                             [--by subset|category] [--at last|best] [--format md|csv|latex] [--out DIR]

Rows are models (split by seed_quirks on/off when both were run, and by learning rate when
a model was run at several), columns the four modality subsets of the published table.
Each cell is mean ± std over seeds with n, in %, and the published value beside it; a
majority-class row says what 'learned nothing' scores. Files: table.md, table.csv,
table.png (and lr.png for learning-rate sweeps), written atomically to --out and logged to
the sweep's parent run.

`--metric` picks any metric of `METRICS` (accuracies in %, the median angular error in
degrees, labelled lower-is-better); `--by category` gives the per-category breakdown (rows =
model x subset, columns = categories) of the metrics logged per category at the end of a trial.

`summarise` is pure (a frame of one value per run in, a Table out) so that the same
arithmetic can be checked against Tune's own results.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.mlflow_store import ROLE_TAG, check_reachable, default_tracking_uri
from pix3d.cli import ArgumentParser, nonempty_str, run_cli
from pix3d.constants import (
    ABLATION_SUBSETS,
    PUBLISHED_AZIMUTH_ACC,
    SUBSET_LABELS,
    modalities_key,
)
from pix3d.errors import Pix3DError, UsageError, one_line
from pix3d.fileio import disk_full, ensure_writable_dir, is_disk_full

AT_CHOICES = ("last", "best")
FORMATS = ("md", "csv", "latex")
BY_CHOICES = ("subset", "category")
BASELINE_METRIC = "majority_azimuth_acc"


@dataclass(frozen=True)
class MetricSpec:
    """How a logged metric reads in a table: unit, direction, the baseline logged beside it."""

    name: str
    unit: str = "%"                 # "%": a fraction shown x100; "deg"; "": as logged
    lower_is_better: bool = False
    baseline: str | None = None     # the majority-class value of the same metric
    per_category: bool = False      # also logged as `<name>.<category>` at a trial's end

    @property
    def scale(self) -> float:
        return 100.0 if self.unit == "%" else 1.0

    def describe(self) -> str:
        unit = {"%": "%", "deg": "degrees"}.get(self.unit, "as logged")
        return unit + (", lower is better" if self.lower_is_better else "")


METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("val_azimuth_acc", baseline="majority_azimuth_acc", per_category=True),
    MetricSpec("val_azimuth_mederr", unit="deg", lower_is_better=True,
               baseline="majority_azimuth_mederr", per_category=True),
    MetricSpec("val_azimuth_acc_pi6", baseline="majority_azimuth_acc_pi6", per_category=True),
    MetricSpec("val_azimuth_acc_within1"),
    MetricSpec("best_val_azimuth_acc", baseline="majority_azimuth_acc"),
    MetricSpec("val_elevation_acc", baseline="majority_elevation_acc"),
    MetricSpec("val_inplane_acc", baseline="majority_inplane_acc"),
    MetricSpec("val_loss", unit="", lower_is_better=True),
    MetricSpec("train_loss", unit="", lower_is_better=True),
)}


def metric_spec(metric: str) -> MetricSpec:
    """The spec of a known metric; another name (Python API only) reads as a fraction in %."""
    if metric in METRICS:
        return METRICS[metric]
    return MetricSpec(metric, lower_is_better="loss" in metric or "err" in metric,
                      baseline=BASELINE_METRIC if metric == "val_azimuth_acc" else None)
PAPER_COLUMNS: tuple[str, ...] = tuple("+".join(s) for s in ABLATION_SUBSETS)
MODEL_ORDER = ("combined_net", "separate_net")
RECORD_COLUMNS = ("run_id", "parent_run_id", "sweep_id", "end_time", "model", "modalities",
                  "lr", "seed", "seed_quirks", "value", "baseline")


@dataclass
class Cell:
    """One table cell: a metric over seeds, in %."""

    values: list[float]
    published: float | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        # Sample std over seeds; undefined for one seed (shown without ±).
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else math.nan

    def text(self, *, published: bool = True) -> str:
        if not self.values:
            body = "–"
        elif self.n == 1:
            body = f"{self.mean:.1f} (n=1)"
        else:
            body = f"{self.mean:.1f} ± {self.std:.1f} (n={self.n})"
        if published and self.published is not None:
            body += f" · paper {self.published:.1f}"
        return body


@dataclass
class Row:
    label: str
    model: str
    seed_quirks: bool | None
    lr: float | None
    cells: dict[str, Cell]
    modalities: str | None = None  # set in per-category tables (one row per model x subset)


@dataclass
class Table:
    """The table plus where it came from (for notes, files and the parent run)."""

    experiment: str
    metric: str
    at: str
    columns: list[str]
    rows: list[Row]
    baseline: dict[str, Cell]
    notes: list[str] = field(default_factory=list)
    records: pd.DataFrame = field(default_factory=pd.DataFrame)
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    by: str = "subset"

    # -- renderings ----------------------------------------------------------------------
    def _title(self) -> str:
        spec = metric_spec(self.metric)
        by = ", by category" if self.by == "category" else ""
        return (f"{self.metric} ({self.at} epoch{by}), mean over seeds in {spec.describe()}: "
                f"experiment `{self.experiment}`")

    def to_markdown(self) -> str:
        labels = [SUBSET_LABELS.get(c, c) for c in self.columns]
        lines = [f"### {self._title()}", "", "| model | " + " | ".join(labels) + " |",
                 "|---|" + "---|" * len(labels)]
        for row in self.rows:
            lines.append(f"| {row.label} | " + " | ".join(row.cells[c].text() for c in self.columns) + " |")
        if self.baseline:
            lines.append("| majority class | " + " | ".join(
                self.baseline.get(c, Cell([])).text(published=False) for c in self.columns) + " |")
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines) + "\n"

    def to_frame(self) -> pd.DataFrame:
        """Long form, one line per (row, column): easy to load back or plot elsewhere."""
        out = []
        for row, cells in [(r, r.cells) for r in self.rows] + [(None, self.baseline)]:
            for column in self.columns:
                cell = cells.get(column, Cell([]))
                placement = ({"modalities": row.modalities if row else "", "category": column}
                             if self.by == "category" else {"modalities": column})
                out.append({
                    "row": row.label if row else "majority class",
                    "model": row.model if row else "",
                    "seed_quirks": "" if row is None or row.seed_quirks is None else row.seed_quirks,
                    "lr": "" if row is None or row.lr is None else row.lr,
                    **placement, "column": SUBSET_LABELS.get(column, column),
                    "mean_pct": round(cell.mean, 4) if cell.n else "",
                    "std_pct": round(cell.std, 4) if cell.n > 1 else "",
                    "n": cell.n,
                    "published_pct": "" if cell.published is None else cell.published,
                    "values_pct": " ".join(f"{v:.4f}" for v in cell.values),
                })
        return pd.DataFrame(out)

    def to_csv(self) -> str:
        return self.to_frame().to_csv(index=False)

    def to_latex(self) -> str:
        def tex(cell: Cell, published=True) -> str:
            return cell.text(published=published).replace("±", r"$\pm$").replace("·", r"\,/")
        labels = [SUBSET_LABELS.get(c, c) for c in self.columns]
        lines = [r"\begin{tabular}{l" + "c" * len(labels) + "}", r"\toprule",
                 "model & " + " & ".join(labels) + r" \\", r"\midrule"]
        for row in self.rows:
            lines.append(row.label.replace("_", r"\_") + " & " +
                         " & ".join(tex(row.cells[c]) for c in self.columns) + r" \\")
        if self.baseline:
            lines.append("majority class & " + " & ".join(
                tex(self.baseline.get(c, Cell([])), False) for c in self.columns) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"

    def render(self, fmt: str) -> str:
        return {"md": self.to_markdown, "csv": self.to_csv, "latex": self.to_latex}[fmt]()


# -- pure arithmetic -------------------------------------------------------------------------
def _model_rank(model: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER), model)


def summarise(records: pd.DataFrame, *, experiment: str, metric: str = "val_azimuth_acc",
              at: str = "last") -> Table:
    """One value per run (fractions) -> Table of mean ± std (n) in % per row and subset."""
    records = records.copy()
    records["modalities"] = [modalities_key(m) for m in records["modalities"]]
    notes: list[str] = []
    # The same grid point and seed logged twice (two sweeps in one experiment): keep the
    # latest, so a re-run replaces rather than double-counts a seed.
    key = ["model", "modalities", "lr", "seed_quirks", "seed"]
    records = records.sort_values("end_time", kind="stable")
    duplicated = records.duplicated(key, keep="last")
    if duplicated.any():
        notes.append(f"{int(duplicated.sum())} run(s) repeat a model/subset/lr/seed of a later "
                     "run and were left out (latest kept)")
        records = records[~duplicated]
    split_quirks = records["seed_quirks"].nunique() > 1
    lrs_per_model = records.groupby("model")["lr"].nunique()
    columns = list(PAPER_COLUMNS) + sorted(
        set(records["modalities"]) - set(PAPER_COLUMNS), key=lambda s: (s.count("+"), s))
    published_source = PUBLISHED_AZIMUTH_ACC if metric == "val_azimuth_acc" else {}
    scale = metric_spec(metric).scale

    rows: list[Row] = []
    group_keys = ["model", "seed_quirks", "lr"]
    for (model, quirks, lr), group in sorted(
            records.groupby(group_keys, sort=False),
            key=lambda item: (_model_rank(item[0][0]), bool(item[0][1]), item[0][2])):
        label = model
        if split_quirks:
            label += " (quirks on)" if quirks else " (quirks off)"
        if lrs_per_model[model] > 1:
            label += f" lr={lr:g}"
        cells = {}
        for column in columns:
            values = [scale * v for v in group.loc[group["modalities"] == column, "value"]]
            cells[column] = Cell(values, published_source.get(model, {}).get(column))
        rows.append(Row(label, model, bool(quirks) if split_quirks else None,
                        float(lr) if lrs_per_model[model] > 1 else None, cells))

    baseline = {}
    if "baseline" in records and records["baseline"].notna().any():
        for column in columns:
            values = records.loc[(records["modalities"] == column) & records["baseline"].notna(),
                                 "baseline"]
            baseline[column] = Cell([scale * v for v in values])
    counts = sorted({cell.n for row in rows for cell in row.cells.values() if cell.n})
    if len(counts) > 1:
        notes.append(f"cells have unequal n ({', '.join(map(str, counts))} seeds): compare "
                     "spreads with care")
    missing = [f"{row.label} / {SUBSET_LABELS.get(c, c)}" for row in rows
               for c in PAPER_COLUMNS if not row.cells[c].n]
    if missing:
        notes.append("no finished runs for: " + ", ".join(missing))
    return Table(experiment, metric, at, columns, rows, baseline, notes, records)


def summarise_by_category(records: pd.DataFrame, *, experiment: str,
                          metric: str = "val_azimuth_acc", at: str = "last") -> Table:
    """One value per run and category -> Table: rows model (x quirks x lr) x subset, columns
    the categories, cells mean ± std over seeds."""
    records = records.copy()
    records["modalities"] = [modalities_key(m) for m in records["modalities"]]
    notes: list[str] = []
    key = ["model", "modalities", "lr", "seed_quirks", "seed", "category"]
    records = records.sort_values("end_time", kind="stable")
    duplicated = records.duplicated(key, keep="last")
    if duplicated.any():
        notes.append(f"{int(duplicated.sum())} value(s) repeat a model/subset/lr/seed/category of a "
                     "later run and were left out (latest kept)")
        records = records[~duplicated]
    scale = metric_spec(metric).scale
    split_quirks = records["seed_quirks"].nunique() > 1
    lrs_per_model = records.groupby("model")["lr"].nunique()
    columns = sorted(set(records["category"]))
    subset_order = {s: i for i, s in enumerate(PAPER_COLUMNS)}
    rows: list[Row] = []
    groups = records.groupby(["model", "seed_quirks", "lr", "modalities"], sort=False)
    for (model, quirks, lr, subset), group in sorted(
            groups, key=lambda item: (_model_rank(item[0][0]), bool(item[0][1]), item[0][2],
                                      subset_order.get(item[0][3], len(subset_order)), item[0][3])):
        label = model
        if split_quirks:
            label += " (quirks on)" if quirks else " (quirks off)"
        if lrs_per_model[model] > 1:
            label += f" lr={lr:g}"
        label += f" · {SUBSET_LABELS.get(subset, subset)}"
        cells = {c: Cell([scale * v for v in group.loc[group["category"] == c, "value"]])
                 for c in columns}
        rows.append(Row(label, model, bool(quirks) if split_quirks else None,
                        float(lr) if lrs_per_model[model] > 1 else None, cells, modalities=subset))
    empty = [f"{row.label} / {c}" for row in rows for c in columns if not row.cells[c].n]
    if empty:
        notes.append("no value for: " + ", ".join(empty) + " (no validation image of that category)")
    return Table(experiment, metric, at, columns, rows, {}, notes, records, by="category")


# -- MLflow -> records -----------------------------------------------------------------------
def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=tracking_uri)


def _search_all(client, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _best(history, metric: str) -> float:
    values = [m.value for m in history if math.isfinite(m.value)]
    if not values:
        return math.nan
    return min(values) if metric_spec(metric.split(".")[0]).lower_is_better else max(values)


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
    check_reachable(tracking_uri)
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        # Opening it would create an empty store (and say so on stderr): refuse instead.
        raise Pix3DError(f"no MLflow store at {tracking_uri[len('sqlite:///'):]} "
                         "(run a sweep first, or pass --mlflow-uri)")
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise Pix3DError(f"unknown experiment {experiment!r} in {tracking_uri}; existing: "
                         f"{', '.join(names) if names else '(none)'}")
    runs = _search_all(client, found.experiment_id, f"tags.`{ROLE_TAG}` = 'trial'")
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
            record = {
                "run_id": run.info.run_id, "parent_run_id": tags.get("mlflow.parentRunId"),
                "sweep_id": tags.get("sweep_id"), "end_time": run.info.end_time or 0,
                "model": tags.get("model", params.get("model", "?")),
                "modalities": tags.get("modalities", params.get("modalities", "rgb")),
                "lr": float(lr_text), "seed": tags.get("seed", params.get("seed", "?")),
                "seed_quirks": tags.get("seed_quirks", params.get("seed_quirks", "False")) == "True",
                "value": value,
                "baseline": (run.data.metrics.get(spec.baseline, math.nan)
                             if spec.baseline and by == "subset" else math.nan),
            }
            if by == "category":
                record["category"] = key[len(prefix):]
            records.append(record)
    columns = list(RECORD_COLUMNS) + (["category"] if by == "category" else [])
    frame = pd.DataFrame(records, columns=columns)
    latest_parent = frame.sort_values("end_time")["parent_run_id"].dropna()
    return frame, notes, (latest_parent.iloc[-1] if len(latest_parent) else None)


def build_table(tracking_uri: str, experiment: str, *, metric: str = "val_azimuth_acc",
                at: str = "last", by: str = "subset") -> Table:
    """The table of `experiment` from its finished MLflow trial runs (see module doc)."""
    records, notes, parent = load_records(tracking_uri, experiment, metric=metric, at=at, by=by)
    if by == "category":
        table = summarise_by_category(records, experiment=experiment, metric=metric, at=at)
    else:
        table = summarise(records, experiment=experiment, metric=metric, at=at)
    table.notes = notes + table.notes
    table.parent_run_id = parent
    table.tracking_uri = tracking_uri
    return table


# -- files ---------------------------------------------------------------------------------
def lr_points(table: Table) -> list[dict]:
    """Mean ± std over seeds per (model, subset, lr), for the learning-rate view."""
    points = []
    for (model, subset, lr), group in table.records.groupby(["model", "modalities", "lr"]):
        values = metric_spec(table.metric).scale * group["value"].to_numpy()
        points.append({"model": model, "modalities": subset, "lr": float(lr),
                       "mean": float(values.mean()),
                       "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                       "n": len(values)})
    return points


def has_lr_sweep(table: Table) -> bool:
    """True when some model and subset were run at several learning rates."""
    if table.records.empty or table.by != "subset":
        return False
    return bool((table.records.groupby(["model", "modalities"])["lr"].nunique() > 1).any())


def write_table(table: Table, out_dir: str | Path, *, formats: Sequence[str] = (),
                log_to_mlflow: bool = True) -> dict[str, Path]:
    """Write table.md, table.csv, table.png (+ lr.png, table.tex) atomically; log to the parent.

    Files are made in a temp folder beside `out_dir` and moved in one by one with
    os.replace: a reader sees the old file or the new one, never a half-written one.
    """
    from analysis import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".table-", dir=out_dir.parent))
    try:
        written = {"md": staging / "table.md", "csv": staging / "table.csv"}
        written["md"].write_text(table.to_markdown())
        written["csv"].write_text(table.to_csv())
        if "latex" in formats:
            written["latex"] = staging / "table.tex"
            written["latex"].write_text(table.to_latex())
        bar_rows = [{"label": r.label,
                     "means": {c: r.cells[c].mean for c in table.columns},
                     "stds": {c: r.cells[c].std for c in table.columns},
                     "published": {c: r.cells[c].published for c in table.columns}}
                    for r in table.rows]
        written["png"] = plots.plot_table_bars(
            bar_rows, table.columns, staging / "table.png",
            baseline={c: cell.mean for c, cell in table.baseline.items() if cell.n},
            title=f"{table.experiment}: {table.metric} ({table.at}), mean ± std over seeds",
            ylabel=f"{table.metric} ({metric_spec(table.metric).describe()})")
        if has_lr_sweep(table):
            written["lr"] = plots.plot_lr_view(
                lr_points(table), staging / "lr.png",
                title=f"{table.experiment}: {table.metric} ({table.at}) against learning rate")
        final = {}
        for kind, path in written.items():
            target = out_dir / path.name
            os.replace(path, target)
            final[kind] = target
    except OSError as exc:
        if is_disk_full(exc):  # the staging folder goes; the old table files stay as they were
            raise disk_full(out_dir) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if log_to_mlflow:
        log_table_files(table, final.values(), out_dir)
    return final


def log_table_files(table, paths, out_dir: Path) -> None:
    """The written table files as `table/` artifacts of the sweep's parent run (when the table
    knows it: `parent_run_id`, `tracking_uri`); a failure names the run, the files stay."""
    if not (table.parent_run_id and table.tracking_uri):
        return
    try:
        client = _client(table.tracking_uri)
        for path in paths:
            client.log_artifact(table.parent_run_id, str(path), artifact_path="table")
    except Exception as exc:  # noqa: BLE001 - the files are written; say what failed
        raise Pix3DError(f"table written to {out_dir}, but logging it to parent run "
                         f"{table.parent_run_id} failed: {one_line(exc)}") from None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m analysis.table", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=nonempty_str, required=True, help="MLflow experiment (the grid name by default)")
    parser.add_argument("--mlflow-uri", default=None, help="tracking URI (default sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--metric", default="val_azimuth_acc", choices=tuple(METRICS),
                        help="metric per run: " + "; ".join(f"{m.name} ({m.describe()})" for m in METRICS.values())
                        .replace("%", "%%"))  # argparse %-formats help text ('%' units)
    parser.add_argument("--by", default="subset", choices=BY_CHOICES,
                        help="columns: the modality subsets (the published table), or the categories "
                             "(per-category values logged at the end of each trial)")
    parser.add_argument("--at", default="last", choices=AT_CHOICES,
                        help="value at the last epoch, or the best over epochs")
    parser.add_argument("--format", default="md", choices=FORMATS, help="what to print")
    parser.add_argument("--out", default=None, help="output folder (default ./table_out/<experiment>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.experiment.strip():
        raise UsageError("--experiment: empty name")
    uri = args.mlflow_uri or default_tracking_uri()
    out = Path(args.out) if args.out else Path("table_out") / args.experiment
    ensure_writable_dir(out, "--out")  # before reading the store: a bad --out fails at once
    from analysis import fusion_table

    if fusion_table.is_fusion_experiment(uri, args.experiment):
        # Relative-pose sweeps (fusion grids): rotation error by fusion x weights x loss.
        table = fusion_table.build_table(uri, args.experiment, at=args.at)
        files = fusion_table.write_table(table, out, log_to_mlflow=not args.no_log)
        print(table.render(args.format), end="")
        print(f"\nwrote {', '.join(str(p) for p in files.values())}")
        return 0
    table = build_table(uri, args.experiment, metric=args.metric, at=args.at, by=args.by)
    files = write_table(table, out, formats=(args.format,), log_to_mlflow=not args.no_log)
    print(table.render(args.format), end="")
    print(f"\nwrote {', '.join(str(p) for p in files.values())}")
    return 0


if __name__ == "__main__":
    run_cli(main)
