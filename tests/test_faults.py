"""Faults and hostile input (issue 17): each gets one `error:` line, loses nothing, runs nothing.

Classes, one block each: the error helper itself; numbers and names; outputs checked before
work and OS errors on user paths; a full disk (a real 2 MiB tmpfs, root only); crafted files
in a sweep's storage (never executed); a torn sweep state refused by --resume (slow: a real
smoke sweep). `BAD_INPUTS` is the count reported for the issue: every entry is run through
the real entry point and must give exactly one clean line.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pix3d.errors import Pix3DError, one_line
from pix3d.fileio import check_free_space, ensure_writable_dir, write_json
from tests.inproc import run_module

REPO = Path(__file__).resolve().parents[1]


def run_entry(module: str, argv: list[str]) -> tuple[int, str]:
    """The real `python -m module` path (run_cli(main)) in-process: (exit code, stderr)."""
    proc = run_module(module, *argv)
    return proc.returncode, proc.stderr


def assert_one_clean_line(code: int, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert code in (1, 2), (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and needle in lines[0], (needle, err)


# ----------------------------------------------------------------------------- 4. the helper


class _Silent(Exception):
    def __str__(self):
        return ""


class _Broken(Exception):
    def __str__(self):
        raise RuntimeError("__str__ itself fails")


@pytest.mark.parametrize("exc, expected", [
    (EOFError(), "EOFError"),                                      # empty text: the class name
    (RuntimeError("first line\nsecond line"), "first line"),        # multi-line: the first
    (ValueError("\n\n  \nreal reason\n"), "real reason"),           # leading blank lines
    (_Silent(), "_Silent"),
    (_Broken(), "_Broken"),                                        # a crashing __str__
    (FileNotFoundError(2, "No such file or directory", "/x/y"), "/x/y: No such file or directory"),
    (RuntimeError("x" * 5000), "x" * 297 + "..."),
])
def test_one_line_formats_any_exception(exc, expected):
    assert one_line(exc) == expected


def test_no_error_path_uses_splitlines_first_line():
    """The crash this replaces: str(exc).splitlines()[0] on an exception with empty text."""
    offenders = []
    for path in [*REPO.glob("*/*.py")]:
        if ".venv" in path.parts or path.name == "test_faults.py":
            continue
        if "str(exc).splitlines()[0]" in path.read_text():
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


# ------------------------------------------------------- 3/6. bad inputs: one clean line each


def _file(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker


def _empty_checkpoint_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    return run


def _garbage_db(tmp_path: Path) -> str:
    db = tmp_path / "garbage.db"
    db.write_bytes(os.urandom(4096))
    return f"sqlite:///{db}"


def _crafted_params_storage(tmp_path: Path) -> Path:
    folder = tmp_path / "sweep"
    (folder / "trial_0").mkdir(parents=True)
    (folder / "trial_0" / "params.json").write_text("[1, 2, 3]")
    return folder


# (module, argv builder taking tmp_path, text the one line must contain)
BAD_INPUTS = [
    ("pix3d.train", lambda t: ["--lr", "nan"], "--lr must be a finite number"),
    ("pix3d.train", lambda t: ["--lr", "inf"], "--lr must be a finite number"),
    ("pix3d.train", lambda t: ["--lr", "-1"], "--lr must be positive"),
    ("pix3d.train", lambda t: ["--threads", "0"], "--threads must be positive"),
    ("pix3d.train", lambda t: ["--epochs", "0"], "--epochs must be positive"),
    ("pix3d.train", lambda t: ["--batch-size", "nan"], "--batch-size must be an integer"),
    ("pix3d.train", lambda t: ["--max-train-images", "-1"], "--max-train-images must be"),
    ("pix3d.train", lambda t: ["--out", str(_file(t) / "run")], "--out"),
    ("pix3d.train", lambda t: ["--resume", "--out", str(_empty_checkpoint_run(t))], "checkpoint.pt"),
    ("relpose.train", lambda t: ["--lr", "nan"], "--lr must be a finite number"),
    ("relpose.train", lambda t: ["--threads", "0"], "--threads must be positive"),
    ("relpose.train", lambda t: ["--max-orbit", "inf"], "--max-orbit must be a finite number"),
    ("relpose.train", lambda t: ["--batch-size", "0"], "--batch-size must be positive"),
    ("relpose.train", lambda t: ["--out", str(_file(t) / "run"), "--pairs", "8", "--size", "32"], "--out"),
    ("search.run", lambda t: ["--grid", "smoke", "--dry-run", "--gpus-per-trial", "nan"],
     "--gpus-per-trial must be a finite number"),
    ("search.run", lambda t: ["--grid", "smoke", "--dry-run", "--cpus-per-trial", "inf"],
     "--cpus-per-trial must be a finite number"),
    ("search.run", lambda t: ["--grid", "smoke", "--dry-run", "--cpus-per-trial", "0"],
     "--cpus-per-trial must be positive"),
    ("search.run", lambda t: ["--grid", "smoke", "--dry-run", "--experiment", ""], "--experiment must be a non-empty"),
    ("search.run", lambda t: ["--grid", "smoke", "--dry-run", "--experiment", "  "], "--experiment must be a non-empty"),
    ("search.run", lambda t: ["--grid", "smoke", "--dry-run", "--seeds", "-1"], "--seeds must be"),
    ("search.run", lambda t: ["--grid", "smoke", "--dry-run", "--max-failures", "-2"], "--max-failures must be"),
    ("search.run", lambda t: ["--grid", "smoke", "--dry-run", "--epochs", "nan"], "--epochs must be an integer"),
    ("search.run", lambda t: ["--grid", "smoke", "--storage", str(_file(t) / "r")], "not a writable folder"),
    ("search.run", lambda t: ["--grid", "smoke", "--storage", str(t / "r"), "--mlflow-uri", "foo://bar"],
     "unknown scheme 'foo'"),
    ("search.run", lambda t: ["--grid", "smoke", "--storage", str(t / "r"), "--mlflow-uri", _garbage_db(t)],
     "is not an SQLite database"),
    ("analysis.table", lambda t: ["--experiment", ""], "--experiment must be a non-empty"),
    ("analysis.table", lambda t: ["--experiment", "x", "--out", str(_file(t) / "tables")], "--out"),
    ("analysis.table", lambda t: ["--experiment", "x", "--out", str(t / "o"), "--mlflow-uri", _garbage_db(t)],
     "is not an SQLite database"),
    ("analysis.table", lambda t: ["--experiment", "x", "--out", str(t / "o"), "--mlflow-uri", "foo://bar"],
     "unknown scheme 'foo'"),
    ("analysis.sync", lambda t: ["--storage", str(t), "--experiment", ""], "--experiment must be a non-empty"),
    ("analysis.sync", lambda t: ["--storage", str(_crafted_params_storage(t)), "--mlflow-uri",
                                 f"sqlite:///{t / 'm.db'}"], "params.json: not a trial params file"),
    ("pix3d.prepare", lambda t: ["--data", "synthetic", "--size", "64", "--cache", str(_file(t) / "c")], "a-file"),
    ("pix3d.prepare", lambda t: ["--data", "synthetic", "--size", "64", "--margin", "nan"], "--margin"),
    ("pix3d.synthetic", lambda t: ["--out", str(_file(t) / "set"), "--n", "4"], "a-file"),
    ("benchmarks.bench_train", lambda t: ["--seconds", "nan"], "--seconds must be a finite number"),
    ("benchmarks.bench_train", lambda t: ["--trial-threads", "0"], "--trial-threads must be positive"),
    ("benchmarks.bench_learning", lambda t: ["--lr", "inf"], "--lr must be a finite number"),
    ("benchmarks.bench_learning", lambda t: ["--threads", "0"], "--threads must be positive"),
]


@pytest.mark.parametrize("module, build, needle", BAD_INPUTS,
                         ids=[f"{m}:{i}" for i, (m, _, _) in enumerate(BAD_INPUTS)])
def test_bad_input_gives_one_clean_line(module, build, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIX3D_CACHE", str(tmp_path / "cache"))
    argv = build(tmp_path)
    code, err = run_entry(module, argv)
    assert_one_clean_line(code, err, needle)
    assert not (tmp_path / "runs").exists()  # nothing started (no run folder, no training)


def test_train_checks_out_before_preparing_data(tmp_path, monkeypatch, capsys):
    """An impossible --out fails before the data is generated or any epoch runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIX3D_CACHE", str(tmp_path / "cache"))
    code, err = run_entry("pix3d.train", ["--out", str(_file(tmp_path) / "run"), "--no-progress"])
    assert_one_clean_line(code, err, "--out")
    assert not (tmp_path / "cache").exists()


