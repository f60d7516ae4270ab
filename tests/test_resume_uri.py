"""After `search.run --resume` the closing table is read from the sweep's own MLflow store
(recorded in its search_run.json), not from ./mlflow.db of wherever the resume runs."""

from __future__ import annotations

import json

from search.options import SweepSettings, get_args_parser
from search.options import write_settings as _write_settings
from search.report import sweep_tracking_uri


def _start(tmp_path, monkeypatch, *extra):
    """What a first `search.run` writes into its storage, from its own working folder."""
    first_cwd = tmp_path / "first"
    first_cwd.mkdir()
    monkeypatch.chdir(first_cwd)
    storage = tmp_path / "ray"
    sweep_path = str(storage / "smoke")
    args = get_args_parser().parse_args(["--grid", "smoke", "--storage", str(storage), *extra])
    settings = SweepSettings("smoke", "synthetic", None, "quick", None, None)
    (storage / "smoke").mkdir(parents=True)
    _write_settings(sweep_path, settings, "python -m search.run --grid smoke",
                    sweep_tracking_uri(args, sweep_path))
    return storage, sweep_path


def _resume_from_elsewhere(tmp_path, monkeypatch, storage, *extra):
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    return get_args_parser().parse_args(["--resume", "--experiment", "smoke", "--storage", str(storage), *extra])


def test_resume_reads_the_table_from_the_store_the_sweep_started_with(tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path / 'sweeps.db'}"
    storage, sweep_path = _start(tmp_path, monkeypatch, "--mlflow-uri", store)
    assert json.loads((storage / "smoke" / "search_run.json").read_text())["mlflow_uri"] == store
    args = _resume_from_elsewhere(tmp_path, monkeypatch, storage)
    assert sweep_tracking_uri(args, sweep_path) == store
    # A different --mlflow-uri on resume is ignored (the restored callback keeps its store).
    args = get_args_parser().parse_args(["--resume", "--experiment", "smoke", "--storage", str(storage),
                                         "--mlflow-uri", f"sqlite:///{tmp_path / 'other.db'}"])
    assert sweep_tracking_uri(args, sweep_path) == store


def test_default_store_is_recorded_as_the_first_run_folder(tmp_path, monkeypatch):
    storage, sweep_path = _start(tmp_path, monkeypatch)
    args = _resume_from_elsewhere(tmp_path, monkeypatch, storage)
    assert sweep_tracking_uri(args, sweep_path) == f"sqlite:///{tmp_path / 'first' / 'mlflow.db'}"


def test_older_sweep_without_a_recorded_store_falls_back_to_the_options(tmp_path, monkeypatch):
    storage, sweep_path = _start(tmp_path, monkeypatch)
    saved = json.loads((storage / "smoke" / "search_run.json").read_text())
    del saved["mlflow_uri"]
    (storage / "smoke" / "search_run.json").write_text(json.dumps(saved))
    args = _resume_from_elsewhere(tmp_path, monkeypatch, storage)
    assert sweep_tracking_uri(args, sweep_path) == f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    assert sweep_tracking_uri(get_args_parser().parse_args(["--grid", "smoke", "--no-mlflow"]), sweep_path) is None
