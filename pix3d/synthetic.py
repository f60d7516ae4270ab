"""The built-in synthetic Pix3D: procedural furniture rendered in the exact Pix3D layout.

Real Pix3D (3.6 GB) cannot be fetched everywhere, yet every command should run offline and
go through the same loader, cache and training path. So this module writes a folder that is
indistinguishable in layout from Pix3D:

    pix3d.json                      list of entries with every field real Pix3D has
    img/<category>/NNNN.png         RGB photo: shaded furniture over a cluttered background
    mask/<category>/NNNN.png        0/255 silhouette
    normals/<category>/NNNN.png     camera-frame unit normals as (n + 1) / 2 * 255, background 0
    boundaries/<category>/NNNN.png  occlusion and crease edges, 0/255
    model/<category>/<name>/model.obj
    synthetic.json                  stamp: generator version, n, seed, size (reuse / overwrite)

Labels follow DESIGN.md: X_c = R X_m + t, cam_position = -R^T t, and the camera is placed at
d * (sin a cos e, sin e, -cos a cos e), looking at the model centre with +y up, then rolled
about its optical axis by the in-plane angle; so azimuth a = atan2(x, -z) and elevation
e = atan(y / hypot(x, z)) come back exactly from cam_position. Furniture fronts face -z, so
azimuth 0 is a frontal view.

Everything is seeded: each image draws from numpy generators keyed by (seed, index), so the
output does not depend on the number of worker processes.

    python -m pix3d.synthetic --out DIR --n 2000 --seed 0 --size 224 [--workers 2]
    python -m pix3d.synthetic --preview sheet.png [--out DIR]
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from pix3d.cli import ArgumentParser, run_cli
from pix3d.errors import UsageError
from pix3d.fileio import atomic_dir, atomic_path

# Bump when the output changes for the same (n, seed, size): stamps with another version are
# regenerated, so caches never mix renderer versions.
GENERATOR_VERSION = 1
STAMP_NAME = "synthetic.json"


@dataclass(frozen=True)
class SyntheticConfig:
    """What defines a synthetic set; equal configs give byte-identical folders."""

    n: int = 1800
    seed: int = 0
    size: int = 224
    version: int = GENERATOR_VERSION

    def name(self) -> str:
        return f"pix3d-synth-n{self.n}-s{self.seed}-px{self.size}-v{self.version}"

    def check(self) -> None:
        if self.n <= 0:
            raise UsageError(f"--n must be a positive number of images, got {self.n}")
        if self.size < 16:
            raise UsageError(f"--size must be at least 16 pixels, got {self.size}")


# The embedded default (`--data synthetic`). 1,800 images at 224 px take about a minute on
# 2 cores; the quick budget crops to the bbox and resizes to ~64 px, the paper budget to 224.
BUILTIN = SyntheticConfig(n=1800, seed=0, size=224)

# Camera sampling ranges: elevations as in photos of furniture, a modest camera roll, and
# focal lengths of ordinary lenses (mm on Pix3D's 32 mm wide sensor).
AZIMUTH_DEG = (0.0, 360.0)
ELEVATION_DEG = (-5.0, 50.0)
INPLANE_DEG = (-30.0, 30.0)
FOCAL_MM = (28.0, 60.0)
# Fraction of the half field of view that the model's bounding sphere spans. The sphere is
# conservative, so objects stay mostly inside the frame; the top end truncates a few.
FILL = (0.62, 1.02)
IMAGES_PER_MODEL = 20
# Pix3D's focal lengths are millimetres on a 32 mm wide sensor (as pix3d.geometry).
SENSOR_WIDTH_MM = 32.0


# --------------------------------------------------------------------------------------
# Procedural furniture: each category builds a list of boxes in a y-up frame, front at -z.
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Box:
    """Axis-aligned box: centre and full size (metres), and a material slot of the palette."""

    centre: tuple[float, float, float]
    size: tuple[float, float, float]
    material: int = 0


def _box(x, y, z, sx, sy, sz, material=0) -> Box:
    return Box((float(x), float(y), float(z)), (float(sx), float(sy), float(sz)), material)


def _legs(width, depth, height, thick, inset=0.0, material=0) -> list[Box]:
    """Four legs standing on y = 0 under a width x depth footprint."""
    out = []
    for sx in (-1, 1):
        for sz in (-1, 1):
            x = sx * (width / 2 - thick / 2 - inset)
            z = sz * (depth / 2 - thick / 2 - inset)
            out.append(_box(x, height / 2, z, thick, height, thick, material))
    return out


def build_chair(rng: np.random.Generator) -> list[Box]:
    w, d = rng.uniform(0.40, 0.55), rng.uniform(0.40, 0.52)
    seat_h, seat_t = rng.uniform(0.40, 0.50), rng.uniform(0.04, 0.08)
    leg = rng.uniform(0.03, 0.055)
    back_h, back_t = rng.uniform(0.35, 0.60), rng.uniform(0.03, 0.06)
    boxes = _legs(w, d, seat_h - seat_t, leg)
    boxes.append(_box(0, seat_h - seat_t / 2, 0, w, seat_t, d, 1))
    top = seat_h + back_h
    if rng.random() < 0.5:  # solid back panel
        boxes.append(_box(0, seat_h + back_h / 2, d / 2 - back_t / 2, w, back_h, back_t, 1))
    else:  # two posts, a top rail and slats
        for sx in (-1, 1):
            boxes.append(_box(sx * (w / 2 - leg / 2), seat_h + back_h / 2, d / 2 - leg / 2,
                              leg, back_h, leg))
        rail = rng.uniform(0.06, 0.14)
        boxes.append(_box(0, top - rail / 2, d / 2 - back_t / 2, w, rail, back_t))
        n_slats = int(rng.integers(2, 5))
        for k in range(n_slats):
            x = (k + 1) / (n_slats + 1) * w - w / 2
            boxes.append(_box(x, seat_h + (back_h - rail) / 2, d / 2 - back_t / 2,
                              0.03, back_h - rail, back_t * 0.7))
    if rng.random() < 0.3:  # armchair
        arm_h = rng.uniform(0.18, 0.26)
        for sx in (-1, 1):
            boxes.append(_box(sx * (w / 2 - 0.025), seat_h + arm_h, 0, 0.05, 0.04, d))
            boxes.append(_box(sx * (w / 2 - 0.02), seat_h + arm_h / 2, -d / 2 + 0.03,
                              0.04, arm_h, 0.04))
    return boxes


def build_table(rng: np.random.Generator) -> list[Box]:
    w, d = rng.uniform(0.8, 1.8), rng.uniform(0.6, 1.0)
    if rng.random() < 0.2:
        d = w = rng.uniform(0.7, 1.1)  # square table
    h, top_t = rng.uniform(0.68, 0.78), rng.uniform(0.03, 0.07)
    boxes = [_box(0, h - top_t / 2, 0, w, top_t, d, 1)]
    if rng.random() < 0.2:  # pedestal table
        boxes.append(_box(0, (h - top_t) / 2, 0, 0.1, h - top_t, 0.1))
        boxes.append(_box(0, 0.02, 0, w * 0.5, 0.04, d * 0.5))
    else:
        leg = rng.uniform(0.04, 0.08)
        inset = rng.uniform(0.0, 0.08)
        boxes += _legs(w, d, h - top_t, leg, inset)
        if rng.random() < 0.6:  # apron
            ap = rng.uniform(0.06, 0.12)
            y = h - top_t - ap / 2
            boxes.append(_box(0, y, d / 2 - inset - leg / 2, w - 2 * inset - leg, ap, 0.02))
            boxes.append(_box(0, y, -d / 2 + inset + leg / 2, w - 2 * inset - leg, ap, 0.02))
    return boxes


def build_desk(rng: np.random.Generator) -> list[Box]:
    w, d = rng.uniform(1.0, 1.6), rng.uniform(0.55, 0.8)
    h, top_t = rng.uniform(0.72, 0.78), rng.uniform(0.03, 0.05)
    boxes = [_box(0, h - top_t / 2, 0, w, top_t, d, 1)]
    ped_w = rng.uniform(0.35, 0.45)
    side = 1 if rng.random() < 0.5 else -1
    px = side * (w / 2 - ped_w / 2)
    boxes.append(_box(px, (h - top_t) / 2, 0, ped_w, h - top_t, d))  # drawer pedestal
    n_drawers = int(rng.integers(2, 4))
    dh = (h - top_t - 0.06) / n_drawers
    for k in range(n_drawers):  # drawer fronts and handles protrude at the front (-z)
        y = 0.05 + dh * (k + 0.5)
        boxes.append(_box(px, y, -d / 2 - 0.01, ped_w - 0.03, dh - 0.02, 0.02, 2))
        boxes.append(_box(px, y + dh * 0.2, -d / 2 - 0.03, 0.12, 0.02, 0.02, 0))
    boxes.append(_box(-side * (w / 2 - 0.02), (h - top_t) / 2, 0, 0.04, h - top_t, d))  # side panel
    boxes.append(_box(0, h * 0.55, d / 2 - 0.01, w - 0.04, h * 0.45, 0.02))  # modesty panel
    return boxes


def build_sofa(rng: np.random.Generator) -> list[Box]:
    w, d = rng.uniform(1.4, 2.2), rng.uniform(0.75, 0.95)
    base_h, seat_h = rng.uniform(0.2, 0.3), rng.uniform(0.40, 0.46)
    back_h, back_t = rng.uniform(0.72, 0.9), rng.uniform(0.15, 0.25)
    arm_w, arm_h = rng.uniform(0.12, 0.22), rng.uniform(0.55, 0.68)
    leg = 0.08
    boxes = _legs(w, d, leg, 0.05, 0.03, 2)
    boxes.append(_box(0, leg + base_h / 2, 0, w, base_h, d, 1))
    boxes.append(_box(0, leg + back_h / 2, d / 2 - back_t / 2, w, back_h, back_t, 1))
    for sx in (-1, 1):
        boxes.append(_box(sx * (w / 2 - arm_w / 2), leg + arm_h / 2, -back_t / 2,
                          arm_w, arm_h, d - back_t, 1))
    n_cush = int(rng.integers(2, 4))
    inner = w - 2 * arm_w
    cw = inner / n_cush
    for k in range(n_cush):  # seat cushions, slightly separated so the seams show
        x = -inner / 2 + cw * (k + 0.5)
        boxes.append(_box(x, leg + (base_h + seat_h) / 2, -back_t / 2 + 0.01,
                          cw - 0.02, seat_h - base_h, d - back_t - 0.03, 2))
    return boxes


def build_bed(rng: np.random.Generator) -> list[Box]:
    w, length = rng.uniform(1.0, 1.8), rng.uniform(1.95, 2.2)
    frame_h, mat_h = rng.uniform(0.2, 0.35), rng.uniform(0.15, 0.25)
    head_h = rng.uniform(0.9, 1.3)
    boxes = _legs(w, length, 0.1, 0.06, 0.0)
    boxes.append(_box(0, 0.1 + frame_h / 2, 0, w, frame_h, length))
    boxes.append(_box(0, 0.1 + frame_h + mat_h / 2, 0, w - 0.06, mat_h, length - 0.08, 1))
    boxes.append(_box(0, head_h / 2, length / 2 + 0.03, w + 0.04, head_h, 0.06))  # headboard at +z
    if rng.random() < 0.6:
        foot_h = rng.uniform(0.35, 0.55)
        boxes.append(_box(0, foot_h / 2, -length / 2 - 0.03, w + 0.04, foot_h, 0.05))
    top = 0.1 + frame_h + mat_h
    n_pillows = 1 if w < 1.3 else 2
    pw = (w - 0.2) / n_pillows
    for k in range(n_pillows):
        x = -w / 2 + 0.1 + pw * (k + 0.5)
        boxes.append(_box(x, top + 0.06, length / 2 - 0.3, pw - 0.06, 0.12, 0.4, 2))
    return boxes


def build_bookcase(rng: np.random.Generator) -> list[Box]:
    w, h, d = rng.uniform(0.6, 1.2), rng.uniform(1.0, 2.0), rng.uniform(0.25, 0.4)
    t = rng.uniform(0.02, 0.04)
    boxes = [
        _box(-w / 2 + t / 2, h / 2, 0, t, h, d),
        _box(w / 2 - t / 2, h / 2, 0, t, h, d),
        _box(0, h - t / 2, 0, w, t, d),
        _box(0, 0.04, 0, w, 0.08, d),
        _box(0, h / 2, d / 2 - 0.005, w, h, 0.01, 1),  # back panel at +z: the front is open
    ]
    n_shelves = int(rng.integers(2, 6))
    gap = (h - 0.08 - t) / (n_shelves + 1)
    for k in range(n_shelves + 1):
        y0 = 0.08 + gap * k
        if k > 0:
            boxes.append(_box(0, y0, 0, w - 2 * t, t, d - 0.01))
        if rng.random() < 0.6:  # a row of books on this shelf
            x = -w / 2 + t + rng.uniform(0.0, 0.1)
            while True:
                bw = rng.uniform(0.02, 0.06)
                if x + bw > w / 2 - t - 0.05:
                    break
                bh = rng.uniform(0.5, 0.85) * gap
                boxes.append(_box(x + bw / 2, y0 + t / 2 + bh / 2, 0.02,
                                  bw, bh, d * 0.7, 2 + int(rng.integers(0, 3))))
                x += bw + 0.002
                if rng.random() < 0.08:
                    x += rng.uniform(0.05, 0.15)
    return boxes


def build_wardrobe(rng: np.random.Generator) -> list[Box]:
    w, h, d = rng.uniform(0.8, 1.6), rng.uniform(1.7, 2.1), rng.uniform(0.5, 0.62)
    plinth = rng.uniform(0.05, 0.1)
    boxes = [
        _box(0, plinth / 2, 0.02, w - 0.04, plinth, d - 0.04, 2),
        _box(0, plinth + (h - plinth) / 2, 0, w, h - plinth, d),
        _box(0, h + 0.015, 0, w + 0.04, 0.03, d + 0.03),  # cornice
    ]
    n_doors = int(rng.integers(2, 4))
    dw = w / n_doors
    for k in range(n_doors):  # doors and handles on the front (-z)
        x = -w / 2 + dw * (k + 0.5)
        boxes.append(_box(x, plinth + (h - plinth) / 2, -d / 2 - 0.01,
                          dw - 0.012, h - plinth - 0.02, 0.02, 1))
        hx = x + (dw / 2 - 0.06) * (1 if k % 2 == 0 else -1)
        boxes.append(_box(hx, plinth + (h - plinth) * 0.5, -d / 2 - 0.03, 0.02, 0.2, 0.02, 2))
    return boxes


# Category name -> builder. Names are real Pix3D categories.
CATEGORIES: dict[str, Callable[[np.random.Generator], list[Box]]] = {
    "bed": build_bed,
    "bookcase": build_bookcase,
    "chair": build_chair,
    "desk": build_desk,
    "sofa": build_sofa,
    "table": build_table,
    "wardrobe": build_wardrobe,
}


# --------------------------------------------------------------------------------------
# Meshes
# --------------------------------------------------------------------------------------

@dataclass
class Mesh:
    """Triangle mesh in the model frame (centred, largest extent 1, like Pix3D's models)."""

    vertices: np.ndarray      # float64 V x 3
    faces: np.ndarray         # int64 F x 3, counter-clockwise seen from outside
    face_normals: np.ndarray  # float64 F x 3, outward, model frame
    face_material: np.ndarray  # int64 F: palette slot
    face_part: np.ndarray     # int64 F: index of the box the face belongs to

    @property
    def radius(self) -> float:
        return float(np.linalg.norm(self.vertices, axis=1).max())


# The 8 corners of a unit box (signs) and its 12 triangles, wound counter-clockwise when seen
# from outside, with the outward normal of each.
_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) / 2
_QUADS = [  # (corner indices counter-clockwise from outside, normal)
    ((0, 1, 3, 2), (-1, 0, 0)),
    ((4, 6, 7, 5), (1, 0, 0)),
    ((0, 4, 5, 1), (0, -1, 0)),
    ((2, 3, 7, 6), (0, 1, 0)),
    ((0, 2, 6, 4), (0, 0, -1)),
    ((1, 5, 7, 3), (0, 0, 1)),
]
_BOX_FACES = np.array([[a, b, c] for q, _ in _QUADS for a, b, c in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))])
_BOX_NORMALS = np.array([n for _, n in _QUADS for _ in range(2)], float)


