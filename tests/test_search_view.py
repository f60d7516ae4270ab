"""A model-based search reads as a search: best configuration, top trials, importances, plots,
and a study that lives beside the sweep so that a resumed search continues it.

Real Ray, real pix3d training on the tiny synthetic set of tests/test_search.py, a real
sqlite MLflow store and a real Optuna RDB storage. Expected values are read from the Optuna
study with Optuna's own functions, not from analysis.search_view.
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
from ray import tune  # noqa: E402

from pix3d.data.prepare import prepare  # noqa: E402
from pix3d.errors import UsageError  # noqa: E402
from pix3d.train import BUDGETS  # noqa: E402
from search.grids import get_grid  # noqa: E402
from search.options import SweepSettings, get_args_parser, settings_for, sized_grid, write_settings  # noqa: E402
from search.storage import experiment_path  # noqa: E402
from search.study import study_location  # noqa: E402
from tests.test_search import QUICK_SIZE, make_tiny_dataset, run_main, run_search  # noqa: E402
from tests.inproc import run_module

PARAMS = ("model", "lr", "batch_size", "weight_decay")
EPOCHS = 2


@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory):
    """`search.run --grid optuna --samples 4` through the command, on the tiny set, at EPOCHS
    epochs per trial: two, the fewest at which ASHA can stop a trial early and the view must
    rank trials at the epoch every one of them reached."""
    root = tmp_path_factory.mktemp("search-view")
    folder, cache = make_tiny_dataset(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    proc = run_search("--grid", "optuna", "--samples", "4", "--epochs", str(EPOCHS), "--budget", "quick",
                      "--data", str(folder), "--cache", str(cache), "--storage", str(root / "ray"),
                      "--mlflow-uri", uri, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    study = optuna.load_study(study_name="optuna", storage=f"sqlite:///{root / 'ray' / 'optuna' / 'optuna.db'}")
    return root, folder, cache, uri, proc.stdout, study



def _last(trial) -> tuple[int, float]:
    """(epochs a trial ran, its last value), from the study: ASHA's stops are PRUNED there."""
    if trial.state.name == "COMPLETE":
        return EPOCHS, trial.value
    epoch = trial.user_attrs["stopped_at_epoch"]
    return epoch, trial.intermediate_values[epoch]


def _budget(study) -> int:
    return min(_last(t)[0] for t in study.trials)


def _at_budget(trial, budget: int) -> float:
    epochs, value = _last(trial)
    return value if epochs == budget else trial.intermediate_values[budget]


def _ranked(study):
    """Trials ranked on their value at the epoch every trial reached (like with like)."""
    budget = _budget(study)
    return sorted(study.trials, key=lambda t: (-_at_budget(t, budget), t.number))


def test_the_sweep_ends_with_the_search_view(tiny_search):
    root, _, _, _, out, study = tiny_search
    assert len(study.trials) == 4 and set(study.trials[0].params) == set(PARAMS)
    best, budget = _ranked(study)[0], _budget(study)
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert (f"**Best configuration** at epoch {budget}: trial {best.number}, val_azimuth_acc "
            f"{100 * _at_budget(best, budget):.1f}%") in out
    view = out[out.index("### Search `optuna`"):]
    rows = [line for line in view.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[2]) for r in rows[:4]] == [t.number for t in _ranked(study)]
    assert f"fANOVA over {len(study.trials)} trials' values at epoch {budget}" in view
    for name in PARAMS:
        assert f"| {name} | " in view
    assert "majority class" not in out and "no finished runs" not in out
    for name in ("search_history.png", "search_parallel.png", "search_importance.png"):
        assert (root / "table_out" / "optuna" / name).read_bytes()[:4] == b"\x89PNG"


def test_the_view_is_logged_to_the_parent_run(tiny_search):
    from mlflow.tracking import MlflowClient

    _, _, _, uri, _, study = tiny_search
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("optuna")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`pix3d.role` = 'sweep'")
    assert parent.data.tags["search.kind"] == "optuna" and parent.data.tags["search.study"] == "optuna"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {f"search/search_{n}.png" for n in ("history", "parallel", "importance")} <= logged
    best = _ranked(study)[0]
    assert parent.data.metrics["search.best.val_azimuth_acc"] == pytest.approx(100 * _at_budget(best, _budget(study)))
    assert {f"search.importance.{p}" for p in PARAMS} <= set(parent.data.metrics)


