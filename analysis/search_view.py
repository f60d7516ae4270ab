"""The view of a model-based search (TPE proposes, ASHA stops early), read from its Optuna study.

    python -m analysis.table --experiment optuna      # dispatches here for a search

A search is not an ablation: its table is the best configuration with its value, the top
trials, how much each searched parameter mattered (fANOVA importances,
`optuna.importance.get_param_importances`), the optimisation history and a
parallel-coordinates plot. The experiment is a search when its sweep's MLflow parent run
carries `search.*` tags (search.study.search_tags: the study's storage and name, the metric
and its direction, the searched parameters); the trials come from the study that TPE itself
used, each matched to its MLflow run by its parameters. A study that cannot be opened (kept in
memory by an older version, no longer on disk or in its bucket) leaves the MLflow runs: the same view without
importances, and a note saying why. Files: search.md, search.csv, search_history.png,
search_parallel.png, search_importance.png, written atomically and logged to the parent run
(`search/` artifacts; metrics `search.best.<metric>`, `search.importance.<param>`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.cells import metric_spec
from analysis.mlflow_store import ROLE_TAG, search_all_runs
from analysis.records import trial_runs
from analysis.search_plots import ParamAxis, plot_history, plot_importances, plot_parallel
from analysis.study_journal import open_study_storage
from analysis.sweep_logger import SEARCH_TAG_PREFIX
from pix3d.errors import Pix3DError, UsageError, one_line
from pix3d.fileio import atomic_path
from pix3d.metrics import metric_key_part

TOP = 10


@dataclass
class SearchView:
    """A search's trials (value in the metric's display unit) and what was learnt from them."""

    experiment: str
    metric: str
    maximize: bool
    trials: pd.DataFrame  # number, state, value, epochs, stopped_early, run, one column per param
    axes: list[ParamAxis]
    importances: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    parent_run_id: str | None = None
    tracking_uri: str | None = None

    @property
    def params(self) -> list[str]:
        return [axis.name for axis in self.axes]

    def ranked(self) -> pd.DataFrame:
        """Finished trials, best first."""
        done = self.trials.dropna(subset=["value"])
        return done.sort_values(["value", "number"], ascending=[not self.maximize, True])

    def best(self) -> pd.Series | None:
        ranked = self.ranked()
        return ranked.iloc[0] if len(ranked) else None

    def value_text(self, value, *, unit: bool = False) -> str:
        """A value as the view shows it (`unit`: with its unit: 41.7%, 32.5 deg)."""
        kind = metric_spec(self.metric).unit
        if value is None or pd.isna(value):
            return "-"
        text = f"{value:.4g}" if kind == "" else f"{value:.1f}"
        return text + {"%": "%", "deg": " deg"}.get(kind, "") if unit else text

    def _heading(self) -> list[str]:
        spec = metric_spec(self.metric)
        states = self.trials["state"].value_counts()
        counts = ", ".join(f"{n} {state.lower()}" for state, n in states.items())
        return [f"### Search `{self.experiment}`: {self.metric} ({spec.describe()}) at each trial's last epoch",
                "", f"{self.source}: {len(self.trials)} trials ({counts or 'none'}); searched "
                f"{', '.join(self.params)}; TPE proposes, ASHA stops poor trials early.", ""]

    def _best_line(self) -> str:
        best = self.best()
        if best is None:
            return "**Best configuration**: none yet (no trial finished)."
        config = ", ".join(f"{name}={_param_text(best[name])}" for name in self.params)
        run = f" (MLflow run `{best['run']}`)" if best["run"] else ""
        return (f"**Best configuration**: trial {int(best['number'])}, {self.metric} "
                f"{self.value_text(best['value'], unit=True)} after {int(best['epochs'])} epoch(s): {config}{run}")

    def to_markdown(self) -> str:
        lines = [*self._heading(), self._best_line(), "", f"Top {TOP} trials:", "",
                 f"| rank | trial | {self.metric} ({metric_spec(self.metric).unit or 'as logged'}) | epochs | "
                 + " | ".join(self.params) + " | run |",
                 "|---|---|---|---|" + "---|" * len(self.params) + "---|"]
        for rank, (_, trial) in enumerate(self.ranked().head(TOP).iterrows(), start=1):
            stop = " (stopped early)" if trial["stopped_early"] else ""
            lines.append(f"| {rank} | {int(trial['number'])} | {self.value_text(trial['value'])} | "
                         f"{int(trial['epochs'])}{stop} | "
                         + " | ".join(_param_text(trial[p]) for p in self.params) + f" | {trial['run']} |")
        if self.importances:
            lines += ["", "Parameter importances (fANOVA: each parameter's share of the value's variance):", "",
                      "| parameter | importance |", "|---|---|"]
            lines += [f"| {name} | {value:.3f} |" for name, value in self.importances.items()]
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        return self.trials.sort_values("number").to_csv(index=False)

    def render(self, fmt: str) -> str:
        if fmt not in ("md", "csv"):
            raise UsageError(f"--format {fmt}: a search's view is md or csv")
        return self.to_markdown() if fmt == "md" else self.to_csv()


def _param_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def search_parent(tracking_uri: str, experiment: str):
    """(client, trial runs, the latest parent run of `experiment` that records a search, or None)."""
    client, runs = trial_runs(tracking_uri, experiment)
    found = client.get_experiment_by_name(experiment)
    parents = search_all_runs(client, [found.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep'")
    searches = [r for r in parents if r.data.tags.get(f"{SEARCH_TAG_PREFIX}kind")]
    parent = max(searches, key=lambda r: r.info.start_time or 0, default=None)
    return client, runs, parent


def is_search_experiment(tracking_uri: str, experiment: str) -> bool:
    """True when a sweep of `experiment` was a model-based search (its parent's `search.kind`)."""
    return search_parent(tracking_uri, experiment)[2] is not None


def _same(value, text: str | None) -> bool:
    if text is None:
        return False
    try:
        return float(text) == float(value)
    except (TypeError, ValueError):
        return str(value) == text


def _matching_run(runs, params: dict):
    """The MLflow trial run with these searched parameters (the latest), or None."""
    matches = [r for r in runs if all(_same(v, r.data.params.get(k)) for k, v in params.items())]
    return max(matches, key=lambda r: r.info.start_time or 0, default=None)


def _axis(name: str, distribution) -> ParamAxis:
    choices = tuple(getattr(distribution, "choices", ()) or ())
    return ParamAxis(name, log=bool(getattr(distribution, "log", False)), choices=choices)


def _study_trials(storage, name: str, runs, scale: float) -> tuple[pd.DataFrame, list[ParamAxis], object]:
    """The trials of the stored study as a frame, its parameter axes, and the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    axes: dict[str, ParamAxis] = {}
    rows = []
    for trial in study.trials:
        axes.update({k: _axis(k, d) for k, d in trial.distributions.items() if k not in axes})
        value = trial.value * scale if trial.value is not None and trial.state.name == "COMPLETE" else None
        run = _matching_run(runs, trial.params)
        # Epochs trained: the run's last epoch. (Tune tells Optuna a trial's last result as its
        # end, not as an intermediate value, so the study's own count is one short.)
        epochs = run.data.metrics.get("epoch") if run is not None else None
        rows.append({"number": trial.number, "state": trial.state.name, "value": value,
                     "epochs": int(epochs) if epochs is not None else len(trial.intermediate_values),
                     **trial.params, "run": (run.info.run_name or run.info.run_id[:8]) if run else ""})
    return pd.DataFrame(rows), list(axes.values()), study


def _run_trials(runs, metric: str, params: list[str], scale: float) -> tuple[pd.DataFrame, list[ParamAxis]]:
    """The search's trials from its MLflow runs (no study): numbered in the order they started."""
    rows = []
    for number, run in enumerate(sorted(runs, key=lambda r: r.info.start_time or 0)):
        value = run.data.metrics.get(metric)
        finished = run.info.status == "FINISHED" and value is not None
        rows.append({"number": number, "state": "COMPLETE" if finished else run.info.status,
                     "value": value * scale if finished else None,
                     "epochs": int(run.data.metrics.get("epoch", 0)),
                     **{p: _param_value(run.data.params.get(p)) for p in params},
                     "run": run.info.run_name or run.info.run_id[:8]})
    frame = pd.DataFrame(rows)
    axes = [ParamAxis(p, choices=() if pd.api.types.is_numeric_dtype(frame[p])
                      else tuple(sorted(frame[p].dropna().astype(str).unique())))
            for p in params if p in frame]
    return frame, [ParamAxis(a.name, log=_spans_decades(frame[a.name]), choices=a.choices) for a in axes]


def _param_value(text: str | None):
    try:
        return float(text) if text is not None else None
    except ValueError:
        return text


def _spans_decades(series: pd.Series) -> bool:
    numbers = pd.to_numeric(series, errors="coerce").dropna()
    return bool(len(numbers)) and numbers.min() > 0 and numbers.max() / numbers.min() >= 100


def _importances(study) -> tuple[dict[str, float], str | None]:
    """fANOVA importances (seeded), or a note saying why there are none."""
    import optuna

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}, f"parameter importances need at least two complete trials ({len(complete)} so far)"
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), None
    except (ValueError, RuntimeError) as exc:
        return {}, f"parameter importances could not be computed: {one_line(exc)}"


