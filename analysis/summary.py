"""Pure table arithmetic: a frame of one value per run in, a `Table` of mean ± std over
seeds out (`summarise` by modality subset, `summarise_by_category` per category). Rows come
in the model registry's order; published values come from each model's registration.
A run repeats another when all its identity keys match (analysis.records: the usual ones and
the `axis.<key>` columns of what its grid varied); each varied key is a row key too.
Pure, so the same arithmetic can be checked against Tune's own results.
"""

from __future__ import annotations

import pandas as pd

from analysis.cells import ORACLE_NOTE, Cell, Row, Table
from analysis.records import AXIS_PREFIX, DEFAULT_SPLIT, IDENTITY_COLUMNS, axis_columns
from pix3d import models as model_registry
from pix3d.constants import ABLATION_SUBSETS, modalities_key, subset_label
from pix3d.errors import RENAMED
from pix3d.metrics import metric_spec

PAPER_COLUMNS: tuple[str, ...] = tuple("+".join(s) for s in ABLATION_SUBSETS)


def _model_rank(model: str) -> tuple[int, str]:
    """Rows in the registry's order (its registration order); unregistered models last."""
    order = model_registry.list_models()
    return (order.index(model) if model in order else len(order), model)


def _quirks_rank(quirks) -> tuple[int, str]:
    """Quirks off first, then each switched on alone (and other subsets), then all four."""
    if isinstance(quirks, str):
        return (1, quirks)
    return (2 if quirks else 0, "")


def quirks_label(quirks) -> str:
    """How a row says its quirks: on (all four), off, or the ones switched on alone."""
    if isinstance(quirks, str):
        return f"quirks {quirks}"
    return "quirks on" if quirks else "quirks off"


def _published_epochs(model: str, metric: str) -> list[int]:
    return [e for c in PAPER_COLUMNS if isinstance(e := model_registry.published_epoch(model, metric, c), int)]


def _published_mark(model: str, metric: str, column: str) -> str:
    """"ep N" for a published value from another epoch than the model's final one, "‡" for
    one with a note, both where both hold."""
    epoch = model_registry.published_epoch(model, metric, column)
    final = max(_published_epochs(model, metric), default=None)
    parts = []
    if isinstance(epoch, int) and final is not None and epoch != final:
        parts.append(f"ep {epoch}")
    if epoch is None or (model_registry.published_note(model, metric, column) and not parts):
        parts.append(PUBLISHED_MARK)
    return ", ".join(parts)


PUBLISHED_MARK = "‡"


def published_notes(rows, metric: str, at: str) -> list[str]:
    """The footnotes on the published values shown: which comparison is printed, where each
    published value came from, and what is odd about some of them."""
    shown = [(row.model, c, cell) for row in rows for c, cell in row.cells.items() if cell.published is not None]
    if not shown:
        return []
    finals = sorted({max(_published_epochs(m, metric), default=0) for m, _, _ in shown} - {0})
    final = "/".join(map(str, finals)) or "the last"
    comparison = {
        "last": f"ours at each run's last epoch; the published values are from epoch {final} of the notebook's "
                "log except those marked (ep N) or ‡; `--at published` compares at their epochs",
        "best": "ours at each run's best epoch; the published values are single epochs of the notebook's log "
                f"(epoch {final} except those marked (ep N) or ‡)",
        "published": "ours at the epoch each published value came from (marked (ep N) where it is not the last); "
                     "at the last epoch where it came from no epoch (‡) or the run ended before it",
    }[at]
    notes = [f"compared: {comparison}"]
    for model, column, cell in shown:
        note = model_registry.published_note(model, metric, column)
        if note:
            notes.append(f"{cell.published_mark or PUBLISHED_MARK} {model} {subset_label(column)} "
                         f"{cell.published:.2f}: {note}")
    return list(dict.fromkeys(notes))


# The published budget (pix3d.train.config.BUDGETS["paper"]): 224 px, 25 epochs, the whole training split.
PUBLISHED_BUDGET = {"image_size": 224, "epochs": 25, "max_train_images": None}


def budget_notes(records: pd.DataFrame) -> list[str]:
    """A note when runs were trained smaller than the published budget (a CPU budget)."""
    if "budget" not in records or records["budget"].isna().all():
        return []
    smaller = sorted({b for b in records["budget"].dropna() if b != "published"})
    if not smaller:
        return []
    return [f"trained at a smaller budget than the published one (224 px, 25 epochs, the whole training split): "
            f"{'; '.join(smaller)}: not comparable epoch for epoch with the published values"]


