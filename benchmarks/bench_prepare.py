"""How fast is `prepare --normals oracle --boundaries oracle` on photo-sized images?

    python -m benchmarks.bench_prepare [--n 100] [--photo-size 1600] [--size 224] [--workers 2]
                                       [--subdivide 2] [--format jpg] [--work DIR]

Why: rendering the oracle maps must not dominate preparation; the target is the 10,069
entries of Pix3D in under 15 minutes on 2 cores. What: writes a real-format synthetic set
(pix3d.render.synthetic) with square photos of --photo-size px, optionally re-encoded as JPEG
like Pix3D's photos (masks stay PNG) and with every model triangle split into 4^K
(--subdivide K: CAD models are far denser than the procedural boxes), then prepares it twice
into fresh caches with worker processes and a progress bar: once with the maps from the
Canny boundaries and no normals (what real Pix3D gets by default, plus the silhouette render
check every preparation does), once with oracle normals and boundaries. Prints entries/s of both and the extrapolation to 10,069 entries.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from pix3d.cli import ArgumentParser, positive_int, run_cli
from pix3d.data.prepare import prepare
from pix3d.render.mesh import read_obj
from pix3d.render.synthetic import SyntheticConfig, generate

PIX3D_ENTRIES = 10_069
TARGET_S = 15 * 60


def subdivide(vertices: np.ndarray, faces: np.ndarray, times: int) -> tuple[np.ndarray, np.ndarray]:
    """Split every triangle into four at its edge midpoints, `times` times (shape unchanged)."""
    for _ in range(times):
        a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
        n = len(vertices)
        m = len(faces)
        ab, bc, ca = n + np.arange(m), n + m + np.arange(m), n + 2 * m + np.arange(m)
        vertices = np.vstack([vertices, (vertices[a] + vertices[b]) / 2, (vertices[b] + vertices[c]) / 2,
                              (vertices[c] + vertices[a]) / 2])
        faces = np.concatenate([np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1),
                                np.stack([ca, bc, c], 1), np.stack([ab, bc, ca], 1)])
    return vertices, faces


def densify_models(root: Path, times: int) -> int:
    """Rewrite every model .obj of the set with subdivided triangles; the largest face count."""
    most = 0
    for path in sorted(root.glob("model/*/*/model.obj")):
        v, f = subdivide(*read_obj(path), times)
        lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in v] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f]
        path.write_text("\n".join(lines) + "\n")
        most = max(most, len(f))
    return most


def to_jpeg(root: Path) -> None:
    """Re-encode the photos as JPEG (quality 92) and point pix3d.json at them."""
    entries = json.loads((root / "pix3d.json").read_text())
    for e in tqdm(entries, desc="photos to JPEG", unit="img"):
        png = root / e["img"]
        jpg = png.with_suffix(".jpg")
        with Image.open(png) as im:
            im.convert("RGB").save(jpg, quality=92)
        png.unlink()
        e["img"] = str(Path(e["img"]).with_suffix(".jpg"))
    (root / "pix3d.json").write_text(json.dumps(entries))


def timed_prepare(root: Path, cache: Path, label: str, **sources) -> float:
    """Seconds of one fresh preparation (a new cache folder: never a cache hit)."""
    started = time.perf_counter()
    data = prepare(root, ARGS.size, cache_dir=cache, workers=ARGS.workers, progress=True,
                   log=lambda m: None, **sources)
    elapsed = time.perf_counter() - started
    rate = len(data) / elapsed
    total = PIX3D_ENTRIES / rate
    print(f"{label:<38} {len(data)} entries in {elapsed:6.1f} s: {rate:6.1f} entries/s -> "
          f"{PIX3D_ENTRIES:,} entries in {total / 60:5.1f} min "
          f"({'within' if total <= TARGET_S else 'OVER'} the 15 min target)", flush=True)
    return elapsed


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m benchmarks.bench_prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=positive_int, default=100, help="entries of the set")
    parser.add_argument("--photo-size", type=positive_int, default=1600, help="photo width and height in px (Pix3D: 500-3,000)")
    parser.add_argument("--size", type=positive_int, default=224, help="cache crop size")
    parser.add_argument("--workers", type=positive_int, default=2, help="preparation worker processes")
    parser.add_argument("--subdivide", type=int, default=2, help="split each model triangle into 4^K")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg", help="photo format (Pix3D's are mostly JPEG)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the set and caches (default: a temp folder)")
    return parser


ARGS = None


def main(argv: Sequence[str] | None = None) -> int:
    global ARGS
    ARGS = get_args_parser().parse_args(argv)
    work = ARGS.work or Path(tempfile.mkdtemp(prefix="bench_prepare-"))
    root = work / "set"
    print(f"{cpu_name()}, {os.cpu_count()} CPUs visible, {ARGS.workers} workers; "
          f"{ARGS.n} entries, {ARGS.photo_size} px {ARGS.format} photos -> {ARGS.size} px crops; work in {work}")
    started = time.perf_counter()
    generate(root, SyntheticConfig(n=ARGS.n, seed=5, size=ARGS.photo_size), workers=ARGS.workers, log=None)
    faces = densify_models(root, ARGS.subdivide) if ARGS.subdivide > 0 else None
    if ARGS.format == "jpg":
        to_jpeg(root)
    print(f"set written in {time.perf_counter() - started:.0f} s"
          + (f"; models subdivided {ARGS.subdivide}x (up to {faces:,} triangles)" if faces else ""), flush=True)
    # The baseline is what real Pix3D gets by default: Canny boundaries, no normals (the
    # silhouette render check included, as in every preparation).
    base = timed_prepare(root, work / "cache-default", "canny boundaries (+ silhouette check)",
                         normals="none", boundaries="canny")
    oracle = timed_prepare(root, work / "cache-oracle", "oracle normals + boundaries", normals="oracle",
                           boundaries="oracle")
    print(f"oracle rendering adds {100 * (oracle - base) / base:+.0f}% to the preparation", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
