"""`python -m relpose.train`: runs the command in relpose.train.cli with the project's one-line errors."""

from __future__ import annotations

from pix3d.cli import run_cli
from relpose.train.cli import main

if __name__ == "__main__":
    run_cli(main)
