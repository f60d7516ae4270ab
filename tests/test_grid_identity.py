"""Trial identity from the grid: a grid over a new axis (`batch_size`) reaches the table whole.

The grid is registered here, expanded by its own `param_space`, run on the real Ray through
`search.run.run_sweep` with the tiny trainable of tests/sweeps.py (batch_size picks its
minibatches), logged by the tracking callback `search.report.tracking_callbacks` builds, and
read back by `analysis.table.build_table`: nothing in analysis/ names `batch_size`.
"""

from __future__ import annotations

import argparse
import json

import pytest
from ray import tune

from analysis.mlflow_store import ROLE_TAG
from analysis.run_fields import VARIES_TAG
from analysis.sync import sync
from analysis.table import build_table, table_metrics
from search.grids import GRIDS, Grid, get_grid, varied_keys
from search.report import tracking_callbacks
from search.run import run_sweep
from tests.sweeps import tiny_pose_trainable

BATCH_SIZES = (8, 32)
SEEDS = 2


def _trainable(config, data=None):
    """run_sweep hands the trainable its data (tune.with_parameters); the tiny one needs none."""
    tiny_pose_trainable(config)


@pytest.fixture(scope="module")
def batch_sweep(ray_session, tmp_path_factory):
    """A 4-trial sweep of a grid over batch_size (one model, RGB, 2 seeds, 2 epochs) logged to
    a SQLite MLflow store; (uri, Tune results, storage folder). About 10 s on 2 loaded cores."""
    root = tmp_path_factory.mktemp("grid_identity")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(GRIDS, "batch", Grid("batch", "test: batch size x seeds", models=("combined_net",),
                                           subsets=(("rgb",),), lrs=(1e-4,), axes={"batch_size": BATCH_SIZES},
                                           fixed={"epochs": 2, "seed_quirks": False}, default_seeds=SEEDS))
        grid = get_grid("batch")
    space = grid.param_space()
    callbacks = tracking_callbacks(argparse.Namespace(no_mlflow=False, mlflow_uri=uri), experiment="batch",
                                   grid=grid, command="pytest batch", manifest={"dataset": "tiny"},
                                   storage=str(root / "ray"), sweep_path=str(root / "ray" / "batch"), uri=uri,
                                   space=space)
    results = run_sweep(grid, space, None, storage=str(root / "ray"), experiment="batch",
                        callbacks=callbacks, function=_trainable)
    assert len(results) == len(BATCH_SIZES) * SEEDS and not results.errors
    return uri, results, root / "ray" / "batch"


def _parent(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("batch").experiment_id
    (parent,) = client.search_runs([experiment], filter_string=f"tags.`{ROLE_TAG}` = 'sweep'")
    return client, parent


def _check_table(uri: str, results) -> None:
    """Every run is in the table: one row per batch size, named by it, each cell the Tune
    results of its batch size over both seeds; nothing left out as a repeat."""
    table = build_table(uri, "batch")
    assert [row.label for row in table.rows] == [f"combined_net batch_size={b}" for b in BATCH_SIZES]
    for row, batch_size in zip(table.rows, BATCH_SIZES):
        expected = sorted(100 * r.metrics["val_azimuth_acc"] for r in results
                          if r.config["batch_size"] == batch_size)
        assert sorted(row.cells["rgb"].values) == pytest.approx(expected) and len(expected) == SEEDS
        assert row.axes == {"batch_size": str(batch_size)}
    assert not any("left out" in note for note in table.notes)
    assert set(table_metrics(table)) >= {f"table.combined_net.batch_size_{b}.rgb" for b in BATCH_SIZES}


def test_a_grid_over_batch_size_reaches_the_table_whole(batch_sweep):
    uri, results, _ = batch_sweep
    _, parent = _parent(uri)
    assert json.loads(parent.data.tags[VARIES_TAG]) == ["model", "modalities", "lr", "seed", "batch_size"]
    # The batch sizes learned differently: rows that merged them would not match Tune's values.
    by_size = {b: [r.metrics["val_azimuth_acc"] for r in results if r.config["batch_size"] == b] for b in BATCH_SIZES}
    assert by_size[8] != by_size[32]
    _check_table(uri, results)



def test_the_lr_view_keeps_the_other_axes_apart(batch_sweep):
    """lr.png's points average seeds only: a batch size is a line of its own, not merged."""
    from analysis.table import lr_points

    uri, results, _ = batch_sweep
    points = lr_points(build_table(uri, "batch"))
    assert sorted(p["modalities"] for p in points) == ["rgb (batch_size=32)", "rgb (batch_size=8)"]
    assert [p["n"] for p in points] == [SEEDS, SEEDS]
    for point in points:
        size = int(point["modalities"].split("=")[1].rstrip(")"))
        tune_values = [100 * r.metrics["val_azimuth_acc"] for r in results if r.config["batch_size"] == size]
        assert point["mean"] == pytest.approx(sum(tune_values) / len(tune_values))

def test_runs_of_a_parent_without_the_tag_fall_back_to_the_usual_keys(batch_sweep):
    """Logged before the tag existed: model/subset/lr/seed, so a batch size repeats another and
    the latest is kept, with a note (what every grid over a new axis got before)."""
    uri, results, _ = batch_sweep
    client, parent = _parent(uri)
    client.delete_tag(parent.info.run_id, VARIES_TAG)
    try:
        table = build_table(uri, "batch")
    finally:
        client.set_tag(parent.info.run_id, VARIES_TAG, parent.data.tags[VARIES_TAG])
    assert [row.label for row in table.rows] == ["combined_net"]
    assert table.rows[0].cells["rgb"].n == SEEDS
    assert f"{SEEDS} run(s) repeat a model/subset/lr/seed of a later run and were left out (latest kept)" in table.notes


def test_a_replay_records_what_the_grid_varies(batch_sweep, tmp_path):
    """analysis.sync reads the varied keys from the sweep's pix3d_sweep.json: same table."""
    uri, results, folder = batch_sweep
    replayed = f"sqlite:///{tmp_path / 'replay.db'}"
    sync(folder, replayed, "batch", progress=False)
    _check_table(replayed, results)


def test_varied_keys_are_the_grid_axes_nested_keys_dotted():
    def keys(name):
        return varied_keys(GRIDS[name].param_space())
    assert keys("ablation") == ["model", "modalities", "lr", "seed"]  # lr: each model's published rate
    assert keys("reproduce") == ["model", "modalities", "seed_quirks", "lr", "seed"]  # not its `cell` index
    assert keys("split")[-1] == "split"
    assert keys("optuna") == ["model", "lr", "batch_size", "weight_decay"]
    assert keys("fusion") == ["fusion", "weights", "freeze_backbone", "loss", "seed"]
    assert varied_keys({"epochs": 2, "optimizer": {"beta": tune.grid_search([0.9, 0.99]), "eps": 1e-8},
                        "lr": tune.loguniform(1e-5, 1e-2)}) == ["optimizer.beta", "lr"]
