"""The relative-pose study as a sweep: the `fusion` grids through search.run, Ray Tune and MLflow.

Real pieces throughout: rendered view pairs, ResNet-18s, a local Ray, a sqlite MLflow store.
The "ImageNet" file is a ResNet-18 state dict the test saves itself (nothing is downloaded),
put where torchvision's file would be (TORCH_HOME/hub/checkpoints).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pix3d.errors import Pix3DError
from relpose.models import IMAGENET_FILE
from search import run as search_run
from search.grids import GRIDS, get_grid
from tests.test_relpose import _fake_resnet18_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    _fake_resnet18_file(checkpoints / IMAGENET_FILE)
    return home


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO), **extra)
    env.pop("RAY_ADDRESS", None)
    return env


def test_fusion_grid_is_the_full_factorial():
    grid = get_grid("fusion")
    assert grid.kind == "fusion"
    trials = grid.trials(2, {"epochs": 1})
    assert len(trials) == grid.size(2) == 32
    combos = {(t["fusion"], t["weights"], t["freeze_backbone"], t["loss"], t["seed"]) for t in trials}
    assert len(combos) == 32
    assert {t["weights"] for t in trials} == {"imagenet", "scratch"}
    assert {t["freeze_backbone"] for t in trials} == {False, True}
    assert {t["backbone"] for t in trials} == {"resnet18"}
    assert {t["backbone"] for t in get_grid("fusion_alexnet").trials(1, {})} == {"alexnet"}


def test_fusion_dry_run_lists_the_frozen_axis_and_three_seeds(tmp_path, monkeypatch, capsys, torch_home):
    """The ImageNet question as a grid: weights x frozen x fusion x loss, 3 seeds by default."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    code = search_run.main(["--grid", "fusion", "--dry-run", "--budget", "quick", "--storage", str(tmp_path / "results")])
    out = capsys.readouterr().out
    assert code == 0
    assert "grid fusion: 48 trials" in out
    listed = [line.split() for line in out.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert len(listed) == 48
    cells = {tuple(sorted(w for w in words[1:] if "=" in w and not w.startswith("seed="))) for words in listed}
    assert len(cells) == 16  # 2 fusions x 2 weights x 2 frozen x 2 losses
    for value in ("freeze_backbone=True", "freeze_backbone=False", "weights=imagenet", "weights=scratch"):
        assert sum(value in words for words in listed) == 24, value
    assert {w for words in listed for w in words if w.startswith("seed=")} == {"seed=0", "seed=1", "seed=2"}


def test_missing_imagenet_file_stops_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    storage = tmp_path / "results"
    with pytest.raises(Pix3DError) as info:
        search_run.main(["--grid", "fusion", "--storage", str(storage), "--no-mlflow"])
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "empty_home" / "hub" / "checkpoints" / IMAGENET_FILE) in message
    assert "--skip-missing-weights" in message
    assert not (storage / "fusion").exists()


