"""Triangle meshes of the procedural furniture, and the OBJ files Pix3D's models come in.

Owns `Mesh` (model frame: centred, largest extent 1, like Pix3D's models), `boxes_to_mesh`
(a union of `pix3d.render.shapes.Box` -> one mesh), `write_obj` and `read_obj`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pix3d.render.shapes import Box


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
        """Radius of the bounding sphere about the model origin."""
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
