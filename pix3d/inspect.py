"""Look at a Pix3D-format folder's poses and labels before spending compute on it.

    python -m pix3d.inspect DIR [--json] [--bins SCHEME] [--skip-invalid]

With --json: one JSON object per entry (JSON lines) with img, category, model, azimuth,
elevation, inplane (degrees) and azimuth_bin, elevation_bin, inplane_bin. Without: a summary
with the entries per category, the label histogram of each head and its majority-class share
(the accuracy of always guessing the most frequent bin: the floor any model must beat).
Images are not decoded; files are checked from their headers only, so this is fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence, TextIO

import numpy as np

from pix3d.data.annotations import Annotation, load_annotations
from pix3d.cli import ArgumentParser, run_cli
from pix3d.constants import HEADS, N_BINS
from pix3d.data.pose import BIN_SCHEMES, Bins, angles, fit_bins


def entry_records(annotations: list[Annotation], bins: Bins) -> list[dict]:
    """One dict per entry with its angles (degrees) and bin labels."""
    pose = np.array([angles(a) for a in annotations], dtype=np.float64).reshape(-1, 3)
    labels = bins.labels(pose[:, 0], pose[:, 1], pose[:, 2])
    records = []
    for ann, (az, el, ip), lab in zip(annotations, pose, labels):
        records.append(
            {
                "index": ann.index,
                "img": ann.img,
                "category": ann.category,
                "model": ann.model,
                "azimuth": round(float(az), 4),
                "elevation": round(float(el), 4),
                "inplane": round(float(ip), 4),
                "azimuth_bin": int(lab[0]),
                "elevation_bin": int(lab[1]),
                "inplane_bin": int(lab[2]),
            }
        )
    return records


def label_summary(records: list[dict]) -> dict:
    """Counts per category, label histogram per head and majority-class share per head."""
    n = len(records)
    summary = {"n": n, "categories": dict(sorted(Counter(r["category"] for r in records).items()))}
    for head in HEADS:
        histogram = np.bincount([r[f"{head}_bin"] for r in records], minlength=N_BINS)
        summary[head] = {
            "histogram": histogram.tolist(),
            "majority_bin": int(histogram.argmax()),
            "majority_share": float(histogram.max() / n) if n else 0.0,
        }
    return summary


def write_summary(summary: dict, bins: Bins, out: TextIO) -> None:
    n = summary["n"]
    out.write(f"{n} entries, {len(summary['categories'])} categories, bins '{bins.scheme}'\n\n")
    width = max(len(c) for c in summary["categories"])
    for category, count in summary["categories"].items():
        out.write(f"  {category:<{width}}  {count:>6}  {100 * count / n:5.1f}%\n")
    out.write("\n")
    for head in HEADS:
        info = summary[head]
        centres = bins.centres(head)
        out.write(
            f"{head}: majority bin {info['majority_bin']} holds {100 * info['majority_share']:.1f}% "
            f"(the majority-class baseline)\n"
        )
        top = max(info["histogram"]) or 1
        for b, count in enumerate(info["histogram"]):
            bar = "#" * round(30 * count / top)
            out.write(f"  bin {b} (~{centres[b]:7.1f} deg) {count:>6}  {bar}\n")
        out.write("\n")


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m pix3d.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="Pix3D-format folder (holding pix3d.json)")
    parser.add_argument("--json", action="store_true", help="JSON lines, one object per entry")
    parser.add_argument("--bins", default="seed", choices=sorted(BIN_SCHEMES), help="bin scheme for the labels")
    parser.add_argument("--skip-invalid", action="store_true", help="skip bad entries (listed on stderr) instead of failing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
