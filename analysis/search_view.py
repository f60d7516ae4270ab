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

from analysis.mlflow_store import ROLE_TAG, log_table_files, search_all_runs
from analysis.mlflow_ui import run_url
from analysis.records import trial_runs
from analysis.run_fields import stopped_text
from analysis.search_plots import ParamAxis, plot_history, plot_importances, plot_parallel
from analysis.study_journal import open_study_storage
from analysis.sweep_logger import SEARCH_TAG_PREFIX
from pix3d.errors import Pix3DError, UsageError, one_line
from pix3d.fileio import atomic_path
from pix3d.metrics import metric_key_part, metric_spec

TOP = 10
OPTUNA_TRIAL_TAG = "optuna_trial"   # a trial run's number in the search's Optuna study


@dataclass
class SearchView:
    """A search's trials (value in the metric's display unit) and what was learnt from them."""

    experiment: str
    metric: str
    maximize: bool
    # number, state, value (at the last epoch), epochs, at_budget (at `budget` epochs), stopped
    # ('' or stopped_text), run, run_id, url, one column per param
    trials: pd.DataFrame
    axes: list[ParamAxis]
    importances: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    budget: int = 0              # the epoch every ranked trial reached: they are compared there
    importance_trials: int = 0   # how many trials the importances rest on

    @property
    def params(self) -> list[str]:
        return [axis.name for axis in self.axes]

    def ranked(self) -> pd.DataFrame:
        """Trials with a value at the common budget, best first: like with like (a trial ASHA
        stopped after one epoch is ranked on its epoch-1 value against the others' epoch-1 values)."""
        done = self.trials.dropna(subset=["at_budget"])
        return done.sort_values(["at_budget", "number"], ascending=[not self.maximize, True])

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
        stopped = int((self.trials["stopped"] != "").sum()) if len(self.trials) else 0
        return [f"### Search `{self.experiment}`: {self.metric} ({spec.describe()}) at epoch {self.budget}, "
                "the epoch every ranked trial reached",
                "", f"{self.source}: {len(self.trials)} trials ({counts or 'none'}; {stopped} stopped early by "
                f"ASHA); searched {', '.join(self.params)}; TPE proposes, ASHA stops poor trials early. Trials are "
                f"ranked on their value at epoch {self.budget} (values after more epochs are not comparable "
                "with it); the last value and its epoch are beside it.", ""]

    def _best_line(self) -> str:
        best = self.best()
        if best is None:
            return "**Best configuration**: none yet (no trial finished)."
        config = ", ".join(f"{name}={_param_text(best[name])}" for name in self.params)
        run = f" (MLflow run [{best['run']}]({best['url']}))" if best["run"] else ""
        return (f"**Best configuration** at epoch {self.budget}: trial {int(best['number'])}, {self.metric} "
                f"{self.value_text(best['at_budget'], unit=True)} at epoch {self.budget}: {config}{run}")

    def to_markdown(self) -> str:
        lines = [*self._heading(), self._best_line(), "", f"Top {TOP} trials:", "",
                 f"| rank | trial | {self.metric} at epoch {self.budget} ({metric_spec(self.metric).unit or 'as logged'}) "
                 "| last value | epochs | " + " | ".join(self.params) + " | run |",
                 "|---|---|---|---|---|" + "---|" * len(self.params) + "---|"]
        for rank, (_, trial) in enumerate(self.ranked().head(TOP).iterrows(), start=1):
            epochs = f"{int(trial['epochs'])}" + (f" ({trial['stopped']})" if trial["stopped"] else "")
            run = f"[{trial['run']}]({trial['url']})" if trial["url"] else trial["run"]
            lines.append(f"| {rank} | {int(trial['number'])} | {self.value_text(trial['at_budget'])} | "
                         f"{self.value_text(trial['value'])} | {epochs} | "
                         + " | ".join(_param_text(trial[p]) for p in self.params) + f" | {run} |")
        if self.importances:
            lines += ["", f"Parameter importances (fANOVA over {self.importance_trials} trials' values at epoch "
                      f"{self.budget}: each parameter's share of the value's variance):", "",
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


def _history(client, run, metric: str, scale: float) -> dict[int, float]:
    """{epoch: value} of `metric` in a trial run (the display unit)."""
    if run is None:
        return {}
    return {int(m.step): m.value * scale for m in client.get_metric_history(run.info.run_id, metric)}


def _run_fields(run, tracking_uri: str) -> dict:
    if run is None:
        return {"run": "", "run_id": "", "url": ""}
    return {"run": run.info.run_name or run.info.run_id[:8], "run_id": run.info.run_id,
            "url": run_url(tracking_uri, run.info.experiment_id, run.info.run_id)}


def _study_trials(client, tracking_uri: str, storage: str, name: str, runs, metric: str,
                  scale: float) -> tuple[pd.DataFrame, list[ParamAxis], object]:
    """The trials of the stored study as a frame (values per epoch from their MLflow runs, else
    the study's intermediate values), its parameter axes, and the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    axes: dict[str, ParamAxis] = {}
    rows = []
    for trial in study.trials:
        axes.update({k: _axis(k, d) for k, d in trial.distributions.items() if k not in axes})
        run = _matching_run(runs, trial.params)
        history = _history(client, run, metric, scale) or {
            int(step): value * scale for step, value in trial.intermediate_values.items()}
        if trial.state.name == "COMPLETE" and trial.value is not None and not run:
            history.setdefault(max(history, default=0) + 1, trial.value * scale)
        if trial.state.name not in ("COMPLETE", "PRUNED"):
            history = {}
        rows.append({"number": trial.number, "state": trial.state.name, "history": history,
                     **trial.params, **_run_fields(run, tracking_uri)})
    return pd.DataFrame(rows), list(axes.values()), study


def _run_trials(client, tracking_uri: str, runs, metric: str, params: list[str],
                scale: float) -> tuple[pd.DataFrame, list[ParamAxis]]:
    """The search's trials from its MLflow runs (no study): numbered by their Optuna trial tag,
    else in the order they started."""
    rows = []
    for number, run in enumerate(sorted(runs, key=lambda r: r.info.start_time or 0)):
        finished = run.info.status == "FINISHED"
        state = ("PRUNED" if run.data.tags.get("stopped_early") else "COMPLETE") if finished else run.info.status
        rows.append({"number": int(run.data.tags.get(OPTUNA_TRIAL_TAG, number)), "state": state,
                     "history": _history(client, run, metric, scale) if finished else {},
                     **{p: _param_value(run.data.params.get(p)) for p in params}, **_run_fields(run, tracking_uri)})
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


def _importances(study, trials: pd.DataFrame, maximize: bool) -> tuple[dict[str, float], int, str | None]:
    """fANOVA importances (seeded) over every trial's value at the common budget (so a trial
    ASHA stopped counts with its comparable value), how many trials they rest on, or a note
    saying why there are none."""
    import optuna

    at = {int(n): v for n, v in zip(trials["number"], trials["at_budget"]) if pd.notna(v)}
    used = [t for t in study.trials if t.number in at and t.distributions]
    if len(used) < 2:
        return {}, 0, f"parameter importances need at least two trials with a value at the common budget ({len(used)})"
    budget_study = optuna.create_study(direction="maximize" if maximize else "minimize")
    budget_study.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                       value=at[t.number]) for t in used])
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(budget_study, evaluator=evaluator)), len(used), None
    except (ValueError, RuntimeError) as exc:
        return {}, 0, f"parameter importances could not be computed: {one_line(exc)}"


def _at_budget(trials: pd.DataFrame, planned: int) -> tuple[pd.DataFrame, int]:
    """Each trial's last value and epoch, whether ASHA stopped it, and its value at the common
    budget: the deepest epoch every trial with values reached."""
    histories = trials["history"] if len(trials) else pd.Series([], dtype=object)
    reached = [max(h) for h in histories if h]
    budget = min(reached, default=0)
    trials = trials.assign(
        epochs=[max(h, default=0) for h in histories],
        value=[h[max(h)] if h else None for h in histories],
        at_budget=[h.get(budget) if h else None for h in histories])
    trials["stopped"] = [stopped_text(e) if e and planned and e < planned and s in ("COMPLETE", "PRUNED") else ""
                         for e, s in zip(trials["epochs"], trials["state"])]
    trials["stopped_early"] = trials["stopped"] != ""
    return trials.drop(columns=["history"]), budget


def build_search_view(tracking_uri: str, experiment: str) -> SearchView:
    """The search view of `experiment` (see module doc); Pix3DError when it is not a search."""
    client, runs, parent = search_parent(tracking_uri, experiment)
    if parent is None:
        raise Pix3DError(f"experiment {experiment!r} is not a model-based search (no search.* tags on its sweep)")
    tags = {k[len(SEARCH_TAG_PREFIX):]: v for k, v in parent.data.tags.items() if k.startswith(SEARCH_TAG_PREFIX)}
    metric, storage, name = tags.get("metric", "val_azimuth_acc"), tags.get("storage", ""), tags.get("study", experiment)
    scale = metric_spec(metric).scale
    runs = [r for r in runs if r.data.tags.get("sweep_id") == parent.data.tags.get("sweep_id")]
    maximize = tags.get("mode", "max") == "max"
    planned = max((int(float(r.data.params["epochs"])) for r in runs if "epochs" in r.data.params), default=0)
    notes, importances, importance_trials, study = [], {}, 0, None
    try:
        trials, axes, study = _study_trials(client, tracking_uri, open_study_storage(storage), name, runs, metric, scale)
        source = f"Optuna study `{name}` in {storage}"
    except (Pix3DError, KeyError) as exc:  # no study: the MLflow runs still give the trials
        params = [p for p in tags.get("params", "").split(",") if p]
        trials, axes = _run_trials(client, tracking_uri, runs, metric, params, scale)
        notes.append(f"read from the MLflow runs, without importances: Optuna study {name!r} unavailable "
                     f"({one_line(exc)})")
        source = f"MLflow runs of the sweep `{parent.info.run_name}`"
    trials, budget = _at_budget(trials, planned)
    if study is not None:
        importances, importance_trials, note = _importances(study, trials, maximize)
        notes += [note] if note else []
    order = [p for p in tags.get("params", "").split(",") if p]  # as the grid lists them
    axes.sort(key=lambda a: order.index(a.name) if a.name in order else len(order))
    view = SearchView(experiment, metric, maximize, trials, axes, importances, notes, source, parent.info.run_id,
                      tracking_uri, budget=budget, importance_trials=importance_trials)
    if study is not None:
        _tag_trial_numbers(client, view)
    return view


def _tag_trial_numbers(client, view: SearchView) -> None:
    """Each trial run carries its Optuna trial number (tag OPTUNA_TRIAL_TAG), matched by params."""
    for number, run_id in zip(view.trials["number"], view.trials["run_id"]):
        if run_id:
            client.set_tag(run_id, OPTUNA_TRIAL_TAG, str(int(number)))


def search_metrics(view: SearchView) -> dict[str, float]:
    """The parent run's metrics of a search: the best value and each parameter's importance."""
    best = view.best()
    out = {f"search.best.{view.metric}": float(best["at_budget"])} if best is not None else {}
    out.update({f"search.importance.{metric_key_part(k)}": float(v) for k, v in view.importances.items()})
    return out


def write_search_view(view: SearchView, out_dir: str | Path, *, log_to_mlflow: bool = True) -> dict[str, Path]:
    """search.md, search.csv and the PNGs, each atomically; logged to the parent run."""
    out_dir = Path(out_dir)
    written = {"md": out_dir / "search.md", "csv": out_dir / "search.csv"}
    for kind, text in (("md", view.to_markdown()), ("csv", view.to_csv())):
        with atomic_path(written[kind], report_as=out_dir) as tmp:
            tmp.write_text(text)
    label = f"{view.metric} at epoch {view.budget} ({metric_spec(view.metric).describe()})"
    compared = view.trials.assign(value=view.trials["at_budget"])  # like with like: the common budget
    written["history"] = plot_history(compared, out_dir / "search_history.png", maximize=view.maximize,
                                      title=f"{view.experiment}: optimisation history", ylabel=label)
    written["parallel"] = plot_parallel(compared, view.axes, out_dir / "search_parallel.png",
                                        title=f"{view.experiment}: trials by parameters", value_label=view.metric)
    if view.importances:
        written["importance"] = plot_importances(view.importances, out_dir / "search_importance.png",
                                                 title=f"{view.experiment}: parameter importances (fANOVA)")
    if log_to_mlflow:
        log_table_files(view, written.values(), out_dir, metrics=search_metrics(view), artifact_path="search")
    return written
