"""The relative-pose table (fusion grids), rebuilt from what MLflow logged.

    python -m analysis.table --experiment fusion      # dispatches here for fusion experiments

One row per fusion x weights x loss (x lr when several were run): the held-out rotation
error in degrees, mean ± std over seeds, beside the no-motion baseline (predicting the
identity) on the same validation pairs and their ratio (below 1 = the network predicts
some of the motion), then translation error and the photometric L1 beside that of no motion.
Files: table.md, table.csv and table.png (each configuration's held-out rotation error epoch
by epoch against the no-motion line, and the final ratios), written atomically and logged to
the sweep's parent run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.records import trial_runs
from pix3d.errors import Pix3DError, UsageError
from pix3d.fileio import atomic_path

METRIC = "val_rotation_err_deg"
BASELINE = "identity_rotation_err_deg"
EXTRA_METRICS = ("val_translation_err_m", "identity_translation_err_m", "val_photometric_l1",
                 "identity_photometric_l1", "true_motion_photometric_l1")
KEYS = ("fusion", "weights", "loss")


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _pm(values, digits: int) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if not math.isnan(std) else "")


@dataclass
class FusionTable:
    experiment: str
    at: str
    records: pd.DataFrame  # one row per finished run
    notes: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    tracking_uri: str | None = None

    def groups(self) -> list[tuple[tuple, pd.DataFrame]]:
        by = list(KEYS) + (["lr"] if self.records["lr"].nunique() > 1 else [])
        return [(key if isinstance(key, tuple) else (key,), g) for key, g in self.records.groupby(by, sort=True)]

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for key, g in self.groups():
            rot, rot_std = _mean_std(g[METRIC])
            base, _ = _mean_std(g[BASELINE])
            row = dict(zip(KEYS, key[:3]))
            row.update(lr=float(g["lr"].iloc[0]) if len(key) == 3 else float(key[3]),
                       rotation_err_deg=round(rot, 4), rotation_err_std=round(rot_std, 4) if g.shape[0] > 1 else "",
                       no_motion_rotation_err_deg=round(base, 4), ratio=round(rot / base, 4) if base else "",
                       n=len(g), values=" ".join(f"{v:.4f}" for v in g[METRIC]))
            for metric in EXTRA_METRICS:
                row[metric] = round(float(g[metric].mean()), 5)
            rows.append(row)
        return pd.DataFrame(rows)

    def to_markdown(self) -> str:
        several_lrs = self.records["lr"].nunique() > 1
        lines = [f"### held-out rotation error (deg, {self.at} epoch), mean ± std over seeds: experiment "
                 f"`{self.experiment}`", "",
                 "| fusion | weights | loss |" + (" lr |" if several_lrs else "")
                 + " rotation (deg) | no motion (deg) | ratio | translation (m) | photometric L1 (no motion) | n |",
                 "|---|---|---|" + ("---|" if several_lrs else "") + "---|---|---|---|---|---|"]
        for key, g in self.groups():
            base = float(g[BASELINE].mean())
            ratio = float(g[METRIC].mean()) / base if base else math.nan
            lines.append("| " + " | ".join(key[:3]) + " |" + (f" {key[3]:g} |" if several_lrs else "")
                         + f" {_pm(g[METRIC], 2)} | {base:.2f} | {ratio:.2f} | {_pm(g['val_translation_err_m'], 3)} |"
                         f" {g['val_photometric_l1'].mean():.4f} ({g['identity_photometric_l1'].mean():.4f}) | {len(g)} |")
        lines += ["", "- ratio = rotation error / no-motion error on the same held-out pairs (< 1: the network "
                  "predicts part of the motion; 1: it learned nothing)"]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        return self.to_frame().to_csv(index=False)

    def render(self, fmt: str) -> str:
        if fmt == "csv":
            return self.to_csv()
        if fmt != "md":
            raise UsageError(f"--format {fmt}: fusion tables are written as md or csv")
        return self.to_markdown()


def is_fusion_experiment(tracking_uri: str, experiment: str) -> bool:
    """True when the experiment's trial runs are relative-pose ones (they carry a fusion tag)."""
    try:
        _, runs = trial_runs(tracking_uri, experiment)
    except Pix3DError:
        return False  # the pose table's loader says what is wrong
    return bool(runs) and "fusion" in runs[0].data.tags