def test_skip_missing_weights_keeps_the_scratch_half(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    code = search_run.main(["--grid", "fusion", "--dry-run", "--skip-missing-weights",
                            "--storage", str(tmp_path / "results")])
    out = capsys.readouterr().out
    assert code == 0
    assert "grid fusion: 24 trials" in out and "weights=scratch" in out and "imagenet" not in out.split("grid fusion")[1]


def test_a_relative_torch_home_reaches_the_trials_as_an_absolute_path(torch_home, tmp_path, monkeypatch):
    """Each trial runs in its own working directory: a relative weights path would miss the file there."""
    from ray import tune

    from search.kinds.fusion import check_imagenet_weights

    monkeypatch.chdir(torch_home.parent)
    monkeypatch.setenv("TORCH_HOME", torch_home.name)
    space = check_imagenet_weights(get_grid("fusion"), {"weights": tune.grid_search(["imagenet", "scratch"])},
                                   skip_missing=False, log=lambda _: None)
    path = Path(space["imagenet_weights"])
    assert path.is_absolute() and path == torch_home / "hub" / "checkpoints" / IMAGENET_FILE
    monkeypatch.chdir(tmp_path)
    assert path.is_file()


@pytest.mark.slow  # 8 ResNet-18 trials behind a Ray start-up: 2.5 min on the shared 2-core machine, 7 at load 16
def test_fusion_smoke_grid_end_to_end_with_mlflow_rows(tmp_path, torch_home):
    storage = tmp_path / "results"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--grid", "fusion_smoke", "--storage", str(storage),
         "--cache", str(tmp_path / "cache"), "--mlflow-uri", uri, "--max-failures", "0"],
        cwd=tmp_path, env=_env(TORCH_HOME=str(torch_home)), capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "sweep fusion_smoke: 8 trials, 0 failed" in proc.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fusion_smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    combos = {(r.data.tags["fusion"], r.data.tags["weights"], r.data.tags["loss"]) for r in children}
    assert len(combos) == 8
    for run in children:
        assert run.info.status == "FINISHED"
        metrics = run.data.metrics
        assert metrics["val_rotation_err_deg"] >= 0 and metrics["identity_rotation_err_deg"] > 0
        assert run.data.params["pairs_n"] == "24" and run.data.params["pairs_size"] == "32"
        assert run.info.run_name.startswith("relpose ")
    # ImageNet trials were given the test's own file, scratch ones none.
    imagenet = [r for r in children if r.data.tags["weights"] == "imagenet"]
    assert all(r.data.params["imagenet_weights"].startswith(str(torch_home)) for r in imagenet)

    # The table the sweep printed, and the same one rebuilt by analysis.table.
    table = (tmp_path / "table_out" / "fusion_smoke" / "table.md").read_text()
    png = tmp_path / "table_out" / "fusion_smoke" / "table.png"
    assert png.read_bytes()[:4] == b"\x89PNG"  # the curves and ratios, as a picture
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id, "table")}
    assert {"table/table.md", "table/table.csv", "table/table.png"} <= logged, logged
    rows = [line for line in table.splitlines() if line.startswith(("| early", "| late"))]
    assert len(rows) == 8
    rebuilt = subprocess.run([sys.executable, "-m", "analysis.table", "--experiment", "fusion_smoke",
                              "--mlflow-uri", uri, "--format", "csv", "--no-log"],
                             cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    header = rebuilt.stdout.splitlines()[0]
    assert "rotation_err_deg" in header and "no_motion_rotation_err_deg" in header
    assert len([l for l in rebuilt.stdout.splitlines()[1:] if l.startswith(("early", "late"))]) == 8


def test_relpose_trial_crash_is_retried_from_its_checkpoint(ray_session, tmp_path):
    """A trial that crashes before reporting epoch 2 resumes from the epoch-1 checkpoint."""
    from relpose.pairs import PairConfig, make_pairs

    grid = get_grid("fusion_smoke")
    data = make_pairs(PairConfig(n=12, size=32, seed=5), progress=False)
    space = grid.param_space(1, {})
    space.update(fusion="early", weights="scratch", loss="pose", epochs=2, pairs_n=12, pairs_size=32,
                 cpus_per_trial=1, gpus_per_trial=0, crash_once_at_epoch=2)
    space.pop("pairs_max_orbit_deg", None)
    results = search_run.run_sweep(grid, space, data, storage=str(tmp_path), experiment="crash", max_failures=1)
    assert len(results) == 1 and not results.errors
    result = results[0]
    reported = [int(e) for e in result.metrics_dataframe["epoch"]]
    assert reported == sorted(set(reported)) and reported[-1] == 2
    assert result.metrics["resumed_from_epoch"] == 1
    assert result.checkpoint is not None


@pytest.mark.parametrize("name", [name for name, grid in GRIDS.items() if grid.kind == "fusion"])
def test_every_fusion_trial_is_a_valid_relpose_config(name, tmp_path):
    from relpose.train import BUDGETS, RelPoseConfig
    from search.kinds.fusion import resolve_budget
    from trainables.relpose import relpose_config_from_tune

    _, budget = resolve_budget("quick", 0, log=lambda _: None)
    assert budget["pairs_size"] == BUDGETS["quick"]["pairs"]["size"]
    weights_file = str(tmp_path / IMAGENET_FILE)
    for trial in get_grid(name).trials(1, budget):
        config = relpose_config_from_tune({**trial, "imagenet_weights": weights_file, "cpus_per_trial": 2,
                                           "gpus_per_trial": 0})
        assert isinstance(config, RelPoseConfig)
        assert config.threads == 2 and config.device == "cpu"
        assert config.weights == (weights_file if trial["weights"] == "imagenet" else None)


def _log_relpose_run(client, experiment_id: str, parent_id: str, *, loss: str, seed: int,
                     history: list[dict]) -> None:
    """One trial run as trainables.relpose + search.tracking log it: tags, params, per-epoch metrics."""
    from analysis.mlflow_store import ROLE_TAG

    tags = {ROLE_TAG: "trial", "mlflow.parentRunId": parent_id, "fusion": "early", "weights": "scratch",
            "loss": loss, "freeze_backbone": "False", "backbone": "resnet18", "lr": "0.0003", "seed": str(seed)}
    run = client.create_run(experiment_id, tags=tags)
    for epoch, metrics in enumerate(history, 1):
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value, step=epoch)
    client.set_terminated(run.info.run_id)


