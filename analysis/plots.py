"""The pictures a researcher looks at: azimuth confusion, learning curves, the table, lr view.

Every function takes plain data (lists, dicts, a pandas frame), writes one PNG atomically
(pix3d.fileio.save_figure: a crashed sweep never leaves half a picture) and returns its
path. matplotlib runs on the Agg backend: sweeps run on headless machines.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

from pix3d.constants import N_BINS, subset_label  # noqa: E402
from pix3d.fileio import save_figure  # noqa: E402


def _save(fig, path: Path) -> Path:
    """Write the figure atomically (fileio.save_figure) and close it."""
    return save_figure(fig, path, close=True)


def azimuth_bin_labels(n_bins: int = N_BINS) -> list[str]:
    """'0-45°', '45-90°', ... : the seed scheme's equal azimuth bins, readable on an axis."""
    width = 360 / n_bins
    return [f"{i * width:g}-{(i + 1) * width:g}°" for i in range(n_bins)]


def plot_confusion(confusion: Sequence[Sequence[int]], path: Path, *, title: str = "",
                   bin_labels: Sequence[str] | None = None) -> Path:
    """Azimuth confusion matrix (rows = true bin, columns = predicted), counts in the cells.

    Row-normalised colours so that rare bins are as readable as frequent ones; the counts
    written in each cell keep the absolute numbers.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    n = counts.shape[0]
    labels = list(bin_labels) if bin_labels is not None else azimuth_bin_labels(n)
    row_sums = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, row_sums, out=np.zeros(counts.shape, float), where=row_sums > 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.55 else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted azimuth bin")
    ax.set_ylabel("true azimuth bin")
    total = int(counts.sum())
    accuracy = float(np.trace(counts)) / total if total else float("nan")
    ax.set_title(f"{title}\nazimuth accuracy {100 * accuracy:.1f}% (n={total})".strip(),
                 fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true bin")
    return _save(fig, path)


# Curves drawn when present; accuracies are fractions in the metrics, shown in %.
_LOSS_KEYS = ("train_loss", "val_loss")
_ACC_KEYS = ("val_azimuth_acc", "val_elevation_acc", "val_inplane_acc", "val_azimuth_acc_within1")


def plot_learning_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: Path, *,
                         title: str = "", baseline: float | None = None) -> Path:
    """Losses (left) and validation accuracies (right) against epoch.

    `history` maps metric name -> [(epoch, value), ...]; `baseline` is the majority-class
    azimuth accuracy (fraction), drawn dashed so that 'learned nothing' is visible at once.
    """
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in _LOSS_KEYS:
        points = sorted(history.get(key, ()))
        if points:
            ax_loss.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                         markersize=3, label=key)
    for key in _ACC_KEYS:
        points = sorted(history.get(key, ()))
        if points:
            ax_acc.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o",
                        markersize=3, label=key)
    if baseline is not None and math.isfinite(baseline):
        ax_acc.axhline(100 * baseline, color="grey", linestyle="--", linewidth=1,
                       label="majority azimuth")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 102)
    ax_acc.set_title("validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_table_bars(rows: Sequence[Mapping], columns: Sequence[str], path: Path, *,
                    baseline: Mapping[str, float] | None = None, title: str = "",
                    ylabel: str = "azimuth accuracy (%)") -> Path:
    """Grouped bars: one group per modality subset, one bar per table row.

    rows: [{"label", "means": {col: %}, "stds": {col: %}, "published": {col: % | None}}].
    Error bars are the std over seeds; the published value is a black diamond on its bar;
    the majority-class baseline is a dashed segment across each group.
    """
    n_rows = max(len(rows), 1)
    width = 0.8 / n_rows
    x = np.arange(len(columns))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.9 * len(columns) + 1.0), 4.6))
    published_drawn = False
    for r, row in enumerate(rows):
        offsets = x - 0.4 + width * (r + 0.5)
        means = [row["means"].get(c, np.nan) for c in columns]
        stds = [row["stds"].get(c, np.nan) for c in columns]
        # One seed has no spread: no error bar rather than a misleading zero-width one.
        stds = [np.nan if s is None or not np.isfinite(s) else s for s in stds]
        ax.bar(offsets, means, width * 0.92, label=row["label"])
        has_spread = [i for i, s in enumerate(stds) if np.isfinite(s)]
        if has_spread:
            ax.errorbar([offsets[i] for i in has_spread], [means[i] for i in has_spread],
                        yerr=[stds[i] for i in has_spread], fmt="none", ecolor="black",
                        capsize=3, linewidth=1, zorder=3)
        published = [row.get("published", {}).get(c) for c in columns]
        px = [o for o, p in zip(offsets, published) if p is not None]
        py = [p for p in published if p is not None]
        if px:
            ax.scatter(px, py, marker="D", color="black", s=22, zorder=5,
                       label=None if published_drawn else "published")
            published_drawn = True
    if baseline:
        drawn = False
        for i, c in enumerate(columns):
            value = baseline.get(c)
            if value is not None and np.isfinite(value):
                ax.hlines(value, i - 0.45, i + 0.45, colors="dimgray", linestyles="--",
                          zorder=4, label=None if drawn else "majority class")
                drawn = True
    for i, c in enumerate(columns):
        if all(not np.isfinite(row["means"].get(c, np.nan)) for row in rows):
            ax.text(i, 2, "no runs", ha="center", va="bottom", fontsize=8, color="dimgray")
    ax.set_xticks(x, [subset_label(c).replace("+", "+\n") for c in columns],
                  fontsize=8)
    ax.set_xlim(-0.6, len(columns) - 0.4)  # keep empty trailing columns in view
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_lr_view(points: Sequence[Mapping], path: Path, *, title: str = "",
                 baselines: Mapping[str, float] | None = None) -> Path:
    """Final azimuth accuracy against learning rate, one panel per model, one line per subset.

    points: [{"model", "modalities", "lr", "mean", "std", "n"}] with mean/std in %.
    The published learning rates (by default every registered model's, e.g. combined_net
    1e-5, separate_net 1e-3) are marked as vertical lines in every panel, so a model's own
    baseline and the other model's are both visible.
    """
    if baselines is None:
        from pix3d import models as model_registry

        baselines = {name: model_registry.model_spec(name).published_lr for name in model_registry.list_models()
                     if model_registry.model_spec(name).published_lr is not None}
    models = sorted({p["model"] for p in points})
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(5.2 * max(len(models), 1), 4.0),
                             squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        mine = [p for p in points if p["model"] == model]
        subsets = sorted({p["modalities"] for p in mine}, key=lambda s: (s.count("+"), s))
        for subset in subsets:
            line = sorted((p for p in mine if p["modalities"] == subset), key=lambda p: p["lr"])
            lrs = [p["lr"] for p in line]
            means = [p["mean"] for p in line]
            stds = [0.0 if not np.isfinite(p["std"]) else p["std"] for p in line]  # n=1: none
            ax.errorbar(lrs, means, yerr=stds, marker="o", markersize=4, capsize=3,
                        label=subset_label(subset))
        for name, lr in baselines.items():
            ax.axvline(lr, color="grey", linestyle=":", linewidth=1)
            # Labelled above the frame so the label never sits on a data point.
            ax.text(lr, 1.01, f"{name}\n{lr:g}", transform=ax.get_xaxis_transform(),
                    va="bottom", ha="center", fontsize=7, color="dimgray")
        ax.set_xscale("log")
        # Half a decade of room around the runs and the baselines: no line on the frame.
        span = [p["lr"] for p in mine] + list(baselines.values())
        ax.set_xlim(min(span) / 3, max(span) * 3)
        ax.set_xlabel("learning rate")
        ax.set_title(model, fontsize=10, pad=26)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel("final azimuth accuracy (%)")
    if title:
        fig.suptitle(title, fontsize=10, y=1.04)  # above the baseline labels
    return _save(fig, path)
