"""The pose table (azimuth accuracy unless --metric says otherwise), rebuilt from what MLflow logged.

    python -m analysis.table --experiment ablation [--mlflow-uri URI] [--metric val_azimuth_acc]
                             [--by subset|category] [--at last|best|published] [--format md|csv|latex] [--out DIR]

Rows are models (split by split and by seed_quirks on/off when several were run, and by the
learning rate or any other key the sweep's grid varied when a model was run at several of its
values), columns the modality subsets the runs cover, in the published table's order.
Each cell is mean ± std over seeds with n, in the metric's unit, and the published value
beside it; a majority-class row says what 'learned nothing' scores. Files: table.md, table.csv,
table.png (and lr.png for learning-rate sweeps), written atomically to --out and logged to
the sweep's parent run, with every cell as a parent-run metric (`table.<model>.<subset>`,
`table.majority.<subset>`) so that MLflow's chart view shows the table; the command ends with
the links that open the experiment's training runs in the MLflow UI (analysis.mlflow_ui).

`--metric` picks any metric of `pix3d.metrics.METRICS` (accuracies in %, median angular errors in
degrees, labelled lower-is-better); `--by category` gives the per-category breakdown (rows =
model x subset, columns = categories) of the metrics logged per category at the end of a trial.

`summarise` is pure (a frame of one value per run in, a Table out) so that the same
arithmetic can be checked against Tune's own results.
"""


from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from analysis import fusion_table, search_view
from analysis.cells import ORACLE_MARK, Row, Table
from analysis.mlflow_store import ROLE_TAG, client_for, default_tracking_uri, log_table_files, search_all_runs
from analysis.mlflow_ui import experiment_review_lines
from analysis.records import AT_CHOICES, AXIS_PREFIX, BY_CHOICES, axis_columns, load_records, open_experiment
from analysis.run_fields import KIND_TAG
from analysis.summary import summarise, summarise_by_category
from analysis.sweep_logger import SEARCH_TAG_PREFIX
from pix3d.cli import ArgumentParser, nonempty_str, run_cli
from pix3d.errors import Pix3DError, UsageError, one_line
from pix3d.fileio import atomic_path, ensure_writable_dir
from pix3d.metrics import METRICS, metric_key_part, metric_spec
from pix3d.models import TABLE_METRIC

FORMATS = ("md", "csv", "latex")


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
    """Mean ± std over seeds per (model, subset, lr), for the learning-rate view. Where the
    sweep also varied other keys (a grid axis, the split, the quirks), each of their values is
    a line of its own, labelled `subset (key=value)`: seeds only are averaged."""
    records = table.records
    others = [c for c in (*axis_columns(records), "split", "seed_quirks")
              if c in records and records[c].nunique(dropna=False) > 1]
    points = []
    for (model, subset, lr, *values), group in records.groupby(["model", "modalities", "lr", *others],
                                                               dropna=False):
        if others:
            shown = ", ".join(f"{c.removeprefix(AXIS_PREFIX)}={v}" for c, v in zip(others, values))
            subset = f"{subset} ({shown})"
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
    """Write table.md, table.csv, table.png (+ lr.png, table.tex), each atomically; log them
    to the parent run. A full disk raises before the next file; finished files stay whole."""
    from analysis import plots

    out_dir = Path(out_dir)
    written = {"md": out_dir / "table.md", "csv": out_dir / "table.csv"}
    texts = {"md": table.to_markdown(), "csv": table.to_csv()}
    if "latex" in formats:
        written["latex"], texts["latex"] = out_dir / "table.tex", table.to_latex()
    for kind, text in texts.items():
        with atomic_path(written[kind], report_as=out_dir) as tmp:
            tmp.write_text(text)
    bar_rows = [{"label": r.label + (f" {ORACLE_MARK}" if any(c.oracle for c in r.cells.values()) else ""),
                 "means": {c: r.cells[c].mean for c in table.columns},
                 "stds": {c: r.cells[c].std for c in table.columns},
                 "published": {c: r.cells[c].published for c in table.columns}}
                for r in table.rows]
    written["png"] = plots.plot_table_bars(
        bar_rows, table.columns, out_dir / "table.png",
        baseline={c: cell.mean for c, cell in table.baseline.items() if cell.n},
        title=f"{table.experiment}: {table.metric} ({table.at}), mean ± std over seeds",
        ylabel=f"{table.metric} ({metric_spec(table.metric).describe()})")
    if has_lr_sweep(table):
        written["lr"] = plots.plot_lr_view(
            lr_points(table), out_dir / "lr.png",
            title=f"{table.experiment}: {table.metric} ({table.at}) against learning rate")
    if log_to_mlflow:
        log_table_files(table, written.values(), out_dir, metrics=table_metrics(table))
        log_readable_table(table, written["csv"], written["png"])
    return written


