"""A real two-node Ray cluster on loopback runs the smoke grid with `--address`.

The cluster is the session's `loopback_cluster` (tests/loopback.py: each node 2 CPUs). Each
smoke trial asks for 1.5 CPUs, so a node hosts one at a time and the two trials can only run
side by side on different nodes; the node id every trial reports proves where it ran.
"""

from __future__ import annotations

import json

import pytest

# free_port, start_node and stop_group live in tests/loopback.py; re-exported for older imports.
from tests.loopback import RAY, free_port, start_node, stop_group  # noqa: F401
from tests.test_search import make_tiny_dataset, run_search


@pytest.mark.slow
def test_smoke_grid_runs_on_both_nodes_of_a_loopback_cluster(loopback_cluster, tmp_path):
    folder, cache = make_tiny_dataset(tmp_path)
    storage = tmp_path / "shared-storage"
    # The driver's environment has no RAY_AUTH_MODE: search.run must switch token auth on.
    proc = run_search("--grid", "smoke", "--address", loopback_cluster.address, "--data", str(folder),
                      "--cache", str(cache), "--budget", "quick", "--storage", str(storage),
                      "--no-mlflow", "--cpus-per-trial", "1.5", cwd=tmp_path, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "using token auth" in proc.stdout
    assert "sweep smoke: 2 trials, 0 failed" in proc.stdout

    node_ids = {}
    for result in (storage / "smoke").glob("train_pose_*/result.json"):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        assert [r["epoch"] for r in reports] == [1, 2]
        assert len({r["node_id"] for r in reports}) == 1  # a trial stays on its node
        node_ids[result.parent.name] = reports[-1]["node_id"]
    assert len(node_ids) == 2
    assert len(set(node_ids.values())) == 2, f"both trials ran on one node: {node_ids}"