def build_search_view(tracking_uri: str, experiment: str) -> SearchView:
    """The search view of `experiment` (see module doc); Pix3DError when it is not a search."""
    _, runs, parent = search_parent(tracking_uri, experiment)
    if parent is None:
        raise Pix3DError(f"experiment {experiment!r} is not a model-based search (no search.* tags on its sweep)")
    tags = {k[len(SEARCH_TAG_PREFIX):]: v for k, v in parent.data.tags.items() if k.startswith(SEARCH_TAG_PREFIX)}
    metric, storage, name = tags.get("metric", "val_azimuth_acc"), tags.get("storage", ""), tags.get("study", experiment)
    scale = metric_spec(metric).scale
    runs = [r for r in runs if r.data.tags.get("sweep_id") == parent.data.tags.get("sweep_id")]
    notes, importances = [], {}
    try:
        trials, axes, study = _study_trials(open_study_storage(storage), name, runs, scale)
        importances, note = _importances(study)
        notes += [note] if note else []
        source = f"Optuna study `{name}` in {storage}"
    except (Pix3DError, KeyError) as exc:  # no study: the MLflow runs still give the trials
        params = [p for p in tags.get("params", "").split(",") if p]
        trials, axes = _run_trials(runs, metric, params, scale)
        notes.append(f"read from the MLflow runs, without importances: Optuna study {name!r} unavailable "
                     f"({one_line(exc)})")
        source = f"MLflow runs of the sweep `{parent.info.run_name}`"
    planned = [int(float(r.data.params["epochs"])) for r in runs if "epochs" in r.data.params]
    full = max(planned, default=int(trials["epochs"].max()) if len(trials) else 0)
    trials["stopped_early"] = trials["value"].notna() & (trials["epochs"] < full)
    order = [p for p in tags.get("params", "").split(",") if p]  # as the grid lists them
    axes.sort(key=lambda a: order.index(a.name) if a.name in order else len(order))
    return SearchView(experiment, metric, tags.get("mode", "max") == "max", trials, axes, importances, notes,
                      source, parent.info.run_id, tracking_uri)


