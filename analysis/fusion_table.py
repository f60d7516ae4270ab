"""The relative-pose table (fusion grids), rebuilt from what MLflow logged.

    python -m analysis.table --experiment fusion      # dispatches here for fusion experiments

One row per fusion x weights x backbone (fine-tuned or frozen) x loss (x lr when several were
run). The headline is the held-out TEST split (models fixed by the pair set, never trained on,
never used for early stopping or sizing; `relpose.pairs.PairData.test_models`): rotation error
in degrees, mean ± std over seeds, beside the no-motion baseline (predicting the identity) on
the same pairs and their ratio (below 1 = the network predicts some of the motion, ± its
spread over seeds), then translation error, the photometric L1 beside that of no motion and of
the true motion (its floor), and the share of object pixels the prediction sends out of view.
`--at best` takes each run at the epoch of its best VALIDATION rotation error (early stopping
on validation) and reports the test numbers of that epoch. Runs logged before the test split
existed are reported on their validation split, and the table says so.
Files: table.md, table.csv and table.png (each configuration's rotation error epoch by epoch
against the no-motion line, and the final ratios), written atomically and logged to the
sweep's parent run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.mlflow_store import log_table_files
from analysis.records import trial_runs
from pix3d.errors import Pix3DError, UsageError
from pix3d.fileio import atomic_path

METRIC = "val_rotation_err_deg"  # what early stopping (--at best) looks at: validation only
# The logged metric behind each column, per split (relpose.train.evaluation names them).
SPLIT_METRICS = {
    "test": {"rotation": "test_rotation_err_deg", "no_motion": "test_identity_rotation_err_deg",
             "translation": "test_translation_err_m", "no_motion_translation": "test_identity_translation_err_m",
             "photometric": "test_photometric_l1", "no_motion_photometric": "test_identity_photometric_l1",
             "true_photometric": "test_true_motion_photometric_l1", "outside": "test_outside_fraction"},
    "validation": {"rotation": "val_rotation_err_deg", "no_motion": "identity_rotation_err_deg",
                   "translation": "val_translation_err_m", "no_motion_translation": "identity_translation_err_m",
                   "photometric": "val_photometric_l1", "no_motion_photometric": "identity_photometric_l1",
                   "true_photometric": "true_motion_photometric_l1", "outside": "val_outside_fraction"},
}
KEYS = ("fusion", "weights", "backbone", "frozen", "loss")
# Runs logged before these axes existed trained a fine-tuned ResNet-18.
KEY_SOURCES = {"fusion": ("fusion", None), "weights": ("weights", None), "backbone": ("backbone", "resnet18"),
               "frozen": ("freeze_backbone", "False"), "loss": ("loss", None)}


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _pm(values, digits: int) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if not math.isnan(std) else "")


def _label(key: tuple) -> tuple[str, ...]:
    fusion, weights, backbone, frozen, loss = key[:5]
    tuned = "frozen" if str(frozen) == "True" else "fine-tuned"
    return fusion, weights, f"{backbone} {tuned}", loss


@dataclass
class FusionTable:
    experiment: str
    at: str
    records: pd.DataFrame  # one row per finished run: the columns of SPLIT_METRICS' keys
    notes: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    split: str = "test"

    def groups(self) -> list[tuple[tuple, pd.DataFrame]]:
        by = list(KEYS) + (["lr"] if self.records["lr"].nunique() > 1 else [])
        return [(key if isinstance(key, tuple) else (key,), g) for key, g in self.records.groupby(by, sort=True)]

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for key, g in self.groups():
            rot, rot_std = _mean_std(g["rotation"])
            base, _ = _mean_std(g["no_motion"])
            ratios = g["rotation"] / g["no_motion"]
            row = dict(zip(KEYS, key[:len(KEYS)]))
            row.update(split=self.split, lr=float(g["lr"].iloc[0]) if len(key) == len(KEYS) else float(key[-1]),
                       rotation_err_deg=round(rot, 4), rotation_err_std=round(rot_std, 4) if g.shape[0] > 1 else "",
                       no_motion_rotation_err_deg=round(base, 4), ratio=round(rot / base, 4) if base else "",
                       ratio_std=round(float(ratios.std(ddof=1)), 4) if g.shape[0] > 1 else "",
                       n=len(g), values=" ".join(f"{v:.4f}" for v in g["rotation"]))
            for column in ("translation", "no_motion_translation", "photometric", "no_motion_photometric",
                           "true_photometric", "outside", "val_rotation"):
                row[column] = round(float(g[column].mean()), 5)
            rows.append(row)
        return pd.DataFrame(rows)

    def to_markdown(self) -> str:
        several_lrs = self.records["lr"].nunique() > 1
        lines = [f"### held-out {self.split} rotation error (deg, {self.at} epoch), mean ± std over seeds: "
                 f"experiment `{self.experiment}`", "",
                 "| fusion | weights | backbone | loss |" + (" lr |" if several_lrs else "")
                 + " rotation (deg) | no motion (deg) | ratio | translation (m) | photometric L1 "
                 "(no motion; true motion) | out of view | val rotation (deg) | n |",
                 "|---|---|---|---|" + ("---|" if several_lrs else "") + "---|---|---|---|---|---|---|---|"]
        for key, g in self.groups():
            base = float(g["no_motion"].mean())
            ratio = float(g["rotation"].mean()) / base if base else math.nan
            spread = f" ± {float((g['rotation'] / g['no_motion']).std(ddof=1)):.2f}" if len(g) > 1 else ""
            lines.append("| " + " | ".join(_label(key)) + " |" + (f" {key[-1]:g} |" if several_lrs else "")
                         + f" {_pm(g['rotation'], 2)} | {base:.2f} | {ratio:.2f}{spread} | {_pm(g['translation'], 3)} |"
                         f" {g['photometric'].mean():.4f} ({g['no_motion_photometric'].mean():.4f};"
                         f" {g['true_photometric'].mean():.4f}) | {g['outside'].mean():.1%} |"
                         f" {g['val_rotation'].mean():.2f} | {len(g)} |")
        lines += ["", f"- ratio = rotation error / no-motion error on the same held-out {self.split} pairs, ± its "
                  "std over seeds (< 1: the network predicts part of the motion; 1: it learned nothing)",
                  "- photometric L1 over all object pixels, those the motion sends out of view (or behind "
                  "the camera) at the penalty 1.0; out of view = their share under the prediction"]
        if self.split == "test":
            lines.append("- test: models fixed by the pair set, never trained on nor used for early stopping or "
                         "sizing; validation (last column) is what --at best chooses the epoch on")
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


def _history(client, run_id: str, metric: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, metric)}


def build_table(tracking_uri: str, experiment: str, *, at: str = "last", **_ignored) -> FusionTable:
    """The fusion table of `experiment` from its finished MLflow trial runs: the test split
    when every run has one, else validation (older runs)."""
    client, runs = trial_runs(tracking_uri, experiment)
    finished = [r for r in runs if r.info.status == "FINISHED" and METRIC in r.data.metrics]
    notes = []
    if len(finished) < len(runs):
        notes.append(f"left out: {len(runs) - len(finished)} trial run(s) not finished or without {METRIC}")
    if not finished:
        raise Pix3DError(f"experiment {experiment!r} has no finished trial runs with {METRIC} ({len(runs)} trial runs in all)")
    split = "test" if all(SPLIT_METRICS["test"]["rotation"] in r.data.metrics for r in finished) else "validation"
    if split == "validation":
        notes.append("no held-out test split in (some of) these runs (logged before it existed): validation "
                     "numbers, on the pairs that also chose the budget")
    names = SPLIT_METRICS[split]
    records = []
    for run in finished:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        # One read of the validation history: the epoch --at best picks (early stopping on validation).
        validation = _history(client, run.info.run_id, METRIC)
        shown = validation if split == "validation" else _history(client, run.info.run_id, names["rotation"])
        epoch = max(validation)
        if at == "best":
            finite = {step: v for step, v in validation.items() if math.isfinite(v)}
            epoch = min(finite, key=finite.get) if finite else epoch
        record = {column: tags.get(tag, params.get(tag, default or "?"))
                  for column, (tag, default) in KEY_SOURCES.items()}
        record.update(lr=float(tags.get("lr", params.get("lr", "nan"))), seed=tags.get("seed", params.get("seed", "?")),
                      end_time=run.info.end_time or 0, parent_run_id=tags.get("mlflow.parentRunId"), epoch=epoch)
        for column, metric in names.items():
            if at == "best" and epoch != max(validation):
                value = _history(client, run.info.run_id, metric).get(epoch, math.nan)
            else:
                value = metrics.get(metric, math.nan)
            record[column] = value
        record["val_rotation"] = validation.get(epoch, math.nan)
        record["curve"] = sorted(shown.items())
        records.append(record)
    frame = pd.DataFrame(records)
    parents = frame.sort_values("end_time")["parent_run_id"].dropna()
    return FusionTable(experiment, at, frame, notes, parents.iloc[-1] if len(parents) else None, tracking_uri, split)


def plot_table(table: FusionTable, path: str | Path) -> Path:
    """Left: each run's held-out rotation error by epoch, one colour per fusion x weights x loss
    (x lr), the no-motion error dashed; right: the final ratio to no motion per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pix3d.fileio import save_figure

    groups = table.groups()
    several_lrs = table.records["lr"].nunique() > 1
    labels = [" / ".join(_label(key)) + (f" lr={key[-1]:g}" if several_lrs else "") for key, _ in groups]
    colours = plt.get_cmap("tab10")
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    for i, ((_, g), label) in enumerate(zip(groups, labels)):
        for j, curve in enumerate(g["curve"]):
            if curve:
                steps, values = zip(*curve)
                curves.plot(steps, values, color=colours(i % 10), marker="o", ms=3, lw=1.2,
                            label=label if j == 0 else None)
    curves.axhline(float(table.records["no_motion"].mean()), color="grey", ls="--", lw=1.2, label="no motion")
    curves.set_xlabel("epoch")
    curves.set_ylabel(f"held-out {table.split} rotation error (deg)")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    ratios = [float(g["rotation"].mean()) / float(g["no_motion"].mean()) for _, g in groups]
    spreads = [float((g["rotation"] / g["no_motion"]).std(ddof=1)) if len(g) > 1 else 0.0 for _, g in groups]
    y = np.arange(len(groups))
    bars.barh(y, ratios, xerr=spreads, color=[colours(i % 10) for i in range(len(groups))], alpha=0.85)
    bars.axvline(1.0, color="grey", ls="--", lw=1.2)
    bars.set_yticks(y, labels, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel("rotation error / no motion (< 1: predicts part of the motion)")
    for yi, ratio in zip(y, ratios):
        bars.text(ratio, yi, f" {ratio:.2f}", va="center", fontsize=8)
    bars.set_xlim(0, max(1.15, max(ratios) * 1.15))
    fig.suptitle(f"relative pose, experiment {table.experiment!r}, {table.split} split ({table.at} epoch; n seeds per bar: "
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
        log_table_files(table, written.values(), out_dir)
    return written