def test_analysis_table_prints_the_search_view(tiny_search, capsys, tmp_path):
    _, _, _, uri, _, study = tiny_search
    code, out, _ = run_main_table(["--experiment", "optuna", "--mlflow-uri", uri, "--out", str(tmp_path)], capsys)
    assert code == 0 and out.startswith("### Search `optuna`")
    assert f"trial {_ranked(study)[0].number}," in out and "Parameter importances" in out
    assert (tmp_path / "search_parallel.png").is_file()
    code, _, err = run_main_table(["--experiment", "optuna", "--mlflow-uri", uri, "--format", "latex",
                                   "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and err == "error: --format latex: a search's view is md or csv\n"


def test_without_its_study_the_view_comes_from_the_mlflow_runs(tiny_search):
    from analysis.search_view import build_search_view

    root, _, _, uri, _, study = tiny_search
    db = root / "ray" / "optuna" / "optuna.db"
    db.rename(db.with_suffix(".moved"))
    try:
        view = build_search_view(uri, "optuna")
    finally:
        db.with_suffix(".moved").rename(db)
    assert view.importances == {} and any(f"no file {db}" in note for note in view.notes)
    expected = sorted((round(100 * _last(t)[1], 6), t.params["model"]) for t in study.trials)
    assert sorted((round(v, 6), m) for v, m in zip(view.trials["value"], view.trials["model"])) == expected
    assert view.best()["at_budget"] == pytest.approx(100 * _at_budget(_ranked(study)[0], _budget(study)))


def run_main_table(argv, capsys=None):
    proc = run_module("analysis.table", *argv)
    return proc.returncode, proc.stdout, proc.stderr


class InterruptOnce(tune.Callback):
    """Stops the sweep as Ctrl-C would (Tune also listens to SIGUSR1) when the first trial
    ends; once only (a resumed sweep restores its callbacks)."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text("interrupted")
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.slow  # two sweeps of pix3d trainings one at a time: ~70 s on a shared 2-core machine
def test_a_resumed_search_continues_its_study(ray_session, tiny_search, tmp_path):
    from search.run import run_sweep

    _, folder, cache, _, _, _ = tiny_search
    data = prepare(folder, QUICK_SIZE, cache_dir=cache, progress=False, log=lambda _: None)
    grid = replace(sized_grid(get_grid("optuna"), 4), max_concurrent=1)  # one at a time: a clean cut
    space = grid.param_space(None, BUDGETS["quick"])
    space.update(epochs=1, cpus_per_trial=1, gpus_per_trial=0)
    storage = str(tmp_path / "ray")
    run_sweep(grid, space, data, storage=storage, experiment="cut", callbacks=[InterruptOnce(str(tmp_path / "m"))])
    location = study_location(experiment_path(storage, "cut"), "cut")
    before = optuna.load_study(study_name="cut", storage=location.storage).trials
    assert 1 <= len(before) < 4  # interrupted: the study is on disk, part done

    results = run_sweep(grid, space, data, storage=storage, experiment="cut", resume=True)
    after = optuna.load_study(study_name="cut", storage=location.storage).trials
    assert [t.number for t in after] == [0, 1, 2, 3] and len(results) == 4
    assert [t.params for t in after[:len(before)]] == [t.params for t in before]  # the same trials, grown
    assert all(t.state.name == "COMPLETE" for t in after)


def test_samples_is_checked(capsys, tmp_path):
    code, _, err = run_main(["--grid", "smoke", "--samples", "3", "--storage", str(tmp_path)])
    assert code == 2 and err == ("error: --samples: grid smoke is an exhaustive grid, not a search; "
                                 "use --seeds, or a search grid (optuna)\n")
    code, _, err = run_main(["--grid", "optuna", "--samples", "0"])
    assert code == 2 and err.startswith("error: --samples must be positive") and err.count("\n") == 1
    sweep = tmp_path / "optuna"
    sweep.mkdir()
    write_settings(str(sweep), SweepSettings("optuna", "synthetic", None, "quick", None, None, 4), "cmd")
    def resumed(samples: str):
        args = get_args_parser().parse_args(["--resume", "--experiment", "optuna", "--storage", str(tmp_path),
                                             "--samples", samples])
        return settings_for(args, str(tmp_path), "optuna")
    assert resumed("6").samples == 6  # grows the same study (test_resume_with_more_samples_grows_the_same_study)
    with pytest.raises(UsageError, match="--samples 3: the search already asked for 4 trials; .* not shrink"):
        resumed("3")


@pytest.mark.slow  # one more quick trial of the module's search on the tiny set: ~1 min on 2 shared cores
def test_resume_with_more_samples_grows_the_same_study(tiny_search, capsys):
    root, _, _, uri, _, _ = tiny_search
    storage = f"sqlite:///{root / 'ray' / 'optuna' / 'optuna.db'}"
    before = [(t.number, t.params, t.state.name) for t in optuna.load_study(study_name="optuna", storage=storage).trials]
    code, _, err = run_main(["--resume", "--experiment", "optuna", "--samples", "3", "--storage", str(root / "ray")])
    assert code == 2 and "can grow (--samples above 4), not shrink" in err
    proc = run_search("--resume", "--experiment", "optuna", "--samples", "5", "--storage", str(root / "ray"), cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "grown from 4 to 5 trials (the same Optuna study)" in proc.stdout
    after = optuna.load_study(study_name="optuna", storage=storage).trials
    assert [(t.number, t.params, t.state.name) for t in after[:4]] == before and len(after) == 5
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("optuna")
    assert len(client.search_runs([experiment.experiment_id], "tags.`pix3d.role` = 'sweep'")) == 1  # the same parent
    assert len(client.search_runs([experiment.experiment_id], "tags.`pix3d.role` = 'trial'")) == 5