def test_fusion_table_reports_the_test_split_over_seeds_and_early_stops_on_validation(tmp_path):
    """The table's headline is the held-out test split, mean ± std over 3 seeds; `--at best`
    picks each run's epoch on validation and reports that epoch's test error."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    from analysis.fusion_table import build_table

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("fusion_held_out")
    parent = client.create_run(experiment_id, tags={"pix3d.role": "sweep"})
    rng = np.random.default_rng(0)
    test_last, test_at_best_val = {}, {}
    for loss in ("photometric", "pose"):
        for seed in range(3):
            val = rng.uniform(5, 10, size=3)
            test = rng.uniform(5, 10, size=3)
            history = [{"val_rotation_err_deg": v, "identity_rotation_err_deg": 10.0,
                        "test_rotation_err_deg": t, "test_identity_rotation_err_deg": 12.0,
                        "test_translation_err_m": 0.5, "test_identity_translation_err_m": 0.6,
                        "test_photometric_l1": 0.07, "test_identity_photometric_l1": 0.08,
                        "test_true_motion_photometric_l1": 0.03, "test_outside_fraction": 0.01}
                       for v, t in zip(val, test)]
            _log_relpose_run(client, experiment_id, parent.info.run_id, loss=loss, seed=seed, history=history)
            test_last.setdefault(loss, []).append(test[-1])
            test_at_best_val.setdefault(loss, []).append(test[int(np.argmin(val))])
    client.set_terminated(parent.info.run_id)

    for at, expected in (("last", test_last), ("best", test_at_best_val)):
        table = build_table(uri, "fusion_held_out", at=at)
        assert table.split == "test"
        frame = table.to_frame().set_index("loss")
        for loss, values in expected.items():
            assert frame.loc[loss, "n"] == 3
            assert frame.loc[loss, "rotation_err_deg"] == pytest.approx(np.mean(values), abs=1e-4)
            assert frame.loc[loss, "rotation_err_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-4)
            assert frame.loc[loss, "ratio_std"] == pytest.approx(np.std(np.array(values) / 12.0, ddof=1), abs=1e-4)
            assert frame.loc[loss, "no_motion_rotation_err_deg"] == 12.0
        markdown = table.to_markdown()
        assert "held-out test rotation error" in markdown and "resnet18 fine-tuned" in markdown
    from analysis.fusion_table import write_table

    written = write_table(table, tmp_path / "out", log_to_mlflow=False)
    assert written["png"].read_bytes()[:4] == b"\x89PNG" and "| early | scratch |" in written["md"].read_text()


def test_relpose_trials_are_named_and_tagged_by_every_axis():
    """Frozen and fine-tuned trials differ in name and tags, so neither hides the other."""
    from analysis.run_fields import trial_run_name, trial_tags

    config = {"fusion": "early", "weights": "scratch", "loss": "pose", "freeze_backbone": True,
              "backbone": "alexnet", "lr": 1e-3, "seed": 0}
    assert trial_run_name(config) == "relpose early scratch pose frozen alexnet lr=0.001 s0"
    assert trial_run_name({**config, "freeze_backbone": False, "backbone": "resnet18"}) == \
        "relpose early scratch pose lr=0.001 s0"
    tags = trial_tags(config)
    assert tags["freeze_backbone"] == "True" and tags["backbone"] == "alexnet"
