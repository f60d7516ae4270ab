"""Turn a Pix3D-format folder into one training-ready uint8 cache, once.

    python -m pix3d.prepare --data DIR|synthetic --size PX [--cache DIR] [--crop margin|published] [--margin F]
                            [--workers N] [--skip-invalid]
                            [--normals auto|files|predict|oracle|none]
                            [--boundaries auto|files|predict|canny|oracle]

Each entry is cropped to a square around its bbox (`--crop margin`) or as the published
notebook's input was, Pose-from-Shape's crop (`--crop published`: the mask's bounding
rectangle, no margin, letterboxed on black), resized to PX and its eight channels
(rgb, mask, boundaries, normals) are stacked into `<cache>/prepared/<key>/images.npy`;
boundaries and normals come from `boundaries/` and `normals/` folders mirroring `img/`
where present, else predicted from the rgb where `pix3d.data.predict` has its weights, else
boundaries are derived from the rgb (Canny) and normals marked unavailable (the default,
`auto`); `oracle` renders them from the CAD model at the annotated pose (only when asked:
the cache, its manifest and every run trained on it say "oracle"). The manifest says which. A second call with the same inputs is a cache hit. This module is
the command only: the work is `pix3d.data.prepare` (the build), `pix3d.data.cache` (the
cache on disk) and `pix3d.data.maps` (where the channels come from).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from pix3d.cli import ArgumentParser, run_cli
from pix3d.constants import CACHE_CHANNELS
from pix3d.data.cache import default_cache_dir
from pix3d.data.images import CROPS
from pix3d.data.maps import Sources, add_source_options
from pix3d.data.prepare import prepare


def get_args_parser() -> ArgumentParser:
    """The command's options (the README's `python -m pix3d.prepare`)."""
    parser = ArgumentParser(prog="python -m pix3d.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, default=argparse.SUPPRESS, help="Pix3D-format folder, or 'synthetic' for the built-in set")
    parser.add_argument("--size", required=True, type=int, default=argparse.SUPPRESS, help="side of the square crops in pixels (224 as published)")
    parser.add_argument("--cache", type=Path, default=default_cache_dir(), help="cache root ($PIX3D_CACHE or ~/.cache/pix3d-pose)")
    parser.add_argument("--crop", default="margin", choices=CROPS,
                        help="margin: the bbox square grown by --margin, the photo around it; published: "
                             "Pose-from-Shape's crop the published notebook read (mask rectangle, no margin, "
                             "letterboxed on black). Part of the cache key: another crop builds another cache")
    parser.add_argument("--margin", type=float, default=0.1, help="--crop margin: context around the bbox on each side, as a fraction of its longest side")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="decoding processes")
    parser.add_argument("--skip-invalid", action="store_true", help="skip bad entries (listed) instead of failing")
    add_source_options(parser, lambda m: f"where {m.name} come from (auto: files, else predict where its weights are "
                                          f"present, else {m.fallback or 'unavailable'}; oracle: rendered from the "
                                          "CAD model, only when asked)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare (or reuse) the cache and print where it is and its shape."""
    args = get_args_parser().parse_args(argv)
    data = prepare(
        args.data,
        args.size,
        cache_dir=args.cache,
        skip_invalid=args.skip_invalid,
        margin=args.margin,
        workers=args.workers,
        sources=Sources.from_args(args),
        crop=args.crop,
        progress=not args.no_progress,
        log=lambda message: print(message, flush=True),
    )
    print(f"cache {data.manifest['cache_path']}: {len(data)} entries x {CACHE_CHANNELS} channels x {data.image_size} px")
    return 0


if __name__ == "__main__":
    run_cli(main)
