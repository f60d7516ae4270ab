"""The command that writes the built-in synthetic Pix3D set, or a contact sheet of one.

Owns the argument parser and `main` only; the renderer and the writer are `pix3d.render`
(see its docstring for the map, and `pix3d.render.synthetic` for the folder's layout).

    python -m pix3d.synthetic --out DIR --n 2000 --seed 0 --size 224 [--workers 2]
    python -m pix3d.synthetic --preview sheet.png [--out DIR]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from pix3d.cli import ArgumentParser, run_cli
from pix3d.errors import UsageError
from pix3d.render.synthetic import BUILTIN, SyntheticConfig, generate, holds_set, read_stamp, write_preview


def get_args_parser() -> ArgumentParser:
    """The options of `python -m pix3d.synthetic`."""
    p = ArgumentParser(prog="python -m pix3d.synthetic",
                       description="Write the synthetic Pix3D set (Pix3D layout) or a contact sheet.")
    p.add_argument("--out", type=Path, help="output folder (a new one, or a previous synthetic set)")
    p.add_argument("--n", type=int, default=BUILTIN.n, help="number of images")
    p.add_argument("--seed", type=int, default=BUILTIN.seed, help="generation seed")
    p.add_argument("--size", type=int, default=BUILTIN.size, help="image width and height (px)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--preview", type=Path, metavar="PNG",
                   help="write a contact sheet: of --out if it is a set, else of a few fresh samples")
    p.add_argument("--rows", type=int, default=8, help="rows of the contact sheet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Generate a set at --out, write a contact sheet to --preview, or both; returns 0."""
    args = get_args_parser().parse_args(argv)
    if args.workers is not None and args.workers <= 0:
        raise UsageError(f"--workers must be positive, got {args.workers}")
    if args.rows <= 0:
        raise UsageError(f"--rows must be positive, got {args.rows}")
    config = SyntheticConfig(n=args.n, seed=args.seed, size=args.size)
    config.check()
    if args.preview is None and args.out is None:
        raise UsageError("give --out DIR to generate a set, or --preview PNG for a contact sheet")
    if args.preview is not None and args.out is not None and read_stamp(args.out) is not None \
            and (args.out / "pix3d.json").is_file():
        print(f"preview of {args.out} -> {write_preview(args.out, args.preview, rows=args.rows)}")
        return 0
    if args.out is not None:
        if holds_set(args.out, config):
            print(f"{args.out} already holds this synthetic set; nothing to do")
        else:
            generate(args.out, config, workers=args.workers, progress=not args.no_progress)
    if args.preview is not None:
        if args.out is not None:
            folder = args.out
            print(f"preview -> {write_preview(folder, args.preview, rows=args.rows)}")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                small = SyntheticConfig(n=args.rows, seed=args.seed, size=args.size)
                folder = Path(tmp) / "set"
                generate(folder, small, workers=args.workers, progress=False, log=None)
                print(f"preview -> {write_preview(folder, args.preview, rows=args.rows)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
