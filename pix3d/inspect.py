"""Look at a Pix3D-format folder's poses and labels before spending compute on it.

    python -m pix3d.inspect DIR [--json] [--bins SCHEME] [--skip-invalid]

With --json: one JSON object per entry (JSON lines) with img, category, model, azimuth,
elevation, inplane (degrees) and azimuth_bin, elevation_bin, inplane_bin. Without: a summary
with the entries per category, the label histogram of each head and its majority-class share
(the accuracy of always guessing the most frequent bin: the floor any model must beat).
Images are not decoded; files are checked from their headers only, so this is fast.
The work is `pix3d.data.inspect`; this module is the command.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from pix3d.cli import ArgumentParser, run_cli
from pix3d.data.annotations import load_annotations
from pix3d.data.inspect import entry_records, label_summary, write_summary
from pix3d.data.pose import BIN_SCHEMES, angles, fit_bins
from pix3d.errors import current_name


def _scheme_name(name: str) -> str:
    """--bins value; old scheme names are still accepted (with a warning)."""
    return current_name("bin scheme", name)


def get_args_parser() -> ArgumentParser:
    """The command's options (the README's `python -m pix3d.inspect`)."""
    parser = ArgumentParser(prog="python -m pix3d.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="Pix3D-format folder (holding pix3d.json)")
    parser.add_argument("--json", action="store_true", help="JSON lines, one object per entry")
    parser.add_argument("--bins", default="published", choices=sorted(BIN_SCHEMES),
                        type=_scheme_name, help="bin scheme for the labels")
    parser.add_argument("--skip-invalid", action="store_true", help="skip bad entries (listed on stderr) instead of failing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the entries as JSON lines (--json) or the label summary."""
    args = get_args_parser().parse_args(argv)
    annotations, skipped = load_annotations(args.data, skip_invalid=args.skip_invalid, progress=True)
    for message in skipped:
        sys.stderr.write(f"skipped {message}\n")
    pose = np.array([angles(a) for a in annotations], dtype=np.float64).reshape(-1, 3)
    if args.bins != "seed":
        # No split exists here: fitted schemes are fitted on every entry for inspection.
        sys.stderr.write(f"bins '{args.bins}' fitted on all {len(annotations)} entries (training fits on the train split only)\n")
    bins = fit_bins(args.bins, pose[:, 0], pose[:, 1], pose[:, 2])
    records = entry_records(annotations, bins)
    try:
        if args.json:
            for record in records:
                sys.stdout.write(json.dumps(record) + "\n")
        else:
            write_summary(label_summary(records), bins, sys.stdout)
            if skipped:
                sys.stdout.write(f"{len(skipped)} invalid entries skipped (listed on stderr)\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # `inspect --json | head`: the reader left; that is not an error. Point stdout at
        # devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    run_cli(main)
