"""The throughput benchmark: `--quick` end to end (no timing asserted), and its memory readings.

The end-to-end run is the real thing on tiny sizes: matmuls, training steps with counted FLOPs,
a bare fit and Tune trials on a local Ray, two concurrent trials reading /proc, the smoke grid
through `python -m search.run` and its MLflow logging replayed. It asserts what the figures
are made of and what must hold whatever the machine's speed: the cache is shared, not copied.
"""

from __future__ import annotations

import json
import mmap
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.throughput.cli import main
from benchmarks.throughput.memory import buffer_memory, process_memory
from benchmarks.throughput.report import TARGETS
from pix3d.cli import run_cli
from tests.test_search import cli_env

linux_proc = pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")


@linux_proc
def test_buffer_memory_tells_a_private_copy_from_shared_pages():
    private = np.ones(1 << 20, dtype=np.uint8)           # touched: 1 MiB of this process's own pages
    seen = buffer_memory(private.__array_interface__["data"][0], private.nbytes)
    assert not seen["shared_mapping"] and seen["private"] >= private.nbytes

    shared = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_SHARED)
    view = np.frombuffer(shared, dtype=np.uint8)
    view[:] = 1
    seen = buffer_memory(view.__array_interface__["data"][0], view.nbytes)
    assert seen["shared_mapping"] and seen["rss"] >= view.nbytes
    del view
    shared.close()

    whole = process_memory()
    assert whole["rss"] >= whole["private"] > 0


@pytest.mark.parametrize("args, message", [
    (["--seconds", "0"], "error: --seconds must be"),
    (["--threads", "-1"], "error: --threads must be"),
    (["--bogus"], "error: unrecognized arguments: --bogus"),
])
def test_cli_bad_input_is_one_error_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # a real Ray sweep and a Tune trial: minutes on 2 cores
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--quick", "--work", str(tmp_path / "work"),
                           "--out", str(out)], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    results = json.loads(out.read_text())
    machine = results["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["torch"] and machine["ray"]
    assert {(c["dtype"], c["gflops"] > 0) for c in results["ceiling"]} == {("fp32", True), ("bf16", True)}

    steps = {(s["model"], s["precision"]): s for s in results["steps"]}
    assert set(steps) == {(m, p) for m in ("combined_net", "separate_net") for p in ("fp32", "auto")}
    assert all(s["images_per_s"] > 0 and 0 < s["ceiling_share"] for s in steps.values())
    # FLOPs are counted, not timed: the early-fusion net's 7x7 convolution costs more per image.
    assert steps["combined_net", "fp32"]["gflop_per_image"] > steps["separate_net", "fp32"]["gflop_per_image"] > 0

    assert results["tune"]["ratio"] > 0 and results["fixed_costs"]["ray_start_s"] > 0
    assert results["data_path_min_multiple"] > 0
    memory = results["memory"]
    assert len(memory["trials"]) == 2
    # The cache is read in place from the object store: no trial holds a private copy.
    assert memory["shared_mapping"] and memory["ratio"] <= 1.2, memory

    sweep = results["sweep"]
    assert sweep["grid"] == "smoke" and sweep["trials"] == 2 and sweep["sweep_s"] > 0 and sweep["ideal_s"] > 0
    assert sweep["mlflow_replay"]["trials"] == 2
    assert set(results["verdicts"]) == set(TARGETS)
    assert "targets:" in proc.stdout and "6. sweep" in proc.stdout
    assert (tmp_path / "work" / "table_out" / "smoke" / "table.md").exists()  # the command ran whole
