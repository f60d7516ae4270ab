"""Review a sweep as a person clicks through it: a real `mlflow server`, headless Chromium with
a fresh profile (nothing remembered, as a first-time reader), the link the sweep prints.

The sweep is logged by the project's SweepLogger (what the Tune callback drives) without Ray:
the UI needs runs in a store, not a Tune run. Cost: ~25 s on 2 shared cores (one server for
the session, one browser and one 4-trial sweep per module). Skipped where no Chromium is
installed (`.ci/run` installs Debian's `chromium`). PIX3D_SCREENSHOTS=DIR keeps the pages as
PNGs (docs/img/review_*.png come from here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from analysis.mlflow_ui import experiment_review_lines, run_url
from analysis.table import build_table, write_table
from tests.browser import chromium, chromium_binary
from tests.sweeps import log_sweep

pytestmark = pytest.mark.skipif(chromium_binary() is None, reason="no chromium (apt-get install -y chromium)")

EXPERIMENT = "review"
CONFIGS = [dict(model=model, modalities=subset, seed=0, lr=1e-4, epochs=2, seed_quirks=False)
           for model in ("combined_net", "separate_net") for subset in ("rgb", "rgb+mask")]
# What MLflow 3.17 shows on its GenAI side of a run or an experiment, never on the training side.
GENAI_MARKS = ("Evaluations", "Evaluation runs", "Sessions", "Judges")


@pytest.fixture(scope="module")
def reviewed(server, tmp_path_factory):
    """(the server, the printed lines, the trial runs, a browser page, the screenshot folder)."""
    from mlflow.tracking import MlflowClient

    log_sweep(server.url, EXPERIMENT, CONFIGS, sweep_name="review-sweep")
    table = build_table(server.url, EXPERIMENT)
    write_table(table, tmp_path_factory.mktemp("review_table"))
    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    trials = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("pix3d.role") == "trial"]
    shots = Path(os.environ.get("PIX3D_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    with chromium() as page:
        yield server, experiment_review_lines(server.url, EXPERIMENT), trials, page, shots


def _training_side(page) -> None:
    """The page is MLflow's training view of a run: its Model metrics tab, no GenAI pages."""
    page.wait_for_text("Model metrics", "Runs")
    text = page.text()
    assert not [mark for mark in GENAI_MARKS if mark in text], (page.url(), text[:800])


def test_printed_link_lists_every_trial_with_the_metric_columns(reviewed):
    server, lines, trials, page, shots = reviewed
    link = lines[0].split(": ", 1)[1]
    assert link.startswith(server.url) and "workflowType=machine_learning" in link
    assert not any("grouped" in line for line in lines[1:]) or len(trials) == len(CONFIGS)
    page.goto(link)
    names = [run.info.run_name for run in trials]
    assert len(names) == len(CONFIGS)
    page.wait_for_text(*names, "val_azimuth_acc", "val_azimuth_mederr", "modalities", timeout_s=90)
    page.screenshot(shots / "review_runs.png")
    # Each row shows its own value of the headline metric (the cells, not only the header).
    for run in trials:
        value = f"{run.data.metrics['val_azimuth_acc']:g}"
        assert value in page.text(), (run.info.run_name, value)


def test_a_run_opened_from_that_page_is_the_training_view(reviewed):
    server, lines, trials, page, shots = reviewed
    # The printed one-time step (MLflow keeps the side in the browser's localStorage).
    assert f"open {server.url}/#/ and click Model training" in lines[-1]
    page.goto(f"{server.url}/#/")
    page.click_text("Model training", selector="[role=button]")
    page.wait_for("localStorage.getItem('mlflow.workflowType_v1') === '\"machine_learning\"'", what="the side stored")
    page.goto(lines[0].split(": ", 1)[1])
    name = trials[0].info.run_name
    page.wait_for_text(name, timeout_s=90)
    page.click_text(name)
    page.wait_for("location.hash.includes('/runs/')", what="a run page")
    _training_side(page)
    page.screenshot(shots / "review_run.png")
    page.click_text("Model metrics", selector="[role=tab], button, a")
    page.wait_for("location.hash.includes('/model-metrics')", what="the Model metrics tab")
    _training_side(page)
    page.wait_for("document.querySelectorAll('canvas, svg.main-svg, .js-plotly-plot').length >= 3", what="charts")
    page.screenshot(shots / "review_run_charts.png")
    # The breadcrumb back to the runs (MLflow's link, without the side in it) stays on the training side.
    page.click_text("Runs", selector='a[href$="/runs"]')
    page.wait_for("/\\/experiments\\/\\d+\\/runs(\\?|$)/.test(location.hash)", what="the runs list")
    page.wait_for_text("review-sweep", "Columns")  # MLflow's own default view: the sweep's parent row
    assert not [mark for mark in GENAI_MARKS if mark in page.text()]


def test_a_run_link_we_print_opens_the_training_view_in_a_fresh_browser(reviewed):
    server, _, trials, _, shots = reviewed
    run = trials[0]
    with chromium() as fresh:
        fresh.goto(run_url(server.url, run.info.experiment_id, run.info.run_id))
        _training_side(fresh)


def test_the_parent_run_shows_the_table_first_and_as_a_table(reviewed, tmp_path):
    from mlflow.tracking import MlflowClient

    server, _, trials, page, shots = reviewed
    client = MlflowClient(tracking_uri=server.url)
    parent_id = trials[0].data.tags["mlflow.parentRunId"]
    paths = [a.path for a in client.list_artifacts(parent_id)]
    assert sorted(paths)[:2] == ["azimuth_table.json", "azimuth_table.png"], paths
    assert {"path": "azimuth_table.json", "type": "table"} in json.loads(
        client.get_run(parent_id).data.tags["mlflow.loggedArtifacts"])  # what MLflow's table viewer reads

    def rows():  # (MlflowClient.load_table searches the fluent API's store, not the client's)
        path = client.download_artifacts(parent_id, "azimuth_table.json", str(tmp_path))
        return pd.read_json(path, orient="split", dtype=False)
    first = rows()
    assert {"combined_net", "separate_net"} <= set(first.iloc[:, 0])
    write_table(build_table(server.url, EXPERIMENT), tmp_path / "again")  # rebuilt: replaced, not appended
    assert len(rows()) == len(first)
    page.goto(run_url(server.url, trials[0].info.experiment_id, parent_id, tab="artifacts"))
    page.wait_for_text("azimuth_table.json", "azimuth_table.png")
    page.click_text("azimuth_table.json", selector="span, div, a")
    page.wait_for_text("combined_net", "separate_net")
    page.screenshot(shots / "review_parent_table.png")
