"""The model registry is the single source: a model registered outside the project (through
PIX3D_MODELS) runs through a smoke sweep and appears in the table with no other edit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pix3d import models as model_registry
from pix3d.errors import Pix3DError
from search.grids import get_grid
from tests.test_search import cli_env, make_tiny_dataset


@pytest.fixture
def isolated_registry(monkeypatch):
    """The registry as it was before the test (a plugin loaded here must not leak into the
    rest of the suite, whose grids count the published models)."""
    monkeypatch.setattr(model_registry, "_MODELS", dict(model_registry._MODELS))
    monkeypatch.setattr(model_registry, "_plugins_loaded", set(model_registry._plugins_loaded))


def test_a_plugin_model_joins_the_grids_and_the_published_rates(monkeypatch, isolated_registry):
    monkeypatch.setenv(model_registry.PLUGINS_ENV, "tests.toy_model")
    assert model_registry.list_models()[-1] == "toy_net"
    assert model_registry.published_lr("toy_net") == 3e-3
    trials = get_grid("ablation").trials(seeds=1)
    toy = [t for t in trials if t["model"] == "toy_net"]
    assert len(toy) == 4 and all(t["lr"] == 3e-3 for t in toy)
    assert model_registry.published_value("toy_net", model_registry.TABLE_METRIC, "rgb") == 12.5


def test_a_plugin_that_does_not_import_is_one_error_naming_it(monkeypatch, isolated_registry):
    monkeypatch.setenv(model_registry.PLUGINS_ENV, "tests.no_such_module")
    with pytest.raises(Pix3DError, match=r"PIX3D_MODELS: cannot import 'tests.no_such_module'"):
        model_registry.list_models()


@pytest.mark.slow  # a whole CLI sweep with its own Ray start-up: ~1 min on a loaded 2-core machine
def test_a_toy_model_runs_through_a_smoke_sweep_and_lands_in_the_table(tmp_path):
    folder, cache = make_tiny_dataset(tmp_path)
    env = dict(cli_env(), **{model_registry.PLUGINS_ENV: "tests.toy_model"})
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--grid", "smoke", "--data", str(folder), "--cache", str(cache),
         "--budget", "quick", "--storage", str(tmp_path / "results"),
         "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "sweep smoke: 3 trials, 0 failed" in proc.stdout
    table = (tmp_path / "table_out" / "smoke" / "table.md").read_text()  # rebuilt from MLflow
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert list(rows)[1:4] == ["combined_net", "separate_net", "toy_net"]  # registry order
    assert "paper 12.5" in rows["toy_net"] and "n=1" in rows["toy_net"]
    assert "toy_net" not in model_registry.list_models()  # loaded in the subprocess only
