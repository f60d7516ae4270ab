"""The pictures of a model-based search: optimisation history, parallel coordinates, importances.

Plain data in (a frame of trials with `number`, `value`, `epochs`, `stopped_early` and one
column per searched parameter; `ParamAxis` per parameter), one PNG out, written atomically
(pix3d.fileio.save_figure). Drawn with matplotlib directly, not optuna's (experimental) plotting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from analysis.plots import plt  # the Agg backend is chosen there
from pix3d.fileio import save_figure


@dataclass(frozen=True)
class ParamAxis:
    """One searched parameter: its name, and how to place its values on an axis."""

    name: str
    log: bool = False
    choices: tuple = ()  # a categorical parameter's choices, in order

    def position(self, values: Sequence) -> np.ndarray:
        """Values -> [0, 1] along the axis (choices evenly spaced, numbers by their range)."""
        if self.choices:
            index = {str(c): i for i, c in enumerate(self.choices)}
            span = max(len(self.choices) - 1, 1)
            return np.array([index.get(str(v), np.nan) / span for v in values], float)
        numbers = np.asarray(values, float)
        numbers = np.log10(numbers) if self.log else numbers
        low, high = np.nanmin(numbers), np.nanmax(numbers)
        return (numbers - low) / (high - low) if high > low else np.full(len(numbers), 0.5)

    def ticks(self, values: Sequence) -> list[tuple[float, str]]:
        """(position, label) for the axis: every choice, or the lowest and highest value."""
        if self.choices:
            span = max(len(self.choices) - 1, 1)
            return [(i / span, str(c)) for i, c in enumerate(self.choices)]
        numbers = np.asarray(values, float)
        low, high = np.nanmin(numbers), np.nanmax(numbers)
        return [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")] if high > low else [(0.5, f"{low:.3g}")]


def plot_history(trials: pd.DataFrame, path: Path, *, maximize: bool, title: str, ylabel: str) -> Path:
    """Each finished trial's value in the order TPE proposed it, and the best so far (a step
    line). Trials stopped early by ASHA are hollow: their value is from an earlier epoch."""
    done = trials.dropna(subset=["value"]).sort_values("number")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    full, early = done[~done["stopped_early"]], done[done["stopped_early"]]
    ax.scatter(full["number"], full["value"], color="tab:blue", zorder=3, label="trial (all epochs)")
    if len(early):
        ax.scatter(early["number"], early["value"], facecolors="none", edgecolors="tab:blue", zorder=3,
                   label="trial stopped early by ASHA")
    best = done["value"].cummax() if maximize else done["value"].cummin()
    ax.step(done["number"], best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial (in the order proposed)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path, close=True)


def plot_parallel(trials: pd.DataFrame, axes: Sequence[ParamAxis], path: Path, *, title: str,
                  value_label: str) -> Path:
    """One line per finished trial across the searched parameters and the value, coloured by
    the value (brighter is higher)."""
    done = trials.dropna(subset=["value"]).sort_values("value")
    columns = [axis.position(done[axis.name].tolist()) for axis in axes]
    value_axis = ParamAxis(value_label)
    columns.append(value_axis.position(done["value"].tolist()))
    grid = np.vstack(columns).T if len(done) else np.zeros((0, len(columns)))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.8 * len(columns) + 1.5), 4.4))
    cmap = plt.get_cmap("viridis")
    values = done["value"].to_numpy(float)
    low, high = (values.min(), values.max()) if len(values) else (0.0, 1.0)
    for row, value in zip(grid, values):
        shade = (value - low) / (high - low) if high > low else 0.5
        ax.plot(range(len(columns)), row, color=cmap(shade), alpha=0.85, linewidth=1.6)
    for i, (axis, series) in enumerate(zip([*axes, value_axis], [*(done[a.name] for a in axes), done["value"]])):
        ax.axvline(i, color="gray", linewidth=0.8)
        for position, label in axis.ticks(series.tolist()) if len(series) else []:
            ax.annotate(label, (i, position), xytext=(4, 0), textcoords="offset points", fontsize=7,
                        va="center")
    ax.set_xticks(range(len(columns)), [a.name + (" (log)" if a.log else "") for a in axes] + [value_label],
                  fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.set_title(title, fontsize=10)
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(low, high))
    fig.colorbar(mappable, ax=ax, label=value_label, fraction=0.04)
    return save_figure(fig, path, close=True)


def plot_importances(importances: Mapping[str, float], path: Path, *, title: str) -> Path:
    """Horizontal bars: each parameter's share of the value's variance (fANOVA), largest on top."""
    names = sorted(importances, key=importances.get)
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(names) + 1.4))
    ax.barh(names, [importances[n] for n in names], color="tab:green")
    for i, name in enumerate(names):
        ax.annotate(f"{importances[name]:.2f}", (importances[name], i), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_xlim(0, max([*importances.values(), 0.0]) * 1.15 + 1e-9)
    ax.set_xlabel("importance (share of the value's variance)")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path, close=True)