def test_ensure_writable_dir_creates_and_refuses(tmp_path):
    assert ensure_writable_dir(tmp_path / "a" / "b", "--out").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe is gone
    with pytest.raises(Pix3DError, match=r"^--out .*a-file/x: not a writable folder"):
        ensure_writable_dir(_file(tmp_path) / "x", "--out")


# ------------------------------------------------------------------------ 2. a full disk


@pytest.fixture
def full_disk(tmp_path):
    """A real 2 MiB tmpfs (needs root and mount); unmounted afterwards."""
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("a tmpfs needs root and mount(8); not available here")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)  # busy: detach now, freed when closed


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of `folder` to `leave` bytes free."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as fh:
        try:
            fh.write(b"\0" * max(free - leave, 0))
        except OSError:
            pass


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def test_full_disk_atomic_write_names_path_and_keeps_old_file(full_disk):
    target = full_disk / "results.json"
    write_json(target, {"old": True})
    _fill(full_disk, leave=4096)
    before = _listing(full_disk)
    with pytest.raises(Pix3DError, match=r"results\.json: disk full \(needs more than .* free\)"):
        write_json(target, {"history": list(range(200_000))})
    assert json.loads(target.read_text()) == {"old": True}
    assert _listing(full_disk) == before  # no temp file left