def boxes_to_mesh(boxes: Sequence[Box]) -> Mesh:
    """Union of boxes -> one mesh, recentred on its bounding box and scaled to extent 1."""
    centres = np.array([b.centre for b in boxes])
    sizes = np.array([b.size for b in boxes])
    verts = (centres[:, None, :] + _CORNERS[None] * sizes[:, None, :]).reshape(-1, 3)
    lo, hi = verts.min(0), verts.max(0)
    verts = (verts - (lo + hi) / 2) / (hi - lo).max()
    k = len(boxes)
    faces = (_BOX_FACES[None] + 8 * np.arange(k)[:, None, None]).reshape(-1, 3)
    return Mesh(
        vertices=verts,
        faces=faces.astype(np.int64),
        face_normals=np.tile(_BOX_NORMALS, (k, 1)),
        face_material=np.repeat([b.material for b in boxes], 12).astype(np.int64),
        face_part=np.repeat(np.arange(k), 12).astype(np.int64),
    )


def write_obj(mesh: Mesh, path: Path) -> None:
    """Wavefront OBJ (1-based faces), the format of Pix3D's model files."""
    lines = ["# pix3d.synthetic procedural model (y up, front at -z)"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in mesh.vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh.faces]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V x 3) and triangles (F x 3, 0-based) of an OBJ file (v / f lines only)."""
    verts, faces = [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            verts.append([float(p) for p in parts[1:4]])
        elif parts[0] == "f":
            idx = [int(p.split("/")[0]) - 1 for p in parts[1:]]
            faces += [[idx[0], idx[i], idx[i + 1]] for i in range(1, len(idx) - 1)]
    return np.array(verts, float), np.array(faces, np.int64)


# --------------------------------------------------------------------------------------
# Rasteriser: z-buffer over triangles, vectorised over the pixels of each triangle's bbox.
# --------------------------------------------------------------------------------------

def rasterize(vertices_cam: np.ndarray, faces: np.ndarray, focal_px: float,
              width: int, height: int, *, cull_backfaces: bool = True,
              face_normals_cam: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Visible triangle and depth per pixel: (face_id int32 H x W, -1 = empty; depth H x W).

    Pixel centres (i + 0.5) are inside a triangle when all three edge functions are >= 0;
    depth is interpolated perspective-correctly (1/z is affine in screen space). The loop
    runs over triangles (about a hundred per object), each step vectorised over the pixels
    of the triangle's bounding box; back faces are culled for closed meshes.
    """
    z = vertices_cam[:, 2]
    u = focal_px * vertices_cam[:, 0] / z + width / 2
    v = focal_px * vertices_cam[:, 1] / z + height / 2
    face_id = np.full((height, width), -1, np.int32)
    inv_depth = np.zeros((height, width))  # 1/z, 0 = infinitely far
    tri_u, tri_v, tri_z = u[faces], v[faces], z[faces]
    visible = (tri_z > 1e-6).all(1)
    if cull_backfaces and face_normals_cam is not None:
        centroids = vertices_cam[faces].mean(1)
        visible &= (face_normals_cam * centroids).sum(1) < 0
    for f in np.flatnonzero(visible):
        (u0, u1, u2), (v0, v1, v2) = tri_u[f], tri_v[f]
        area = (u1 - u0) * (v2 - v0) - (v1 - v0) * (u2 - u0)
        if abs(area) < 1e-12:
            continue
        x_lo = max(int(math.floor(min(u0, u1, u2) - 0.5)), 0)
        x_hi = min(int(math.ceil(max(u0, u1, u2) - 0.5)), width - 1)
        y_lo = max(int(math.floor(min(v0, v1, v2) - 0.5)), 0)
        y_hi = min(int(math.ceil(max(v0, v1, v2) - 0.5)), height - 1)
        if x_lo > x_hi or y_lo > y_hi:
            continue
        px = np.arange(x_lo, x_hi + 1) + 0.5
        py = (np.arange(y_lo, y_hi + 1) + 0.5)[:, None]
        # Barycentric weights from the edge functions, normalised by the signed area so the
        # inside test does not depend on the winding seen on screen.
        w0 = ((u2 - u1) * (py - v1) - (v2 - v1) * (px - u1)) / area
        w1 = ((u0 - u2) * (py - v2) - (v0 - v2) * (px - u2)) / area
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        if not inside.any():
            continue
        z0, z1, z2 = tri_z[f]
        inv = w0 / z0 + w1 / z1 + w2 / z2
        region = inv_depth[y_lo:y_hi + 1, x_lo:x_hi + 1]
        closer = inside & (inv > region)
        region[closer] = inv[closer]
        face_id[y_lo:y_hi + 1, x_lo:x_hi + 1][closer] = f
    depth = np.where(inv_depth > 0, 1.0 / np.maximum(inv_depth, 1e-12), np.inf)
    return face_id, depth