def build_table(tracking_uri: str, experiment: str, *, at: str = "last", **_ignored) -> FusionTable:
    """The fusion table of `experiment` from its finished MLflow trial runs."""
    client, runs = trial_runs(tracking_uri, experiment)
    finished = [r for r in runs if r.info.status == "FINISHED" and METRIC in r.data.metrics]
    notes = []
    if len(finished) < len(runs):
        notes.append(f"left out: {len(runs) - len(finished)} trial run(s) not finished or without {METRIC}")
    if not finished:
        raise Pix3DError(f"experiment {experiment!r} has no finished trial runs with {METRIC} ({len(runs)} trial runs in all)")
    records = []
    for run in finished:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        # One read of the metric's history per run: the curve for the plot, and the best epoch.
        history = sorted(client.get_metric_history(run.info.run_id, METRIC), key=lambda m: m.step)
        value = metrics[METRIC]
        if at == "best":
            values = [m.value for m in history if math.isfinite(m.value)]
            value = min(values) if values else math.nan
        record = {k: tags.get(k, params.get(k, "?")) for k in KEYS}
        record.update(lr=float(tags.get("lr", params.get("lr", "nan"))), seed=tags.get("seed", params.get("seed", "?")),
                      end_time=run.info.end_time or 0, parent_run_id=tags.get("mlflow.parentRunId"))
        record[METRIC] = value
        record["curve"] = [(m.step, m.value) for m in history]
        record[BASELINE] = metrics.get(BASELINE, math.nan)
        for metric in EXTRA_METRICS:
            record[metric] = metrics.get(metric, math.nan)
        records.append(record)
    frame = pd.DataFrame(records)
    parents = frame.sort_values("end_time")["parent_run_id"].dropna()
    return FusionTable(experiment, at, frame, notes, parents.iloc[-1] if len(parents) else None, tracking_uri)


def plot_table(table: FusionTable, path: str | Path) -> Path:
    """Left: each run's held-out rotation error by epoch, one colour per fusion x weights x loss
    (x lr), the no-motion error dashed; right: the final ratio to no motion per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pix3d.fileio import save_figure

    groups = table.groups()
    several_lrs = table.records["lr"].nunique() > 1
    labels = [" / ".join(key[:3]) + (f" lr={key[3]:g}" if several_lrs else "") for key, _ in groups]
    colours = plt.get_cmap("tab10")
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    for i, ((_, g), label) in enumerate(zip(groups, labels)):
        for j, curve in enumerate(g["curve"]):
            if curve:
                steps, values = zip(*curve)
                curves.plot(steps, values, color=colours(i % 10), marker="o", ms=3, lw=1.2,
                            label=label if j == 0 else None)
    curves.axhline(float(table.records[BASELINE].mean()), color="grey", ls="--", lw=1.2, label="no motion")
    curves.set_xlabel("epoch")
    curves.set_ylabel("held-out rotation error (deg)")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    ratios = [float(g[METRIC].mean()) / float(g[BASELINE].mean()) for _, g in groups]
    spreads = [float(g[METRIC].std(ddof=1)) / float(g[BASELINE].mean()) if len(g) > 1 else 0.0 for _, g in groups]
    y = np.arange(len(groups))
    bars.barh(y, ratios, xerr=spreads, color=[colours(i % 10) for i in range(len(groups))], alpha=0.85)
    bars.axvline(1.0, color="grey", ls="--", lw=1.2)
    bars.set_yticks(y, labels, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel("rotation error / no motion (< 1: predicts part of the motion)")
    for yi, ratio in zip(y, ratios):
        bars.text(ratio, yi, f" {ratio:.2f}", va="center", fontsize=8)
    bars.set_xlim(0, max(1.15, max(ratios) * 1.15))
    fig.suptitle(f"relative pose, experiment {table.experiment!r} ({table.at} epoch; n seeds per bar: "
                 f"{', '.join(str(len(g)) for _, g in groups)})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, close=True)


def write_table(table: FusionTable, out_dir: str | Path, *, formats: Sequence[str] = (),
                log_to_mlflow: bool = True) -> dict[str, Path]:
    """table.md, table.csv and table.png (atomic writes) in `out_dir`, logged to the sweep's parent run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for kind, name, text in (("md", "table.md", table.to_markdown()), ("csv", "table.csv", table.to_csv())):
        with atomic_path(out_dir / name) as tmp:
            Path(tmp).write_text(text)
        written[kind] = out_dir / name
    written["png"] = plot_table(table, out_dir / "table.png")
    if log_to_mlflow:
        from analysis.table import log_table_files

        log_table_files(table, written.values(), out_dir)
    return written
