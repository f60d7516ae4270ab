"""Review a sweep as a person clicks through it: a real `mlflow server`, headless Chromium with
a fresh profile (nothing remembered, as a first-time reader), the link the sweep prints.

The sweep is logged by the project's SweepLogger (what the Tune callback drives) without Ray:
the UI needs runs in a store, not a Tune run. Cost: ~40-65 s on 2 shared cores (one server for
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
from analysis.run_fields import HEADLINE_CHARTS
from analysis.table import build_table, write_table
from tests.browser import BrowserError, chromium, chromium_binary
from tests.sweeps import log_sweep

pytestmark = pytest.mark.skipif(chromium_binary() is None, reason="no chromium (apt-get install -y chromium)")

EXPERIMENT = "review"
CONFIGS = [dict(model=model, modalities=subset, seed=0, lr=1e-4, epochs=2, seed_quirks=False)
           for model in ("combined_net", "separate_net") for subset in ("rgb", "rgb+mask")]
# What MLflow 3.17 shows on its GenAI side of a run or an experiment, never on the training side.
GENAI_MARKS = ("Evaluations", "Evaluation runs", "Sessions", "Judges")
# The visible leaf elements whose text is one of NAMES (a JSON list), in the page's order: chart titles.
TITLES_JS = ("(() => {{ const names = new Set({names}); return Array.from(document.querySelectorAll('body *'))"
             ".filter(e => e.children.length === 0 && e.getBoundingClientRect().width > 0"
             " && names.has((e.innerText || '').trim())).map(e => e.innerText.trim()); }})()")


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
    page.screenshot(shots / "review_training_side.png")  # what the README shows a reader clicks
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
    # The first charts are the headline (their own section, ahead of MLflow's alphabetical
    # "Model metrics", which starts with best_val_azimuth_acc), then the rest.
    names = sorted({key.rsplit("/", 1)[-1] for key in trials[0].data.metrics if not key.startswith("system/")})
    titles_js = TITLES_JS.format(names=json.dumps(names))
    titles = page.wait_for(f"{titles_js}.length >= {len(HEADLINE_CHARTS)} && {titles_js}", what="the chart titles")
    assert titles[:len(HEADLINE_CHARTS)] == sorted(HEADLINE_CHARTS), titles
    # The sections' headers below the toolbar: ours (its 4 charts), then MLflow's "Model metrics".
    page.wait_for(f"(() => {{ const t = document.body.innerText.split('Auto-refresh')[1] || ''; "
                  f"const ours = t.indexOf('headline\\n({len(HEADLINE_CHARTS)})'); "
                  "return ours >= 0 && t.indexOf('Model metrics') > ours; })()", what="the headline section first")
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


def _model_training_stored(page, server) -> None:
    """The one-time step the sweep prints, unless this browser has taken it already."""
    page.goto(f"{server.url}/#/")
    page.wait_for_text("Model training")
    if page.evaluate("localStorage.getItem('mlflow.workflowType_v1')") != '"machine_learning"':
        page.click_text("Model training", selector="[role=button]")
        page.wait_for("localStorage.getItem('mlflow.workflowType_v1') === '\"machine_learning\"'", what="the side stored")


def _assistant_closed(page) -> None:
    """Close MLflow's Assistant panel with its x, as docs/review.md suggests (MLflow remembers it
    in the browser): the pages that follow get the whole width."""
    close = "document.querySelector('button[data-component-id=\"mlflow.assistant.chat_panel.close\"]')"
    page.click(close, what="the Assistant's close button")
    page.wait_for(f"!{close}", what="the Assistant closed")


def _select_rows(page, count: int, tries: int = 3) -> None:
    """Tick the first `count` rows' checkboxes in MLflow's runs table. The first tick swaps the
    table's toolbar (Compare, Delete, ...), which can move the rows under a click in flight: a
    row still unticked after a moment is clicked again."""
    boxes = "Array.from(document.querySelectorAll('input.ag-checkbox-input[aria-label^=\"Press Space to toggle row\"]'))"
    for row in range(count):
        for attempt in range(tries):
            if not page.evaluate(f"{boxes}[{row}] && {boxes}[{row}].checked"):
                page.click(f"{boxes}.map(e => e.closest('.ag-checkbox-input-wrapper') || e)[{row}]",
                           what=f"row {row}'s checkbox")
            try:
                page.wait_for(f"{boxes}[{row}].checked", timeout_s=10, what=f"row {row} ticked")
                break
            except BrowserError:
                if attempt == tries - 1:
                    raise
    page.wait_for(f"{boxes}.filter(e => e.checked).length === {count}", what=f"{count} rows selected")


def test_compare_from_the_printed_link_is_the_training_view(reviewed):
    server, lines, trials, page, shots = reviewed
    _model_training_stored(page, server)
    _assistant_closed(page)
    page.goto(lines[0].split(": ", 1)[1])
    page.wait_for_text(*(run.info.run_name for run in trials), timeout_s=90)
    _select_rows(page, 2)
    page.click("Array.from(document.querySelectorAll('button')).find(e => e.innerText.trim() === 'Compare' && !e.disabled)",
               what="the Compare button")
    page.wait_for("location.hash.includes('compare-runs')", what="the Compare page")
    # MLflow's training comparison: the runs side by side, its plots of params against metrics.
    page.wait_for_text("Comparing 2 Runs", "Parallel Coordinates Plot", "Run details", timeout_s=60)
    text = page.text()
    assert not [mark for mark in GENAI_MARKS if mark in text], (page.url(), text[:800])
    page.screenshot(shots / "review_compare.png")


def test_the_grouped_link_charts_a_bar_per_model_and_modalities_with_the_majority_class(reviewed):
    server, lines, trials, page, shots = reviewed
    link = next(line for line in lines if "grouped by model and modalities" in line).split(": ", 1)[1]
    page.goto(link)
    groups = {(run.data.tags["model"], run.data.tags["modalities"]) for run in trials}
    # The view's first chart: per group, its last validation accuracy and the majority class's (2 bars).
    first = "document.querySelector('.js-plotly-plot')"
    bars = f"{first} && {first}.querySelectorAll('.barlayer .point').length"
    page.wait_for(f"{bars} === {2 * len(groups)}", what=f"the first chart's {2 * len(groups)} bars")
    # Which bar is which (MLflow hides the bar chart's labels; a hover shows them): a group's
    # bar is the mean of its trials' last values (one trial per group here).
    traces = page.evaluate(f"{first}.data.map(t => [t.name, t.y, t.x])")
    assert [name for name, _, _ in traces] == ["headline/val_azimuth_acc", "majority_azimuth_acc"], traces
    for name, cells, values in traces:
        expected = {f"tag.model.{run.data.tags['model']},tag.modalities.{run.data.tags['modalities']}":
                    run.data.metrics[name] for run in trials}
        assert dict(zip(cells, values)) == pytest.approx(expected), (name, cells, values)
    page.wait_for_text("headline/val_azimuth_acc vs majority_azimuth_acc")
    page.wait_for("document.querySelectorAll('.js-plotly-plot').length >= 5", what="the headline charts drawn")
    page.screenshot(shots / "review_grouped_charts.png")
