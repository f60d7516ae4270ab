"""A sweep's storage is data, not code; a torn or refused state loses nothing (issue 26, 1-2).

On a real Tune sweep (the tiny trainable of tests/sweeps.py on the session's Ray): every
pickle it wrote passes the opcode walk of analysis.tune_files, and crafted ones planted in a
copy (`tuner.pkl`, `callback-states-*.pkl`, a pickled field of `experiment_state-*.json`,
a trial's `error.pkl`) are refused by `search.run --resume` in one line naming the file,
without running: each payload writes a marker file when unpickled, and the test first shows
that Tune's own loader would have run it. A state whose pickled field is cut in half is
refused by the pre-restore check, and `analysis.sync` still replays the finished trials from
their own folders.
"""

from __future__ import annotations

import glob
import json
import pickle
import shutil
from pathlib import Path

import pytest

from analysis.sync import read_trials, sync
from analysis.tune_files import (ALLOWED_GLOBALS, check_folder, open_folder, pickle_problem, pickles_in,
                                 read_trial_folders)
from pix3d.errors import Pix3DError
from search.grids import GRIDS
from search.options import SweepSettings, write_settings
from search.resume_check import verify_resume_state
from tests.test_faults import assert_one_clean_line, run_entry


class _TouchMarker:
    """Unpickling this creates `path`: the proof that a reader executed the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def tiny_sweep(ray_session, tmp_path_factory):
    """A real Tune sweep of 2 trials (1 epoch) with the MLflow callback and a search_run.json."""
    from tests.sweeps import param_space, run_sweep

    root = tmp_path_factory.mktemp("tune_files")
    space = param_space(models=("combined_net",), subsets=("rgb",), seeds=(0, 1), epochs=1)
    results, _ = run_sweep(root / "ray", "smoke", f"sqlite:///{root / 'mlflow.db'}", space=space)
    assert not results.errors
    sweep = root / "ray" / "smoke"
    write_settings(str(sweep), SweepSettings("smoke", "synthetic", None, "quick", None, 1), "pytest", None)
    return sweep


def _copy(sweep: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ray" / "smoke"
    shutil.copytree(sweep, copy)
    return copy


def test_every_pickle_of_a_real_sweep_passes(tiny_sweep):
    folder = open_folder(tiny_sweep)
    names = {Path(p).name.split("-")[0] for p in pickles_in(folder)}
    assert {"tuner.pkl", "callback", "basic", "params.pkl"} <= names
    assert check_folder(folder) >= 5
    assert verify_resume_state(tiny_sweep, None) == 2


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_every_grids_param_space_passes(grid):
    """The searcher's state pickles the grid's param space (published_lr for ablation, split)."""
    import ray.cloudpickle as cloudpickle

    from pix3d.train import resolve_budget

    space = GRIDS[grid].param_space(None, resolve_budget("quick")[1])
    assert pickle_problem(cloudpickle.dumps(space)) is None


def test_a_field_cut_mid_byte_is_refused(tiny_sweep, tmp_path):
    sweep = _copy(tiny_sweep, tmp_path)
    path = Path(sorted(glob.glob(str(sweep / "experiment_state-*.json")))[-1])
    state = json.loads(path.read_text())
    trial = json.loads(state["trial_data"][0][0])
    trial["storage"]["value"] = trial["storage"]["value"][:-1]  # an odd number of hex digits
    state["trial_data"][0][0] = json.dumps(trial)
    path.write_text(json.dumps(state))
    with pytest.raises(Pix3DError, match=r"a pickled field that is not whole hex \(torn or crafted\)"):
        verify_resume_state(sweep, None)


def test_walk_refuses_what_tune_never_writes(tmp_path):
    import ray.cloudpickle as cloudpickle

    real = pickle.dumps({"lr": 1e-3, "modalities": ("rgb",)})
    assert pickle_problem(real) is None
    assert "names io.open" in pickle_problem(pickle.dumps(_TouchMarker(str(tmp_path / "x"))))
    assert "not a complete pickle" in pickle_problem(real[:-3])
    assert pickle_problem(b"") == "empty (0 bytes)"
    # A function pickled by value is a code object: refused unless it is one Tune writes.
    assert "code object" in pickle_problem(cloudpickle.dumps(lambda: print("hi")))
    assert ("builtins", "eval") not in ALLOWED_GLOBALS and not (tmp_path / "x").exists()


def _crafted(marker: Path) -> bytes:
    return pickle.dumps(_TouchMarker(str(marker)))


def _plant_state_field(sweep: Path, payload: bytes) -> Path:
    """Replace the first CLOUDPICKLE_FALLBACK field of the newest experiment state with `payload`."""
    path = Path(sorted(glob.glob(str(sweep / "experiment_state-*.json")))[-1])
    state = json.loads(path.read_text())
    trial = json.loads(state["trial_data"][0][0])
    assert trial["storage"]["_type"] == "CLOUDPICKLE_FALLBACK"
    trial["storage"]["value"] = payload.hex()
    state["trial_data"][0][0] = json.dumps(trial)
    path.write_text(json.dumps(state))
    return path


def _plant(sweep: Path, target: str, payload: bytes) -> Path:
    if target == "experiment_state":
        return _plant_state_field(sweep, payload)
    if target == "error.pkl":
        path = sorted(sweep.glob("*/params.json"))[0].parent / "error.pkl"
    else:
        path = Path(sorted(glob.glob(str(sweep / target)))[-1])
    path.write_bytes(payload)
    return path


def _tune_would_run(sweep: Path, target: str, planted: Path) -> None:
    """Tune's own reader of `target`, on a copy whose payload writes `control` (never on the test's copy)."""
    import ray.cloudpickle as cloudpickle
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    data = planted.read_bytes()
    if target == "experiment_state":
        # What TuneController.resume does with the newest state: the file, then each trial entry.
        from ray.tune.experiment.trial import Trial

        for trial_json, _ in _loads_with_cloudpickle(data)["trial_data"]:
            Trial.from_json_state(trial_json)
    else:
        cloudpickle.loads(data)         # tuner.pkl, callback states, error.pkl


@pytest.mark.parametrize("target", ["tuner.pkl", "callback-states-*.pkl", "experiment_state", "error.pkl"])
def test_resume_refuses_a_crafted_pickle_without_running_it(tiny_sweep, tmp_path, monkeypatch, capsys, target):
    # The payload works: Tune's own loader runs it (on a separate copy, marker `control`).
    control_copy = _copy(tiny_sweep, tmp_path / "control")
    control = tmp_path / "control-ran"
    _tune_would_run(control_copy, target, _plant(control_copy, target, _crafted(control)))
    assert control.exists()

    sweep = _copy(tiny_sweep, tmp_path)
    marker = tmp_path / "EXECUTED"
    planted = _plant(sweep, target, _crafted(marker))
    monkeypatch.chdir(tmp_path)
    code, err = run_entry("search.run", ["--resume", "--experiment", "smoke", "--storage", str(sweep.parent),
                                         "--no-mlflow"])
    assert_one_clean_line(code, err, str(planted))
    assert "refused, not loaded" in err and "cannot be trusted" in err
    assert not marker.exists()
    # analysis.sync never unpickles: the crafted file is not run and the two trials are replayed.
    report = sync(sweep, f"sqlite:///{tmp_path / 'sync.db'}", progress=False)
    assert report.trials == 2 and not marker.exists()


def test_torn_pickled_field_is_refused_and_sync_replays_the_finished_trials(tiny_sweep, tmp_path, capsys):
    sweep = _copy(tiny_sweep, tmp_path)
    path = Path(sorted(glob.glob(str(sweep / "experiment_state-*.json")))[-1])
    state = json.loads(path.read_text())
    trial = json.loads(state["trial_data"][0][0])
    value = trial["storage"]["value"]
    trial["storage"]["value"] = value[: len(value) // 4 * 2]  # a field cut in half; the JSON still parses
    state["trial_data"][0][0] = json.dumps(trial)
    path.write_text(json.dumps(state))
    with pytest.raises(Pix3DError, match=rf"{path.name}: refused, not loaded: a pickled field in it "
                                         r"\(not a complete pickle.*intact: search_run.json, 2 trial folder"):
        verify_resume_state(sweep, None)

    # The state is not trusted for the trials' status; each trial's own folder is.
    trials = read_trials(sweep, log=print)
    assert "replaying the trials from their own folders" in capsys.readouterr().out
    assert [t.status for t in trials] == ["FINISHED", "FINISHED"]
    assert {t.trial_id for t in trials} == {t.trial_id for t in read_trial_folders(open_folder(sweep))}
    report = sync(sweep, f"sqlite:///{tmp_path / 'sync.db'}", progress=False)
    assert (report.trials, report.runs_created, report.closed) == (2, 2, 2)


def test_a_params_pkl_cut_off_by_a_killed_driver_does_not_block_resume(tiny_sweep, tmp_path):
    """Tune truncates and rewrites a trial's params.pkl whenever the trial starts and never loads
    it: a driver killed in between leaves it empty (a slow test's SIGKILL once did, and --resume
    refused the sweep). A cut-off one is passed over; a whole crafted one is still refused."""
    sweep = _copy(tiny_sweep, tmp_path)
    params = sorted(sweep.glob("*/params.pkl"))
    assert len(params) == 2
    whole = params[1].read_bytes()
    params[0].write_bytes(b"")
    params[1].write_bytes(whole[: len(whole) // 2])
    assert verify_resume_state(sweep, None) == 2
    marker = tmp_path / "EXECUTED"
    params[0].write_bytes(_crafted(marker))
    with pytest.raises(Pix3DError, match=r"params.pkl: refused, not loaded: it names io\.open"):
        verify_resume_state(sweep, None)
    assert not marker.exists()

