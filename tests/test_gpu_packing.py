"""Fractional GPU packing on a loopback Ray cluster that advertises 2 GPUs this machine lacks.

The session's `loopback_cluster` (tests/loopback.py) has a head started with `--num-cpus 2
--num-gpus 2`: Ray hands out GPU ids 0 and 1 it cannot check (the worker has no GPU); the
sweeps run with `--device cpu`, the deliberate simulation, so the trials train on the CPU and
record that they did. How many trials ran at once is read from the trials' own start times
and durations (result.json): 0.5 GPU per trial must run all 4 together, two on each GPU id;
1 GPU per trial at most 2. A request for more GPUs than any node has fails within seconds.
Trials ask for 0.5 CPU, so the head's 2 CPUs hold 4 of them.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.test_search import make_tiny_dataset, run_search

EPOCHS = "3"  # trials started together overlap for tens of seconds (80-130 s each at 6 epochs here)


def trial_spans(experiment_dir: Path) -> list[dict]:
    """Per trial: its last report plus `start`/`end` wall-clock seconds."""
    spans = []
    for result in sorted(experiment_dir.glob("train_pose_*/result.json")):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        last = reports[-1]
        spans.append(dict(last, start=last["started_at"], end=last["started_at"] + last["time_total_s"]))
    return spans


def max_concurrent(spans: list[dict]) -> int:
    """The most trials running at one instant (sweep over start/end events)."""
    events = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.slow
def test_fractional_gpus_pack_trials_on_a_simulated_gpu_cluster(loopback_cluster, tmp_path):
    folder, cache = make_tiny_dataset(tmp_path)
    storage = tmp_path / "storage"
    common = ("--grid", "smoke", "--seeds", "2", "--epochs", EPOCHS, "--address", loopback_cluster.address,
              "--data", str(folder), "--cache", str(cache), "--budget", "quick", "--storage", str(storage),
              "--device", "cpu")

    # 0.5 GPU per trial: 4 trials on 2 GPUs at once, logged to MLflow.
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    half = run_search(*common, "--cpus-per-trial", "0.5", "--gpus-per-trial", "0.5", "--experiment", "half",
                      "--mlflow-uri", mlflow_uri, cwd=tmp_path, timeout=600)
    assert half.returncode == 0, half.stderr[-3000:] + half.stdout[-3000:]
    print(half.stdout[-2500:])
    spans = trial_spans(storage / "half")
    assert len(spans) == 4
    assert max_concurrent(spans) == 4, [(s["start"], s["end"]) for s in spans]
    assert Counter(s["gpu_ids"] for s in spans) == {"0": 2, "1": 2}  # two trials per GPU id
    for span in spans:
        assert span["simulated_gpu"] is True and span["device_kind"] == "cpu"
        assert span["gpus_given"] == 0.5 and span["node"].startswith(socket.gethostname())
        assert span["precision"] in ("fp32", "bf16")
    assert half.stdout.count("cpu (sim 0.5 GPU)") == 4  # the summary's device column

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("half")
    runs = client.search_runs([experiment.experiment_id], "tags.`pix3d.role` = 'trial'")
    assert len(runs) == 4
    for run in runs:
        assert run.data.tags["simulated_gpu"] == "true" and run.data.tags["device_kind"] == "cpu"
        assert run.data.tags["gpu_ids"] in ("0", "1")
        assert run.data.params["placement.simulated_gpu"] == "true"
        assert run.data.params["placement.gpus_given"] == "0.5"
    print({k: v for k, v in runs[0].data.tags.items() if not k.startswith("mlflow.")})
    print({k: v for k, v in runs[0].data.params.items() if k.startswith("placement.")})

    # 1 GPU per trial: at most 2 at once.
    whole = run_search(*common, "--cpus-per-trial", "0.5", "--gpus-per-trial", "1", "--experiment", "whole",
                       "--no-mlflow", cwd=tmp_path, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:] + whole.stdout[-3000:]
    spans = trial_spans(storage / "whole")
    assert len(spans) == 4
    assert max_concurrent(spans) == 2, [(s["start"], s["end"]) for s in spans]

    # More GPUs per trial than any node has: refused within seconds, nothing runs.
    started = time.monotonic()
    big = run_search(*common, "--cpus-per-trial", "1", "--gpus-per-trial", "3", "--experiment", "big",
                     "--no-mlflow", cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert big.returncode == 1, big.stdout + big.stderr
    assert "error: no Ray node can host a trial of 1 CPU and 3 GPU" in big.stderr
    assert elapsed < 60
    assert not list((storage / "big").glob("train_pose_*"))
