"""The table as data: cells, rows, and the `Table` with its renderings (markdown, CSV,
LaTeX). How a metric reads (unit, direction, baseline) is its spec in `pix3d.metrics.METRICS`,
the registry the evaluation computes from. No MLflow, no files:
`analysis.summary` fills a Table from records, `analysis.table` writes and logs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pix3d.constants import subset_label
from pix3d.metrics import metric_spec

ORACLE_MARK = "†"
ORACLE_NOTE = (f"{ORACLE_MARK} trained on oracle inputs (normals / boundaries rendered from the CAD model at "
               "the annotated pose, which a method working from photos does not have): not comparable "
               "with the published numbers")


@dataclass
class Cell:
    """One table cell: a metric over seeds, in %."""

    values: list[float]
    published: float | None = None
    oracle: bool = False  # some run of the cell trained on oracle inputs (marked †)
    # Beside the published value: "ep 24" (not from the log's last epoch), "‡" (a footnote
    # says what is odd about it), or both.
    published_mark: str = ""

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
        if self.oracle and self.values:
            body += f" {ORACLE_MARK}"
        if published and self.published is not None:
            body += f" · paper {self.published:.1f}" + (f" ({self.published_mark})" if self.published_mark else "")
        return body


@dataclass
class Row:
    label: str
    model: str
    seed_quirks: bool | str | None  # True / False: all four / none; a str: the quirks on alone
    lr: float | None
    cells: dict[str, Cell]
    modalities: str | None = None  # set in per-category tables (one row per model x subset)
    # Other keys a grid varied, where this model ran at several of their values (label `key=value`).
    axes: dict[str, str] = field(default_factory=dict)


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
        at = "at the published values' epochs" if self.at == "published" else f"{self.at} epoch"
        return (f"{self.metric} ({at}{by}), mean over seeds in {spec.describe()}: "
                f"experiment `{self.experiment}`")

    def to_markdown(self) -> str:
        labels = [subset_label(c) for c in self.columns]
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
        axis_keys = list(dict.fromkeys(key for row in self.rows for key in row.axes))
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
                    **{key: row.axes.get(key, "") if row else "" for key in axis_keys},
                    **placement, "column": subset_label(column),
                    "mean_pct": round(cell.mean, 4) if cell.n else "",
                    "std_pct": round(cell.std, 4) if cell.n > 1 else "",
                    "n": cell.n,
                    "published_pct": "" if cell.published is None else cell.published,
                    "oracle": cell.oracle,
                    "values_pct": " ".join(f"{v:.4f}" for v in cell.values),
                })
        return pd.DataFrame(out)

    def to_csv(self) -> str:
        return self.to_frame().to_csv(index=False)

    def to_latex(self) -> str:
        def tex(cell: Cell, published=True) -> str:
            return (cell.text(published=published).replace("±", r"$\pm$").replace("·", r"\,/")
                    .replace(ORACLE_MARK, r"$^\dagger$"))
        labels = [subset_label(c) for c in self.columns]
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

