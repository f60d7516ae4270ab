"""`python -m benchmarks.throughput`: runs the command in benchmarks.throughput.cli."""

from __future__ import annotations

from benchmarks.throughput.cli import main
from pix3d.cli import run_cli

if __name__ == "__main__":
    run_cli(main)