def edge_map(mask: np.ndarray, depth: np.ndarray, normals: np.ndarray,
             *, depth_jump: float = 0.03, crease_cos: float = 0.8) -> np.ndarray:
    """Occlusion and crease edges from the G-buffers (bool H x W).

    A pixel is on a boundary when a 4-neighbour differs in silhouette (occluding contour),
    jumps in depth by more than `depth_jump` of its depth (self-occlusion), or turns its
    normal by more than acos(crease_cos) (~37 degrees: box edges are 90).
    """
    edges = np.zeros_like(mask)
    finite_depth = np.where(mask, depth, 0.0)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        contour = mask[a] != mask[b]
        both = mask[a] & mask[b]
        jump = np.abs(finite_depth[a] - finite_depth[b]) > depth_jump * np.maximum(finite_depth[a], 1e-6)
        crease = (normals[a] * normals[b]).sum(-1) < crease_cos
        hit = contour | (both & (jump | crease))
        edges[a] |= hit
        edges[b] |= hit
    return edges


# --------------------------------------------------------------------------------------
# Scenes: cameras, appearance, background
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Camera:
    """One sampled view; angles in degrees (what the labels must recover), focal in mm."""

    azimuth: float
    elevation: float
    inplane: float
    distance: float
    focal_mm: float