def _split_rank(split: str) -> tuple[int, str]:
    """The published split first, then the others by name."""
    return (0 if split == DEFAULT_SPLIT else 1, split)


def _axis_rank(value) -> tuple:
    """A varied key's values in order: numbers by value (8 before 16), then text."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return (1, 0.0, str(value))
    return (0, number, "") if number == number else (1, 0.0, str(value))


def _latest_only(records: pd.DataFrame, per: tuple[str, ...] = ()) -> tuple[pd.DataFrame, list[str]]:
    """Canonical modality keys and split names, and one record per identity (IDENTITY_COLUMNS,
    the axis columns, `per`): the same grid point and seed logged twice (two sweeps in one
    experiment) keeps the latest, so a re-run replaces rather than double-counts a seed.
    Returns the records and a note when some were left out."""
    key = [*IDENTITY_COLUMNS, *axis_columns(records), *per]
    records = records.copy()
    records["modalities"] = [modalities_key(m) for m in records["modalities"]]
    # Splits by today's names ("seed" is the published split's old name); none logged: the default.
    records["split"] = [RENAMED.get(v, v) for v in records["split"]] if "split" in records else DEFAULT_SPLIT
    records = records.sort_values("end_time", kind="stable")
    duplicated = records.duplicated(key, keep="last")
    if not duplicated.any():
        return records, []
    what = "/".join(["model", "subset", "lr", "seed",
                     *(c[len(AXIS_PREFIX):] for c in axis_columns(records)), *per])
    unit = "value(s)" if per else "run(s)"
    return records[~duplicated], [f"{int(duplicated.sum())} {unit} repeat a {what} of a later run and were "
                                  "left out (latest kept)"]


def _any_oracle(records: pd.DataFrame) -> bool:
    """Whether any of these runs trained on oracle inputs (frames from older code lack the column)."""
    return bool("oracle" in records and records["oracle"].fillna(False).astype(bool).any())


def _oracle_note(rows: list[Row], notes: list[str]) -> None:
    """The footnote of the † cells, when there are any."""
    if any(cell.oracle for row in rows for cell in row.cells.values()):
        notes.append(ORACLE_NOTE)


def _edges_note(records: pd.DataFrame, notes: list[str]) -> None:
    """Which edges the boundaries input showed, in the runs that trained on it: 3D edges (an
    oracle render, or the built-in set's) are another input than the published texture edges."""
    if "edges" not in records or records.empty:
        return
    uses = records[[("boundaries" in str(m).split("+")) for m in records["modalities"]]]
    if uses.empty:
        return
    if "run_id" in uses:
        uses = uses.drop_duplicates("run_id")  # by category: one record per run and category
    counts = uses["edges"].fillna("").replace("", "not recorded (older runs)").value_counts()
    notes.append("boundaries input: " + "; ".join(f"{label} in {n} run(s)" for label, n in counts.items())
                 + " (the published input was texture edges, visualpriors 'edge_texture')")


class _RowLabels:
    """Row labels: the model, plus quirks on/off when both were run, plus the lr when a
    model was run at several, plus the split when several were (a random split beside
    by_model shows how much leakage flatters the numbers), plus `key=value` of each other
    key a grid varied when a model was run at several of its values."""

    def __init__(self, records: pd.DataFrame):
        self.split_quirks = records["seed_quirks"].nunique() > 1
        self.lrs_per_model = records.groupby("model")["lr"].nunique()
        self.several_splits = records["split"].nunique() > 1
        self.axes_per_model = {c: records.groupby("model")[c].nunique(dropna=False) for c in axis_columns(records)}

    def row(self, model: str, quirks, lr, cells: dict[str, Cell], suffix: str = "", split: str = "",
            axes: dict[str, object] | None = None, **extra) -> Row:
        label = model
        if self.several_splits:
            label += f" [{split} split]"
        if self.split_quirks:
            label += f" ({quirks_label(quirks)})"
        several_lrs = self.lrs_per_model[model] > 1
        if several_lrs:
            label += f" lr={lr:g}"
        shown = {column[len(AXIS_PREFIX):]: str(value) for column, value in (axes or {}).items()
                 if self.axes_per_model[column][model] > 1}
        label += "".join(f" {key}={value}" for key, value in shown.items())
        return Row(label + suffix, model, (quirks if isinstance(quirks, str) else bool(quirks)) if self.split_quirks else None,
                   float(lr) if several_lrs else None, cells, axes=shown, **extra)


def summarise(records: pd.DataFrame, *, experiment: str, metric: str = "val_azimuth_acc",
              at: str = "last") -> Table:
    """One value per run (fractions) -> Table of mean ± std (n) in % per row and subset."""
    records, notes = _latest_only(records)
    labels = _RowLabels(records)
    axes = axis_columns(records)
    # The subsets these runs cover, in the paper's order, then any others: a grid over fewer
    # subsets (`lr`: two) gets its own columns, not the ablation's fifteen mostly empty ones.
    covered = set(records["modalities"])
    columns = [c for c in PAPER_COLUMNS if c in covered] + sorted(
        covered - set(PAPER_COLUMNS), key=lambda s: (s.count("+"), s))
    scale = metric_spec(metric).scale

    rows: list[Row] = []
    for (model, split, quirks, lr, *axis_values), group in sorted(
            records.groupby(["model", "split", "seed_quirks", "lr", *axes], sort=False, dropna=False),
            key=lambda item: (_model_rank(item[0][0]), _split_rank(item[0][1]), _quirks_rank(item[0][2]), item[0][3],
                              *map(_axis_rank, item[0][4:]))):
        cells = {}
        for column in columns:
            picked = group.loc[group["modalities"] == column]
            values = [scale * v for v in picked["value"]]
            # Published values are for the published (random, per-category) split only.
            published = model_registry.published_value(model, metric, column) if split == DEFAULT_SPLIT else None
            mark = _published_mark(model, metric, column) if published is not None else ""
            cells[column] = Cell(values, published, oracle=_any_oracle(picked), published_mark=mark)
        rows.append(labels.row(model, quirks, lr, cells, split=split, axes=dict(zip(axes, axis_values))))

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
    missing = [f"{row.label} / {subset_label(c)}" for row in rows
               for c in columns if not row.cells[c].n]
    if missing:
        notes.append("no finished runs for: " + ", ".join(missing))
    _oracle_note(rows, notes)
    _edges_note(records, notes)
    notes.extend(published_notes(rows, metric, at))
    notes.extend(budget_notes(records))
    return Table(experiment, metric, at, columns, rows, baseline, notes, records)


def summarise_by_category(records: pd.DataFrame, *, experiment: str,
                          metric: str = "val_azimuth_acc", at: str = "last") -> Table:
    """One value per run and category -> Table: rows model (x quirks x lr) x subset, columns
    the categories, cells mean ± std over seeds."""
    records, notes = _latest_only(records, per=("category",))
    labels = _RowLabels(records)
    axes = axis_columns(records)
    scale = metric_spec(metric).scale
    columns = sorted(set(records["category"]))
    subset_order = {s: i for i, s in enumerate(PAPER_COLUMNS)}
    rows: list[Row] = []
    groups = records.groupby(["model", "split", "seed_quirks", "lr", *axes, "modalities"], sort=False, dropna=False)
    for (model, split, quirks, lr, *axis_values, subset), group in sorted(
            groups, key=lambda item: (_model_rank(item[0][0]), _split_rank(item[0][1]), _quirks_rank(item[0][2]),
                                      item[0][3], *map(_axis_rank, item[0][4:-1]),
                                      subset_order.get(item[0][-1], len(subset_order)), item[0][-1])):
        cells = {c: Cell([scale * v for v in group.loc[group["category"] == c, "value"]],
                         oracle=_any_oracle(group.loc[group["category"] == c]))
                 for c in columns}
        rows.append(labels.row(model, quirks, lr, cells, f" · {subset_label(subset)}", split=split,
                               axes=dict(zip(axes, axis_values)), modalities=subset))
    empty = [f"{row.label} / {c}" for row in rows for c in columns if not row.cells[c].n]
    if empty:
        notes.append("no value for: " + ", ".join(empty) + " (no validation image of that category)")
    _oracle_note(rows, notes)
    _edges_note(records, notes)
    return Table(experiment, metric, at, columns, rows, {}, notes, records, by="category")