def test_full_disk_checkpoint_save_is_one_line(full_disk):
    import torch

    from pix3d.train import save_checkpoint

    _fill(full_disk, leave=8192)
    with pytest.raises(Pix3DError, match=r"checkpoint\.pt: disk full"):
        save_checkpoint(full_disk / "checkpoint.pt", {"model": torch.zeros(100_000)})
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_full_disk_prepare_refuses_before_the_memmap(full_disk, tmp_path, monkeypatch, capsys):
    """The cache needs more than the disk has: one line with the space, no temp folder, no SIGBUS."""
    from pix3d.render.synthetic import SyntheticConfig, generate

    data = tmp_path / "set"
    generate(data, SyntheticConfig(n=24, seed=0, size=64), workers=1, progress=False, log=None)
    (full_disk / "prepared").mkdir()
    keep = full_disk / "prepared" / "older-cache.txt"
    keep.write_text("an older cache")
    code, err = run_entry("pix3d.prepare", ["--data", str(data), "--size", "128", "--cache", str(full_disk),
                                            "--no-progress", "--workers", "1"])
    assert_one_clean_line(code, err, "disk full (needs ")
    assert str(full_disk / "prepared") in err and " free)" in err
    assert sorted(p.name for p in (full_disk / "prepared").iterdir()) == ["older-cache.txt"]
    assert keep.read_text() == "an older cache"


def test_check_free_space_counts_what_is_there(full_disk):
    check_free_space(full_disk, 1024)  # fits
    with pytest.raises(Pix3DError, match="disk full"):
        check_free_space(full_disk, 10 << 20)


