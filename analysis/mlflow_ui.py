"""How a reader opens a sweep in the MLflow UI (3.x): the experiment's UI tags and the links.

Owns what the UI needs to land on a sweep's training runs rather than on the GenAI pages,
with MLflow's own means only (URL view state, experiment tags the UI reads):

- the experiment tag `mlflow.experimentKind = custom_model_development` (the UI's
  "Machine learning" kind: the run page links back to the Runs tab, not to evaluation runs);
- the side: MLflow 3.17 picks its GenAI or "Model training" side from the page's
  `workflowType` query parameter, else from the browser's localStorage (`mlflow.workflowType`,
  set only by the sidebar toggle; GenAI when never set), never from the experiment's kind
  (upstream mlflow/mlflow#24498). Every link we print carries `workflowType=machine_learning`;
  MLflow's own links (a run's name in the list, the breadcrumb, Compare) drop it, so a fresh
  browser needs the toggle set once (`ONE_TIME_STEP`, docs/review.md: on MLflow's home page,
  where the toggle stores the choice; on an experiment's page it only changes the URL);
- shared views (experiment tags `mlflow.sharedViewState.<key>`, JSON; the UI's "Views",
  opened by `viewStateShareKey` in the link): `TRIALS_VIEW`, the printed link's page, lists
  every trial run (the parent's rows expanded are not view state, so a filter on the trial
  role shows them flat) with model, modalities, lr, seed, a search's sampled parameters and
  the headline metrics as columns, best first; `GROUPED_VIEW` groups a grid's trials by model
  and modalities (the mean over seeds per cell; meaningless for a search's one-off configs);
- the charts (both views' Chart view): MLflow generates one chart per metric, by name, unless
  the view lists its chart cards (`compareRunCharts`, `compareRunSections` of the view state).
  Ours list the headline first, each with its majority baseline (`headline_charts`): a bar per
  run (per model x modalities in the grouped view) of the last validation accuracy, then the
  curves; MLflow appends the other metrics after them.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Sequence

from analysis.mlflow_store import ROLE_TAG
from analysis.run_fields import HEADLINE_SECTION, headline_key
from pix3d.metrics import METRICS
from pix3d.models import TABLE_METRIC

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
GROUPED_VIEW = "pix3d-by-model-and-modalities"
TRIALS_VIEW = "pix3d-trials"
TRAINING_SIDE = {"workflowType": "machine_learning"}
DEFAULT_UI = "http://127.0.0.1:5000"   # where `mlflow ui` serves a local store by default
UI_ENV = "PIX3D_MLFLOW_UI"             # where the reader's `mlflow ui` serves, when not DEFAULT_UI
# Child runs grouped by these tags (analysis.run_fields.trial_tags); MLflow averages a group.
GROUP_TAGS = ("model", "modalities")
TRIAL_COLUMNS = ("model", "modalities", "lr", "seed")            # tags of every trial run
HEADLINE_METRICS = (TABLE_METRIC, "val_azimuth_mederr")           # accuracy (%/100), median error (deg)
TRIAL_FILTER = f"tags.`{ROLE_TAG}` = 'trial'"  # the trial runs, not the sweep's parent (a group of its own)
# The chart sections of a view, in order: MLflow's names for its two (a metric without a `/`, and
# `system/...`), ours first (analysis.run_fields.HEADLINE_SECTION).
MODEL_SECTION, SYSTEM_SECTION = "Model metrics", "System metrics"
CHART_SECTIONS = (HEADLINE_SECTION, MODEL_SECTION, SYSTEM_SECTION)
ONE_TIME_STEP = ("once per browser, so that runs opened from the list stay on the training side: open "
                 "{base}/#/ and click Model training at the top of MLflow's sidebar")


def trials_view_state(search_params: Sequence[str] = ()) -> dict:
    """The printed link's view: every trial run, best first, with the columns that tell them
    apart and the headline metrics (a search's sampled parameters are params of its runs)."""
    columns = [f"tags.`{tag}`" for tag in TRIAL_COLUMNS]
    columns += [f"params.`{name}`" for name in search_params if name not in TRIAL_COLUMNS]
    columns += [f"metrics.`{name}`" for name in HEADLINE_METRICS]
    return {"searchFilter": TRIAL_FILTER, "orderByKey": f"metrics.`{TABLE_METRIC}`",
            "orderByAsc": False, "selectedColumns": columns, **headline_charts()}


def _section_id(name: str) -> str:
    return "pix3d-" + name.lower().replace(" ", "-")


def _card(kind: str, metrics: Sequence[str]) -> dict:
    """One chart card as MLflow's UI state holds it (RunsChartsCardConfig): a LINE over the
    epochs or a BAR of the last values, of `metrics`, in our section. (MLflow titles a chart by
    its metrics, `a vs b`, whatever displayName says.)"""
    card = {"uuid": f"pix3d-{kind.lower()}-{metrics[0].replace('/', '-')}", "type": kind, "isGenerated": False,
            "deleted": False, "metricSectionId": _section_id(HEADLINE_SECTION),
            "metricKey": metrics[0], "selectedMetricKeys": list(metrics), "runsCountToCompare": 100}
    if kind == "LINE":
        card.update(xAxisKey="step", scaleType="linear", xAxisScaleType="linear", lineSmoothness=0,
                    useGlobalXaxisKey=True, useGlobalLineSmoothing=True, yAxisKey="metric", yAxisExpressions=[],
                    range={}, ignoreOutliers=False, selectedXAxisMetricKey="")
    return card


def _with_baseline(metric: str) -> list[str]:
    """The headline copy of `metric` and its majority-class baseline (pix3d.metrics), if it has one."""
    spec = METRICS.get(metric)
    return [headline_key(metric)] + ([spec.baseline] if spec is not None and spec.baseline else [])


def headline_charts() -> dict:
    """The view state's charts: the headline section first (the last validation accuracy per run
    or group as bars, its curve and the median error's with their majority baselines, the
    losses), then MLflow's own sections, where it appends every other metric (`isReordered`)."""
    cards = [_card("BAR", _with_baseline(TABLE_METRIC)), _card("LINE", _with_baseline(TABLE_METRIC)),
             _card("LINE", _with_baseline("val_azimuth_mederr")), _card("LINE", [headline_key("train_loss")]),
             _card("LINE", [headline_key("val_loss")])]
    sections = [{"uuid": _section_id(name), "name": name, "display": True, "isReordered": True,
                 "deleted": False, "isGenerated": True} for name in CHART_SECTIONS]
    return {"compareRunCharts": cards, "compareRunSections": sections, "isAccordionReordered": True,
            "hideEmptyCharts": True, "runsHiddenMode": "SHOW_ALL"}


def grouped_view_state() -> dict:
    """The shared view: runs grouped by model and modalities, charts on the group means (a
    band from min to max over seeds), the headline charts first: the first is a bar per model x
    modalities of the last validation accuracy, beside the majority class's."""
    keys = [{"mode": "tag", "groupByData": tag} for tag in GROUP_TAGS]
    return {"searchFilter": TRIAL_FILTER, "groupBy": {"aggregateFunction": "average", "groupByKeys": keys},
            "useGroupedValuesInCharts": True, **headline_charts()}


def experiment_ui_tags(search_params: Sequence[str] = ()) -> dict[str, str]:
    """Tags a sweep's experiment carries for the UI (set on creation, added when missing)."""
    return {EXPERIMENT_KIND_TAG: TRAINING_KIND,
            SHARED_VIEW_PREFIX + TRIALS_VIEW: json.dumps(trials_view_state(search_params)),
            SHARED_VIEW_PREFIX + GROUPED_VIEW: json.dumps(grouped_view_state())}


def ensure_ui_tags(client, experiment, search_params: Sequence[str] = ()) -> None:
    """Add the UI tags an existing experiment lacks: a kind someone chose is left alone, our
    shared views are brought up to date."""
    present = dict(experiment.tags or {})
    for key, value in experiment_ui_tags(search_params).items():
        if key not in present or (key.startswith(SHARED_VIEW_PREFIX) and present[key] != value):
            client.set_experiment_tag(experiment.experiment_id, key, value)


def ui_base(tracking_uri: str) -> tuple[str, bool]:
    """(the UI's address, whether it is the tracking server itself). A database or folder
    store has no UI of its own: `mlflow ui` serves it, at $PIX3D_MLFLOW_UI when set (the port
    the reader chose), else DEFAULT_UI."""
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        return tracking_uri.rstrip("/"), True
    return (os.environ.get(UI_ENV) or DEFAULT_UI).rstrip("/"), False


def runs_url(tracking_uri: str, experiment_id: str, *, view: str | None = TRIALS_VIEW,
             charts: bool = False) -> str:
    """The experiment's training-runs page in shared view `view` (none: MLflow's default),
    optionally in chart view."""
    base, _ = ui_base(tracking_uri)
    query = dict(TRAINING_SIDE)
    if view:
        query["viewStateShareKey"] = view
    if charts:
        query["compareRunsMode"] = "CHART"
    return f"{base}/#/experiments/{experiment_id}/runs?{urllib.parse.urlencode(query)}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str, *, tab: str = "") -> str:
    """One run's page on the training side (`tab`: e.g. model-metrics, artifacts)."""
    base, _ = ui_base(tracking_uri)
    path = f"{base}/#/experiments/{experiment_id}/runs/{run_id}" + (f"/{tab}" if tab else "")
    return f"{path}?{urllib.parse.urlencode(TRAINING_SIDE)}"


def ui_command(tracking_uri: str) -> str:
    """The `mlflow ui` command that serves a store at the address the links use."""
    base, _ = ui_base(tracking_uri)
    parsed = urllib.parse.urlparse(base)
    return (f"mlflow ui --backend-store-uri {tracking_uri} --host {parsed.hostname or '127.0.0.1'} "
            f"--port {parsed.port or 5000}")


def review_lines(tracking_uri: str, experiment_id: str, *, grouped: bool = True) -> list[str]:
    """What to print at the end of a sweep or a table: how to open it in the UI. `grouped`:
    add the grouped view's link (a grid's seeds averaged per cell; not for a search)."""
    base, served = ui_base(tracking_uri)
    runs = runs_url(tracking_uri, experiment_id)
    if served:
        lines = [f"review in MLflow: {runs}"]
    else:
        lines = [f"review in MLflow: {ui_command(tracking_uri)}, then open", f"  {runs}"]
    if grouped:
        lines.append(f"  grouped by model and modalities, as charts: "
                     f"{runs_url(tracking_uri, experiment_id, view=GROUPED_VIEW, charts=True)}")
    return lines + ["  " + ONE_TIME_STEP.format(base=base)]


def experiment_review_lines(tracking_uri: str, experiment: str, *, grouped: bool = True) -> list[str]:
    """`review_lines` for an experiment named `experiment`; none when it cannot be looked up
    (the UI links are a convenience: they never fail a sweep or a table)."""
    try:
        from mlflow.tracking import MlflowClient

        found = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - an unreachable store: no links, the rest stands
        return []
    return review_lines(tracking_uri, found.experiment_id, grouped=grouped) if found is not None else []