def search_metrics(view: SearchView) -> dict[str, float]:
    """The parent run's metrics of a search: the best value and each parameter's importance."""
    best = view.best()
    out = {f"search.best.{view.metric}": float(best["value"])} if best is not None else {}
    out.update({f"search.importance.{metric_key_part(k)}": float(v) for k, v in view.importances.items()})
    return out


def write_search_view(view: SearchView, out_dir: str | Path, *, log_to_mlflow: bool = True) -> dict[str, Path]:
    """search.md, search.csv and the PNGs, each atomically; logged to the parent run."""
    from analysis.table import log_table_files

    out_dir = Path(out_dir)
    written = {"md": out_dir / "search.md", "csv": out_dir / "search.csv"}
    for kind, text in (("md", view.to_markdown()), ("csv", view.to_csv())):
        with atomic_path(written[kind], report_as=out_dir) as tmp:
            tmp.write_text(text)
    label = f"{view.metric} ({metric_spec(view.metric).describe()})"
    written["history"] = plot_history(view.trials, out_dir / "search_history.png", maximize=view.maximize,
                                      title=f"{view.experiment}: optimisation history", ylabel=label)
    written["parallel"] = plot_parallel(view.trials, view.axes, out_dir / "search_parallel.png",
                                        title=f"{view.experiment}: trials by parameters", value_label=view.metric)
    if view.importances:
        written["importance"] = plot_importances(view.importances, out_dir / "search_importance.png",
                                                 title=f"{view.experiment}: parameter importances (fANOVA)")
    if log_to_mlflow:
        log_table_files(view, written.values(), out_dir, metrics=search_metrics(view), artifact_path="search")
    return written