def test_full_disk_synthetic_set_is_one_line_and_keeps_the_old_set(full_disk, capsys):
    out = full_disk / "set"
    assert run_entry("pix3d.synthetic", ["--out", str(out), "--n", "3", "--size", "32", "--workers", "1",
                                         "--no-progress"])[0] == 0
    old = _listing(out)
    code, err = run_entry("pix3d.synthetic", ["--out", str(out), "--n", "400", "--size", "96",
                                              "--workers", "1", "--no-progress"])
    assert_one_clean_line(code, err, "disk full")
    assert _listing(out) == old
    assert sorted(p.name for p in full_disk.iterdir()) == ["set"]  # no temp folder left


def test_full_disk_table_keeps_old_files(full_disk, tmp_path):
    from analysis.table import write_table

    class _Table:  # what write_table reads; real files, real plotting
        experiment, metric, at, columns, rows, baseline = "x", "val_azimuth_acc", "last", ["rgb"], [], {}
        parent_run_id = tracking_uri = None

        def to_markdown(self):
            return "| big |\n" * 400_000

        def to_csv(self):
            return "a,b\n"

    out = full_disk / "tables"
    out.mkdir()
    (out / "table.md").write_text("old table")
    _fill(full_disk, leave=64 << 10)
    with pytest.raises(Pix3DError, match=r"tables: disk full"):
        write_table(_Table(), out, log_to_mlflow=False)
    assert (out / "table.md").read_text() == "old table"
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "tables"]


# ------------------------------------------------------------- 5. crafted files never run


