"""`python -m pix3d.train`: runs the command in pix3d.train.cli with the project's one-line errors."""

from __future__ import annotations

from pix3d.cli import run_cli
from pix3d.train.cli import main

if __name__ == "__main__":
    run_cli(main)
