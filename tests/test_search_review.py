"""A search reads as a search: trials ranked at a common budget, a stopped trial stopped
everywhere (Optuna PRUNED, the MLflow tag, the view), importances that say what they rest on.

Fast (~5 s alone; the dashboard test starts one server process, ~15 s): a real Optuna RDB study and a real sqlite MLflow store, the runs logged by the
project's SweepLogger fed the tiny trainable's epochs (tests/sweeps.py) without Ray. Expected
values come from `tiny_pose_epochs` itself, not from the view.
"""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")
from ray import tune  # noqa: E402

from analysis.run_fields import stopped_text  # noqa: E402
from analysis.search_view import OPTUNA_TRIAL_TAG, build_search_view  # noqa: E402
from search.pruning import STOPPED_ATTR, PruningOptunaSearch  # noqa: E402
from search.study import StudyLocation, search_tags  # noqa: E402
from tests.sweeps import log_sweep, tiny_pose_epochs  # noqa: E402

EPOCHS = 3
# (lr, batch_size, the epoch ASHA stopped it at; None: all epochs)
TRIALS = [(1e-5, 8, None), (3e-4, 16, 1), (1e-3, 8, 2), (1e-4, 16, None)]


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """Four trials of one study, two of them stopped early; the view built from store and study."""
    root = tmp_path_factory.mktemp("search-review")
    uri, storage = f"sqlite:///{root / 'mlflow.db'}", f"sqlite:///{root / 'optuna.db'}"
    study = optuna.create_study(study_name="srch", storage=storage, direction="maximize")
    distributions = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
                     "batch_size": optuna.distributions.CategoricalDistribution([8, 16])}
    configs, curves = [], []
    for lr, batch_size, stop in TRIALS:
        config = dict(model="combined_net", modalities="rgb+mask", seed=0, lr=lr, batch_size=batch_size,
                      epochs=EPOCHS, seed_quirks=False, stop_at_epoch=stop)
        curve = [r["val_azimuth_acc"] for r in tiny_pose_epochs(config)][: stop or EPOCHS]
        configs.append(config)
        curves.append(curve)
        fixed = optuna.trial.create_trial(
            params={"lr": lr, "batch_size": batch_size}, distributions=distributions,
            intermediate_values=dict(enumerate(curve, start=1)),
            state=optuna.trial.TrialState.PRUNED if stop else optuna.trial.TrialState.COMPLETE,
            value=None if stop else curve[-1])
        study.add_trial(fixed)
    tags = search_tags(StudyLocation(storage, "srch"), metric="val_azimuth_acc", mode="max",
                       params=("lr", "batch_size"))
    log_sweep(uri, "srch", configs, sweep_name="srch", grid="optuna", search=tags)
    return uri, study, curves, build_search_view(uri, "srch")


def test_trials_are_ranked_at_the_epoch_every_trial_reached(search):
    _, study, curves, view = search
    budget = min(len(c) for c in curves)
    assert view.budget == budget == 1
    numbers = {(t.params["lr"], t.params["batch_size"]): t.number for t in study.trials if t.params}
    at_budget = {numbers[(lr, bs)]: 100 * curve[budget - 1] for (lr, bs, _), curve in zip(TRIALS, curves)}
    expected = sorted(at_budget, key=lambda n: (-at_budget[n], n))
    assert list(view.ranked()["number"]) == expected
    assert list(view.ranked()["at_budget"]) == pytest.approx([at_budget[n] for n in expected])
    text = view.to_markdown()
    assert f"at epoch {budget}, the epoch every ranked trial reached" in text
    assert f"**Best configuration** at epoch {budget}: trial {expected[0]}," in text
    assert "?workflowType=machine_learning" in text.split("**Best configuration**")[1].splitlines()[0]
    # The last values stay beside it, with the epoch each trial reached.
    last = dict(zip(view.trials["number"], view.trials["epochs"]))
    assert {last[numbers[(lr, bs)]] for lr, bs, _ in TRIALS} == {1, 2, EPOCHS}


def test_a_stopped_trial_reads_as_stopped_in_the_view_and_in_mlflow(search):
    from mlflow.tracking import MlflowClient

    uri, study, _, view = search
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("srch").experiment_id], "tags.`pix3d.role` = 'trial'")
    stopped = {float(r.data.params["lr"]): r.data.tags.get("stopped_early", "") for r in runs}
    assert stopped == {lr: stopped_text(stop) if stop else "" for lr, _, stop in TRIALS}
    assert {r.data.tags["epochs_trained"] for r in runs} == {"1", "2", str(EPOCHS)}
    text = view.to_markdown()
    for _, _, stop in TRIALS:
        if stop:
            assert f"{stop} ({stopped_text(stop)})" in text
    # Runs carry their Optuna trial number; names carry the sampled values, not the modalities.
    numbers = {r.data.params["lr"]: r.data.tags[OPTUNA_TRIAL_TAG] for r in client.search_runs(
        [runs[0].info.experiment_id], "tags.`pix3d.role` = 'trial'")}
    by_lr = {str(t.params["lr"]): str(t.number) for t in study.trials if t.params}
    assert {float(k): v for k, v in numbers.items()} == {float(k): v for k, v in by_lr.items()}
    assert all("rgb+mask" not in r.info.run_name and " bs=" in r.info.run_name for r in runs)


def test_importances_say_how_many_trials_they_rest_on(search):
    _, _, _, view = search
    assert view.importance_trials == len(TRIALS)
    assert set(view.importances) == {"lr", "batch_size"}
    assert f"fANOVA over {len(TRIALS)} trials' values at epoch {view.budget}" in view.to_markdown()


def test_the_searcher_tells_optuna_a_trial_asha_stopped_as_pruned():
    searcher = PruningOptunaSearch(space={"lr": tune.loguniform(1e-5, 1e-2)}, metric="val_azimuth_acc",
                                   mode="max", max_epochs=EPOCHS)
    for trial_id, epochs in (("stopped", 1), ("full", EPOCHS)):
        assert searcher.suggest(trial_id) is not None
        result = {}
        for epoch in range(1, epochs + 1):
            result = {"val_azimuth_acc": 0.1 * epoch, "epoch": epoch, "training_iteration": epoch}
            searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, result)
    stopped, full = searcher._ot_study.trials
    assert stopped.state.name == "PRUNED" and stopped.user_attrs[STOPPED_ATTR] == 1
    assert stopped.intermediate_values == {1: pytest.approx(0.1)}
    assert full.state.name == "COMPLETE" and full.value == pytest.approx(0.1 * EPOCHS)
    # An errored trial stays FAIL, not pruned.
    searcher.suggest("broken")
    searcher.on_trial_complete("broken", None, error=True)
    assert searcher._ot_study.trials[-1].state.name == "FAIL"


def test_the_dashboard_serves_the_persisted_study_on_localhost(search, capsys):
    """`python -m analysis.dashboard` finds the study through MLflow and serves it (no network)."""
    pytest.importorskip("optuna_dashboard")
    import json
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.mlflow_server import free_port

    uri, study, _, _ = search
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "analysis.dashboard", "--experiment", "srch", "--mlflow-uri", uri,
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, studies = time.monotonic() + 90, None
        while time.monotonic() < deadline and studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as reply:
                    studies = json.load(reply)["study_summaries"]
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == ["srch"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=10) as reply:
            assert b"bundle.js" in reply.read()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    from analysis.dashboard import main
    from pix3d.cli import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--experiment", "nope", "--mlflow-uri", uri])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
