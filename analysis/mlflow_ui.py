"""How a reader opens a sweep in the MLflow UI (3.x): the experiment's UI tags and the links.

Owns what the UI needs to land on a sweep's training runs rather than on the GenAI pages:

- the experiment tag `mlflow.experimentKind = custom_model_development` (the UI's
  "Machine learning" kind: the run page links back to the Runs tab, not to evaluation runs);
- the link: MLflow 3.17 picks its GenAI or "Model training" side from the page's
  `workflowType` query parameter (else from the browser's last choice, GenAI by default),
  not from the tag, so every link we print names the runs tab and `workflowType=machine_learning`;
- a shared view (experiment tag `mlflow.sharedViewState.<key>`, JSON; the UI's "Views")
  that groups the trial runs by model and modalities, so the chart view shows the mean over
  seeds per cell, filtered to the table's metric.
"""

from __future__ import annotations

import json
import urllib.parse

from pix3d.models import TABLE_METRIC

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
GROUPED_VIEW = "pix3d-by-model-and-modalities"
DEFAULT_UI = "http://127.0.0.1:5000"   # where `mlflow ui` serves a local store by default
# Child runs grouped by these tags (analysis.run_fields.trial_tags); MLflow averages a group.
GROUP_TAGS = ("model", "modalities")


def grouped_view_state() -> dict:
    """The shared view: runs grouped by model and modalities, charts on the group means (a
    band from min to max over seeds), the table's metric first (the chart filter)."""
    keys = [{"mode": "tag", "groupByData": tag} for tag in GROUP_TAGS]
    return {"groupBy": {"aggregateFunction": "average", "groupByKeys": keys},
            "useGroupedValuesInCharts": True, "hideEmptyCharts": True, "chartsSearchFilter": TABLE_METRIC}


def experiment_ui_tags() -> dict[str, str]:
    """Tags a sweep's experiment carries for the UI (set on creation, added when missing)."""
    return {EXPERIMENT_KIND_TAG: TRAINING_KIND,
            SHARED_VIEW_PREFIX + GROUPED_VIEW: json.dumps(grouped_view_state())}


def ensure_ui_tags(client, experiment) -> None:
    """Add the UI tags an existing experiment lacks: a kind someone chose is left alone, our
    grouped view is brought up to date."""
    present = dict(experiment.tags or {})
    for key, value in experiment_ui_tags().items():
        if key not in present or (key.startswith(SHARED_VIEW_PREFIX) and present[key] != value):
            client.set_experiment_tag(experiment.experiment_id, key, value)


def ui_base(tracking_uri: str) -> tuple[str, bool]:
    """(the UI's address, whether it is the tracking server itself). A database or folder
    store has no UI of its own: `mlflow ui` serves it, at DEFAULT_UI unless told otherwise."""
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        return tracking_uri.rstrip("/"), True
    return DEFAULT_UI, False


def runs_url(tracking_uri: str, experiment_id: str, *, grouped: bool = False, charts: bool = False) -> str:
    """The experiment's training-runs page (optionally grouped by model and modalities, and
    in chart view)."""
    base, _ = ui_base(tracking_uri)
    query = {"workflowType": "machine_learning"}
    if grouped:
        query["viewStateShareKey"] = GROUPED_VIEW
    if charts:
        query["compareRunsMode"] = "CHART"
    return f"{base}/#/experiments/{experiment_id}/runs?{urllib.parse.urlencode(query)}"


def review_lines(tracking_uri: str, experiment_id: str) -> list[str]:
    """What to print at the end of a sweep or a table: how to open it in the UI."""
    _, served = ui_base(tracking_uri)
    runs = runs_url(tracking_uri, experiment_id)
    grouped = runs_url(tracking_uri, experiment_id, grouped=True, charts=True)
    if served:
        lines = [f"review in MLflow: {runs}"]
    else:
        lines = [f"review in MLflow: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 "
                 "--port 5000, then open", f"  {runs}"]
    return lines + [f"  grouped by model and modalities, as charts: {grouped}"]


def experiment_review_lines(tracking_uri: str, experiment: str) -> list[str]:
    """`review_lines` for an experiment named `experiment`; none when it cannot be looked up
    (the UI links are a convenience: they never fail a sweep or a table)."""
    try:
        from mlflow.tracking import MlflowClient

        found = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - an unreachable store: no links, the rest stands
        return []
    return review_lines(tracking_uri, found.experiment_id) if found is not None else []