def readable_stem(table: Table) -> str:
    """`azimuth_table` for the published table (sorts first among the parent's artifacts, before
    data_manifest.json), else `<metric>_<at>[_by_category]_table`."""
    if (table.metric, table.at, table.by) == (TABLE_METRIC, "last", "subset"):
        return "azimuth_table"
    return f"{table.metric}_{table.at}" + ("_by_category" if table.by == "category" else "") + "_table"


def log_readable_table(table, csv_path: Path, png_path: Path) -> None:
    """The table where a reader of the parent run looks first: `<stem>.json` through
    `mlflow.log_table` (the artifact viewer shows it as a table) and `<stem>.png`, at the top
    of its artifacts. A failure names the run; the files stay."""
    if not (table.parent_run_id and table.tracking_uri):
        return
    stem = readable_stem(table)
    data = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    try:
        client = client_for(table.tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            if f"{stem}.json" in {a.path for a in client.list_artifacts(table.parent_run_id)}:
                # log_table appends to an existing table; a rebuilt table replaces it (same format).
                data.to_json(Path(tmp) / f"{stem}.json", orient="split", index=False)
                client.log_artifact(table.parent_run_id, str(Path(tmp) / f"{stem}.json"))
            else:
                client.log_table(table.parent_run_id, data=data, artifact_file=f"{stem}.json")
            shutil.copyfile(png_path, Path(tmp) / f"{stem}.png")
            client.log_artifact(table.parent_run_id, str(Path(tmp) / f"{stem}.png"))
    except Exception as exc:  # noqa: BLE001 - the files are written; say what failed
        raise Pix3DError(f"table written to {csv_path.parent}, but logging it as {stem}.json to parent run "
                         f"{table.parent_run_id} failed: {one_line(exc)}") from None


def _row_key(row: Row) -> str:
    """A row as a metric-name part: model[.modalities][.quirks_on|off|_<names>][.lr_1e-05][.<key>_<value>...]."""
    parts = [metric_key_part(p) for p in (row.model, row.modalities) if p]
    if isinstance(row.seed_quirks, str):
        parts.append("quirks_" + row.seed_quirks.replace("+", "_"))
    elif row.seed_quirks is not None:
        parts.append("quirks_on" if row.seed_quirks else "quirks_off")
    if row.lr is not None:
        parts.append(f"lr_{row.lr:g}")  # digits, '.', 'e', '-': a valid metric name as it is
    parts += [metric_key_part(f"{key}_{value}") for key, value in row.axes.items()]
    return ".".join(parts)


def table_metrics(table: Table) -> dict[str, float]:
    """Every filled cell's mean (in the table's unit) and the majority baseline, as metrics of
    the parent run, so the UI's chart view shows the table: `table.<row>.<column>` and
    `table.majority.<column>` for the published table (last epoch, by subset), else under
    `table.<metric>.<at>[.by_category]`."""
    prefix = "table"
    if (table.metric, table.at, table.by) != (TABLE_METRIC, "last", "subset"):
        prefix += f".{table.metric}.{table.at}" + (".by_category" if table.by == "category" else "")
    cells = [(_row_key(row), row.cells) for row in table.rows] + [("majority", table.baseline)]
    return {f"{prefix}.{row}.{metric_key_part(column)}": cell.mean
            for row, by_column in cells for column, cell in by_column.items()
            if cell.n and math.isfinite(cell.mean)}


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
                        help="value at the last epoch, the best over epochs, or (published) at the epoch each "
                             "published value came from (the footnotes say which is printed)")
    parser.add_argument("--format", default="md", choices=FORMATS, help="what to print")
    parser.add_argument("--out", default=None, help="output folder (default ./table_out/<experiment>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    return parser


@dataclass(frozen=True)
class TableOptions:
    """What the command line asks of a table view (each view reads the options it has)."""

    metric: str = "val_azimuth_acc"
    at: str = "last"
    by: str = "subset"
    format: str = "md"
    log: bool = True  # log the files (and cell metrics) to the sweep's parent run


@dataclass(frozen=True)
class TableView:
    """How one kind of sweep (search.kinds) reads as a table: build it from MLflow, write its files."""

    build: Callable[[str, str, TableOptions], Any]
    write: Callable[[Any, Path, TableOptions], dict]
    grouped: bool  # the grouped view's link means something: a grid of models x modalities


def _search_build(uri: str, experiment: str, options: TableOptions):
    view = search_view.build_search_view(uri, experiment)
    view.render(options.format)  # an unsupported --format fails before anything is written
    return view


# The table view of each kind of sweep, keyed by the kind its parent run records (KIND_TAG):
# a pose grid's azimuth table, a model-based search's view (best configuration, top trials,
# importances, plots), the relative-pose study's rotation error by fusion x weights x loss.
VIEWS: dict[str, TableView] = {
    "grid": TableView(lambda uri, e, o: build_table(uri, e, metric=o.metric, at=o.at, by=o.by),
                      lambda t, out, o: write_table(t, out, formats=(o.format,), log_to_mlflow=o.log), grouped=True),
    "search": TableView(_search_build, lambda v, out, o: search_view.write_search_view(v, out, log_to_mlflow=o.log),
                        grouped=False),
    "fusion": TableView(lambda uri, e, o: fusion_table.build_table(uri, e, at=o.at),
                        lambda t, out, o: fusion_table.write_table(t, out, log_to_mlflow=o.log), grouped=False),
}


def sweep_kind(tracking_uri: str, experiment: str) -> str:
    """The kind of `experiment`'s latest sweep: its parent run's KIND_TAG. Sweeps logged before
    the tag are told by what they carry (a search's study tags, a fusion trial's tag); a store
    that cannot be read is left to the pose table's loader, which names what is wrong."""
    try:
        client, found = open_experiment(tracking_uri, experiment)
    except Pix3DError:
        return "grid"
    # The parent runs only: the chosen view reads the trial runs itself.
    parents = search_all_runs(client, [found.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep'")
    parents.sort(key=lambda r: r.info.start_time or 0)
    tagged = [r.data.tags[KIND_TAG] for r in parents if r.data.tags.get(KIND_TAG) in VIEWS]
    if tagged:
        return tagged[-1]
    if any(r.data.tags.get(f"{SEARCH_TAG_PREFIX}kind") for r in parents):
        return "search"
    one = client.search_runs([found.experiment_id], f"tags.`{ROLE_TAG}` = 'trial'", max_results=1)
    return "fusion" if one and "fusion" in one[0].data.tags else "grid"


def build_view(kind: str, tracking_uri: str, experiment: str, out: Path,
               options: TableOptions = TableOptions()) -> tuple[Any, dict]:
    """(the table of a `kind` sweep, the files written under `out`)."""
    view = VIEWS[kind]
    table = view.build(tracking_uri, experiment, options)
    return table, view.write(table, out, options)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.experiment.strip():
        raise UsageError("--experiment: empty name")
    uri = args.mlflow_uri or default_tracking_uri()
    out = Path(args.out) if args.out else Path("table_out") / args.experiment
    ensure_writable_dir(out, "--out")  # before reading the store: a bad --out fails at once
    kind = sweep_kind(uri, args.experiment)
    options = TableOptions(metric=args.metric, at=args.at, by=args.by, format=args.format, log=not args.no_log)
    table, files = build_view(kind, uri, args.experiment, out, options)
    print(table.render(args.format), end="")
    print(f"\nwrote {', '.join(str(p) for p in files.values())}")
    for line in experiment_review_lines(uri, args.experiment, grouped=VIEWS[kind].grouped):
        print(line)
    return 0


if __name__ == "__main__":
    run_cli(main)