def camera_pose(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) of a camera on the view sphere, rolled about its optical axis by `inplane`."""
    # torch is imported here, not at module level: it takes seconds, and neither the CLI's
    # argument checks nor the (forked) render workers need it; poses are made in the parent.
    import torch

    from pix3d import geometry

    a, e = math.radians(cam.azimuth), math.radians(cam.elevation)
    eye = torch.tensor([math.sin(a) * math.cos(e), math.sin(e), -math.cos(a) * math.cos(e)],
                       dtype=torch.float64) * cam.distance
    R0, _ = geometry.look_at(eye, torch.zeros(3, dtype=torch.float64))
    R = geometry.rotation_about_axis("z", torch.tensor(math.radians(cam.inplane),
                                                       dtype=torch.float64)) @ R0
    t = -(R @ eye)
    return R.numpy(), t.numpy()


def sample_camera(rng: np.random.Generator, radius: float) -> Camera:
    """Random view: full-circle azimuth, photo-like elevation and roll, distance from focal."""
    focal = rng.uniform(*FOCAL_MM)
    half_fov = math.atan(SENSOR_WIDTH_MM / 2 / focal)
    fill = rng.uniform(*FILL)
    distance = radius / math.sin(fill * half_fov)
    return Camera(
        azimuth=float(rng.uniform(*AZIMUTH_DEG)),
        elevation=float(rng.uniform(*ELEVATION_DEG)),
        inplane=float(rng.uniform(*INPLANE_DEG)),
        distance=float(distance),
        focal_mm=float(focal),
    )


# Palettes: wood, painted, fabric and book colours (linear-ish RGB in 0..1).
_WOODS = np.array([[0.55, 0.38, 0.22], [0.72, 0.55, 0.36], [0.35, 0.22, 0.13],
                   [0.85, 0.75, 0.58], [0.20, 0.20, 0.20], [0.92, 0.92, 0.90]])


def model_palette(rng: np.random.Generator) -> np.ndarray:
    """Colours for the material slots (0 frame, 1 main surface, 2.. accents) of one model."""
    frame = _WOODS[rng.integers(len(_WOODS))] * rng.uniform(0.85, 1.1)
    main = frame if rng.random() < 0.4 else rng.uniform(0.1, 0.95, 3)
    accents = rng.uniform(0.1, 0.95, (4, 3))
    return np.clip(np.vstack([frame, main, accents]), 0, 1)


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Cluttered room-like backdrop (uint8 H x W x 3): wall/floor gradient and shapes.

    The clutter has edges and colours like furniture so that the mask and boundaries
    carry information the RGB alone does not.
    """
    horizon = rng.uniform(0.3, 0.8) * height
    wall, floor = rng.uniform(0.2, 0.95, 3), rng.uniform(0.1, 0.8, 3)
    ys = np.arange(height)[:, None, None]
    shade = 1 - 0.25 * ys / height
    base = np.where(ys < horizon, wall, floor) * shade
    img = Image.fromarray((np.broadcast_to(base, (height, width, 3)) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * (width, height)
        w, h = rng.uniform(0.05, 0.5, 2) * (width, height)
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.line([x0, y0, x0 + w, y0 + h * rng.choice([-1, 1])], fill=colour,
                      width=int(rng.integers(1, max(2, width // 40))))
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    return np.asarray(img)


@dataclass
class Rendering:
    """All buffers of one view: what the dataset writes, plus depth for the pose study."""

    rgb: np.ndarray         # uint8 H x W x 3
    mask: np.ndarray        # bool H x W
    normals: np.ndarray     # float32 H x W x 3, camera frame, 0 outside the mask
    boundaries: np.ndarray  # bool H x W
    depth: np.ndarray       # float64 H x W, camera z; inf outside the mask


def render_view(mesh: Mesh, palette: np.ndarray, R: np.ndarray, t: np.ndarray, focal_mm: float,
                width: int, height: int, rng: np.random.Generator) -> Rendering:
    """Render one model: Lambertian shading under a random overhead light, over clutter."""
    verts_cam = mesh.vertices @ R.T + t
    normals_cam = mesh.face_normals @ R.T
    focal_px = focal_mm / SENSOR_WIDTH_MM * width
    face_id, depth = rasterize(verts_cam, mesh.faces, focal_px, width, height,
                               face_normals_cam=normals_cam)
    mask = face_id >= 0
    # One gather per buffer: row F of the padded tables is the background value.
    fid = np.where(mask, face_id, len(mesh.faces))
    normals = np.vstack([normals_cam, np.zeros((1, 3))]).astype(np.float32)[fid]

    # The light lives in the model frame (above, random side), so shading is a pose cue.
    light_az = rng.uniform(0, 2 * math.pi)
    light_el = rng.uniform(math.radians(25), math.radians(75))
    light = np.array([math.cos(light_el) * math.sin(light_az), math.sin(light_el),
                      -math.cos(light_el) * math.cos(light_az)]) @ R.T
    ambient = rng.uniform(0.25, 0.45)
    # Shade per face (a few hundred), then look up per pixel: flat faces shade uniformly.
    face_albedo = palette[mesh.face_material] * rng.uniform(0.9, 1.1, 3)
    face_light = np.clip(normals_cam @ light, 0, None)
    face_rgb = (face_albedo * (ambient + (1 - ambient) * face_light)[:, None] * 255)

    rgb = render_background(rng, width, height).astype(np.float32)
    rgb[mask] = face_rgb[face_id[mask]]
    sigma = rng.uniform(0.5, 6.0)  # sensor noise, in 8-bit levels
    rgb += sigma * rng.standard_normal(rgb.shape, dtype=np.float32)
    rgb_u8 = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    boundaries = edge_map(mask, depth, normals)
    return Rendering(rgb=rgb_u8, mask=mask, normals=normals, boundaries=boundaries, depth=depth)


def normals_to_rgb(normals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unit normals -> uint8 RGB (n + 1) / 2 * 255, background 0."""
    rgb = np.clip((normals + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    rgb[~mask] = 0
    return rgb


def normals_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Inverse of `normals_to_rgb` (up to 8-bit quantisation)."""
    return rgb.astype(np.float64) / 255 * 2 - 1


# --------------------------------------------------------------------------------------
# Dataset generation
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What image `index` shows; drawn in the parent so file numbering is deterministic."""

    index: int
    category: str
    model: int
    number: int  # 1-based within the category, as Pix3D's file names
    camera: Camera
    rot_mat: np.ndarray    # 3 x 3, model -> camera
    trans_mat: np.ndarray  # 3


def _rng(seed: int, *key: int) -> np.random.Generator:
    # SeedSequence mixes the tuple, so (seed, index) streams are independent of each other.
    return np.random.default_rng([seed, *key])


def models_per_category(n: int) -> int:
    """Enough distinct models that a by-model split has some, ~IMAGES_PER_MODEL images each."""
    return max(2, round(n / len(CATEGORIES) / IMAGES_PER_MODEL))


def build_models(config: SyntheticConfig) -> dict[str, list[tuple[Mesh, np.ndarray]]]:
    """The model pool of a synthetic set: per category, (mesh, palette) of each model."""
    return build_model_pool(config.seed, models_per_category(config.n))


def build_model_pool(seed: int, per_category: int) -> dict[str, list[tuple[Mesh, np.ndarray]]]:
    """`per_category` procedural models of every category, (mesh, palette) each, seeded."""
    pool = {}
    for c, (name, builder) in enumerate(CATEGORIES.items()):
        pool[name] = []
        for m in range(per_category):
            rng = _rng(seed, 1, c, m)
            pool[name].append((boxes_to_mesh(builder(rng)), model_palette(rng)))
    return pool


def model_name(category: str, model: int) -> str:
    return f"SYNTH_{category.upper()}_{model + 1:03d}"


def plan_images(config: SyntheticConfig, pool) -> list[Plan]:
    names = list(CATEGORIES)
    counters = dict.fromkeys(names, 0)
    plans = []
    for i in range(config.n):
        rng = _rng(config.seed, 2, i)
        category = names[int(rng.integers(len(names)))]
        model = int(rng.integers(len(pool[category])))
        counters[category] += 1
        camera = sample_camera(rng, pool[category][model][0].radius)
        R, t = camera_pose(camera)
        plans.append(Plan(i, category, model, counters[category], camera, R, t))
    return plans


_WORKER_POOL: dict | None = None


def _init_worker(pool) -> None:
    global _WORKER_POOL
    _WORKER_POOL = pool


def _save_png(array: np.ndarray, path: Path) -> None:
    # compress_level 1: ~3x faster than the default with files ~20% larger; still lossless.
    Image.fromarray(array).save(path, compress_level=1)


def render_plan(config: SyntheticConfig, plan: Plan, pool) -> tuple[Rendering, np.ndarray, np.ndarray]:
    """Render the view a plan describes; returns (rendering, R, t)."""
    mesh, palette = pool[plan.category][plan.model]
    R, t = plan.rot_mat, plan.trans_mat
    rng = _rng(config.seed, 3, plan.index)
    rendering = render_view(mesh, palette, R, t, plan.camera.focal_mm, config.size, config.size, rng)
    return rendering, R, t


def _write_one(args) -> dict:
    """Worker: render one plan, write its four PNGs, return its pix3d.json entry."""
    config, plan, root = args
    rendering, R, t = render_plan(config, plan, _WORKER_POOL)
    stem = f"{plan.category}/{plan.number:04d}.png"
    mask_u8 = rendering.mask.astype(np.uint8) * 255
    _save_png(rendering.rgb, root / "img" / stem)
    _save_png(mask_u8, root / "mask" / stem)
    _save_png(normals_to_rgb(rendering.normals, rendering.mask), root / "normals" / stem)
    _save_png(rendering.boundaries.astype(np.uint8) * 255, root / "boundaries" / stem)
    ys, xs = np.nonzero(rendering.mask)
    size = config.size
    if len(xs):
        bbox = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    else:  # cannot happen with the sampled distances; keep the entry well-formed anyway
        bbox = [0, 0, size - 1, size - 1]
    # Truncated: the silhouette touches the image border.
    truncated = bool(rendering.mask[0].any() or rendering.mask[-1].any()
                     or rendering.mask[:, 0].any() or rendering.mask[:, -1].any())
    cam_position = -(R.T @ t)
    name = model_name(plan.category, plan.model)
    return {
        "img": f"img/{stem}",
        "category": plan.category,
        "img_size": [size, size],
        "2d_keypoints": [],
        "mask": f"mask/{stem}",
        "img_source": "pix3d.synthetic",
        "model": f"model/{plan.category}/{name}/model.obj",
        "model_source": "pix3d.synthetic",
        "rot_mat": R.tolist(),
        "trans_mat": t.tolist(),
        "focal_length": plan.camera.focal_mm,
        "cam_position": cam_position.tolist(),
        "inplane_rotation": math.radians(plan.camera.inplane),
        "bbox": bbox,
        "truncated": truncated,
        "occluded": False,
        "slightly_occluded": False,
    }


def read_stamp(folder: Path) -> dict | None:
    """The stamp of a synthetic set, or None when `folder` is not one."""
    try:
        return json.loads((Path(folder) / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def _stamp(config: SyntheticConfig) -> dict:
    return {"generator": "pix3d.synthetic", **asdict(config),
            "categories": list(CATEGORIES), "name": config.name()}


def _check_out(out: Path) -> None:
    """Refuse to replace anything that is not a previous synthetic set (or an empty folder)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a folder; nothing was written")
    if read_stamp(out) is None and any(out.iterdir()):
        raise UsageError(
            f"output folder {out} exists and is not a synthetic Pix3D set (no {STAMP_NAME} "
            "stamp); nothing was overwritten: choose another folder or remove it")


def generate(out: Path, config: SyntheticConfig, *, workers: int | None = None,
             progress: bool = True, log: Callable[[str], None] | None = print) -> dict:
    """Write the synthetic set for `config` at `out`, atomically; returns its stamp.

    Rendering goes into a temp folder beside `out`, which then replaces `out` in one rename:
    a reader sees the old set or the new one, never half of it. An existing `out` must be a
    previous synthetic set (it is replaced) or an empty folder.
    """
    config.check()
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, config.n))
    started = time.perf_counter()
    with atomic_dir(out) as tmp:  # a worker's or this process's full disk leaves the old set untouched
        pool = build_models(config)
        for category, models in pool.items():
            for m, (mesh, _) in enumerate(models):
                write_obj(mesh, tmp / "model" / category / model_name(category, m) / "model.obj")
        plans = plan_images(config, pool)
        for kind in ("img", "mask", "normals", "boundaries"):
            for category in CATEGORIES:
                (tmp / kind / category).mkdir(parents=True, exist_ok=True)
        jobs = [(config, plan, tmp) for plan in plans]
        bar = tqdm(total=len(jobs), desc="rendering synthetic Pix3D", unit="img",
                   disable=not progress, file=sys.stderr)
        if workers == 1:
            _init_worker(pool)
            entries = []
            for job in jobs:
                entries.append(_write_one(job))
                bar.update()
        else:
            # spawn, not fork: callers (a Ray driver, a notebook) may hold threads, which fork
            # does not survive; workers import numpy and PIL only, so they start fast.
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(pool,)) as procs:
                entries = []
                for entry in procs.imap(_write_one, jobs, chunksize=8):
                    entries.append(entry)
                    bar.update()
        bar.close()
        (tmp / "pix3d.json").write_text(json.dumps(entries, indent=1) + "\n")
        stamp = _stamp(config)
        (tmp / STAMP_NAME).write_text(json.dumps(stamp, indent=1) + "\n")
    elapsed = time.perf_counter() - started
    if log:
        log(f"wrote {config.n} synthetic Pix3D images ({config.size} px) to {out} in "
            f"{elapsed:.1f} s: {config.n / elapsed:.1f} images/s with {workers} worker(s)")
    return stamp


def ensure_builtin(cache_dir: Path, *, log=print, config: SyntheticConfig = BUILTIN,
                   workers: int | None = None, progress: bool = True) -> Path:
    """The built-in set at <cache_dir>/synthetic/<name>/: generated once, reused after."""
    out = Path(cache_dir) / "synthetic" / config.name()
    if read_stamp(out) == _stamp(config):
        return out
    if log:
        log(f"generating the built-in synthetic Pix3D set ({config.n} images, "
            f"{config.size} px) at {out}")
    try:
        generate(out, config, workers=workers, progress=progress, log=log)
    except OSError:
        # Another process may have finished the same set first; theirs is as good as ours.
        if read_stamp(out) != _stamp(config):
            raise
    return out


# --------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------

def write_preview(folder: Path, png: Path, *, rows: int = 8) -> Path:
    """Contact sheet of `rows` entries of a set: RGB, mask, boundaries, normals per row."""
    folder = Path(folder)
    entries = json.loads((folder / "pix3d.json").read_text())
    picks = np.linspace(0, len(entries) - 1, min(rows, len(entries))).round().astype(int)
    tiles = []
    for i in picks:
        e = entries[i]
        rel = e["img"].split("/", 1)[1]
        row = []
        for kind in ("img", "mask", "boundaries", "normals"):
            im = Image.open(folder / kind / rel).convert("RGB")
            row.append(np.asarray(im))
        tiles.append(np.concatenate(row, axis=1))
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0))) for t in tiles]
    sheet = np.concatenate(tiles, axis=0)
    with atomic_path(png) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return Path(png)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def get_args_parser() -> ArgumentParser:
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
        stamp = read_stamp(args.out)
        if stamp == _stamp(config):
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