class _TouchMarker:
    """Unpickling this touches `path`: the proof that a reader executed the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _hand_made_sweep(folder: Path, marker: Path) -> None:
    """A sweep folder as Tune writes it (one finished trial), plus crafted pickles."""
    trial = folder / "train_pose_0001_0_model=combined_net"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps({"model": "combined_net", "modalities": "rgb", "lr": 1e-3,
                                                   "seed": 0, "epochs": 1}))
    (trial / "result.json").write_text(json.dumps({"trial_id": "0001", "epoch": 1, "val_azimuth_acc": 0.5,
                                                   "training_iteration": 1}) + "\n")
    crafted = pickle.dumps(_TouchMarker(str(marker)))
    for name in ("callback-states-2026-01-01_00-00-00.pkl", "tuner.pkl", "trainable.pkl",
                 "searcher-state-2026.pkl"):
        (folder / name).write_bytes(crafted)
    (trial / "checkpoint_000000").mkdir()
    (trial / "checkpoint_000000" / "checkpoint.pt").write_bytes(crafted)


def test_crafted_pickles_in_storage_are_not_executed(tmp_path):
    marker = tmp_path / "EXECUTED"
    pickle.loads(pickle.dumps(_TouchMarker(str(tmp_path / "control"))))  # the payload does work
    assert (tmp_path / "control").exists()
    folder = tmp_path / "storage" / "sweep"
    _hand_made_sweep(folder, marker)
    proc = subprocess.run([sys.executable, "-m", "analysis.sync", "--storage", str(folder), "--mlflow-uri",
                           f"sqlite:///{tmp_path / 'm.db'}", "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "synced 1 trials" in proc.stdout
    assert not marker.exists()


@pytest.mark.parametrize("name, content, needle", [
    ("pix3d_sweep.json", "not json {", "not a readable pix3d sweep record"),
    ("pix3d_sweep.json", json.dumps({"sweep_id": ["x"]}), "not a pix3d sweep record ('sweep_id' is a list)"),
    ("search_run.json", json.dumps([1, 2]), "not a pix3d sweep record (a JSON list"),
])
def test_foreign_sweep_record_is_refused(tmp_path, name, content, needle):
    marker = tmp_path / "EXECUTED"
    folder = tmp_path / "sweep"
    _hand_made_sweep(folder, marker)
    (folder / name).write_text(content)
    # In this process (tests.inproc): the record is refused before anything is read as a pickle.
    code, err = run_entry("analysis.sync", ["--storage", str(folder), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}",
                                            "--no-progress"])
    assert code == 1
    assert_one_clean_line(code, err, needle)
    assert not marker.exists()


def test_sync_source_has_no_unpickling():
    text = (REPO / "analysis" / "sync.py").read_text()
    assert "pickle" not in text.replace("unpickled", "")
    assert "torch.load" not in text or "weights_only=True" in text


# ------------------------------------------------------------------------ 1. torn sweep state


def _run_search(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "search.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_smoke_sweep(tmp_path_factory):
    from tests.test_search import make_tiny_dataset

    root = tmp_path_factory.mktemp("torn")
    folder, cache = make_tiny_dataset(root)
    args = ["--grid", "smoke", "--data", str(folder), "--cache", str(cache), "--budget", "quick",
            "--epochs", "1", "--storage", str(root / "results"), "--no-mlflow"]
    proc = _run_search(*args, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, root / "results" / "smoke", args


def _tear(sweep: Path, target: str, how: str) -> None:
    path = sorted(sweep.glob(target))[-1]
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "cut-field":  # one pickled field cut in half: the JSON still parses
        state = json.loads(path.read_text())
        trial = json.loads(state["trial_data"][0][0])
        value = trial["storage"]["value"]
        trial["storage"]["value"] = value[: len(value) // 4 * 2]  # whole bytes of hex, half the pickle
        state["trial_data"][0][0] = json.dumps(trial)
        path.write_text(json.dumps(state))
    elif how == "drop-trial":
        state = json.loads(path.read_text())
        state["trial_data"] = state["trial_data"][:1]
        path.write_text(json.dumps(state))


@pytest.mark.slow  # one real smoke sweep through the CLI (~1-2 min on a shared 2-core machine)
@pytest.mark.parametrize("target, how, needle", [
    ("experiment_state-*.json", "truncate", "torn or foreign Tune experiment state"),
    ("experiment_state-*.json", "empty", "torn or foreign Tune experiment state"),
    ("experiment_state-*.json", "cut-field", "refused, not loaded: a pickled field in it (not a complete pickle"),
    ("experiment_state-*.json", "drop-trial", "holds 1 trial(s) where the saved settings make 2"),
    ("tuner.pkl", "empty", "tuner.pkl: refused, not loaded: empty (0 bytes)"),
    ("tuner.pkl", "truncate", "tuner.pkl: refused, not loaded: not a complete pickle"),
    ("basic-variant-state-*.json", "truncate", "basic-variant-state-"),
    ("search_run.json", "truncate", "search_run.json is torn or foreign"),
])
def test_resume_refuses_a_torn_state_and_changes_nothing(finished_smoke_sweep, tmp_path, target, how, needle):
    from pix3d.train import resolve_budget
    from search.grids import expand, get_grid
    from search.resume_check import verify_resume_state

    root, sweep, args = finished_smoke_sweep
    copy = tmp_path / "results" / "smoke"
    shutil.copytree(sweep, copy)
    # The intact copy passes the same check (so the refusals below are about the tearing).
    space = {**get_grid("smoke").param_space(None, resolve_budget("quick")[1]), "epochs": 1}
    assert verify_resume_state(copy, expand(space)) == 2
    _tear(copy, target, how)
    before = _snapshot(copy)
    resume = [a if a != str(root / "results") else str(tmp_path / "results") for a in args]
    proc = _run_search(*resume, "--resume", cwd=tmp_path, timeout=300)
    assert_one_clean_line(proc.returncode, proc.stderr, needle)
    if how != "truncate" or target != "search_run.json":
        assert "intact: search_run.json, 2 trial folder(s) with results (2 with checkpoints)" in proc.stderr
    assert _snapshot(copy) == before  # nothing in storage was written or removed
