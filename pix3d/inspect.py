"""Look at a Pix3D-format folder's poses and labels before spending compute on it.

    python -m pix3d.inspect DIR [--json] [--bins SCHEME] [--skip-invalid] [--split NAME [--seed N]]
    python -m pix3d.inspect DIR --render-check [--size PX] [--cache DIR]
    python -m pix3d.inspect DIR --contact-sheet out.png [--rows N]

With --json: one JSON object per entry (JSON lines) with img, category, model, azimuth,
elevation, inplane (degrees) and azimuth_bin, elevation_bin, inplane_bin. Without: a summary
with the entries per category, the label histogram of each head and its majority-class share
(the accuracy of always guessing the most frequent bin: the floor any model must beat).
With --split: the label histograms of that split's training and validation sides side by side
(bins fitted on the training side, as a run fits them; `published` on a Pix3D folder is the
notebook's own membership, and says so).
Images are not decoded; files are checked from their headers only, so this is fast.
--render-check prepares (or reuses) the cache of DIR at --size (DIR may also be a prepared
cache folder) and prints the IoU distribution of each model's silhouette, rendered at its
annotated pose, with its mask, listing the entries below 0.7 and the models that cannot be
rendered. --contact-sheet draws rows of rgb | mask | rgb + oracle contour | oracle normals |
oracle boundaries (| predicted normals) for a few entries. The work is `pix3d.data.inspect`
and `pix3d.data.render_check`; this module is the command.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from pix3d.cli import ArgumentParser, positive_int, run_cli
from pix3d.data.annotations import load_annotations
from pix3d.data.cache import default_cache_dir
from pix3d.data.inspect import entry_records, label_summary, write_split_summary, write_summary
from pix3d.data.pose import BIN_SCHEMES, angles, fit_bins
from pix3d.data.prepare import prepare, published_split_plan
from pix3d.data.splits import SPLITS, split_indices
from pix3d.render.synthetic import STAMP_NAME
from pix3d.data.render_check import contact_sheet, write_render_check
from pix3d.errors import Pix3DError, current_name, one_line


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
    parser.add_argument("--split", choices=sorted(SPLITS), type=lambda n: current_name("split", n), default=None,
                        help="label histograms of this split's train and val sides (the notebook's cell 7)")
    parser.add_argument("--seed", type=int, default=0, help="--split: the split's seed")
    parser.add_argument("--render-check", action="store_true",
                        help="IoU of each model rendered at its pose with its mask (from the prepared cache)")
    parser.add_argument("--contact-sheet", type=Path, metavar="PNG", help="write a contact sheet of oracle maps here")
    parser.add_argument("--rows", type=positive_int, default=6, help="entries on the contact sheet")
    parser.add_argument("--size", type=positive_int, default=224, help="crop size of --render-check (a cache's) and the sheet's tiles")
    parser.add_argument("--cache", type=Path, default=default_cache_dir(), help="cache root for --render-check")
    return parser


def _render_check(args) -> int:
    """Print the render check of DIR's cache (prepared now when missing); 0 even with entries listed."""
    if (args.data / "manifest.json").is_file():
        folder = args.data
    else:
        data = prepare(args.data, args.size, cache_dir=args.cache, skip_invalid=args.skip_invalid,
                       log=lambda m: sys.stderr.write(m + "\n"))
        folder = Path(data.manifest["cache_path"])
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise Pix3DError(f"{folder / 'meta.json'}: cannot read the cache's metadata ({one_line(exc)})") from None
    write_render_check(meta, sys.stdout)
    return 0


def _split_histograms(args, annotations, pose: np.ndarray) -> int:
    """Print the label histograms of --split's two sides (bins fitted on its training side)."""
    if args.split == "published":
        sys.stderr.write(published_split_plan(args.data).message + "\n")
    train, val = split_indices(args.split, [a.category for a in annotations], [a.model for a in annotations],
                               seed=args.seed, img_paths=[a.img for a in annotations],
                               dataset=Path(args.data).resolve().name, builtin=(args.data / STAMP_NAME).is_file())
    bins = fit_bins(args.bins, pose[train, 0], pose[train, 1], pose[train, 2])
    records = entry_records(annotations, bins)
    write_split_summary(args.split, label_summary([records[i] for i in train]),
                        label_summary([records[i] for i in val]), bins, sys.stdout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Print the entries as JSON lines (--json) or the label summary."""
    args = get_args_parser().parse_args(argv)
    if args.render_check:
        return _render_check(args)
    annotations, skipped = load_annotations(args.data, skip_invalid=args.skip_invalid, progress=True)
    for message in skipped:
        sys.stderr.write(f"skipped {message}\n")
    pose = np.array([angles(a) for a in annotations], dtype=np.float64).reshape(-1, 3)
    if args.bins != "published" and args.split is None:
        # No split exists here: fitted schemes are fitted on every entry for inspection.
        sys.stderr.write(f"bins '{args.bins}' fitted on all {len(annotations)} entries (training fits on the train split only)\n")
    if args.contact_sheet is not None:
        path = contact_sheet(args.data, annotations, args.contact_sheet, rows=args.rows, size=min(args.size, 256))
        sys.stdout.write(f"contact sheet: {path}\n")
        return 0
    if args.split is not None and not args.json:
        return _split_histograms(args, annotations, pose)
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
