"""Oracle maps: an entry's CAD model rendered at its annotated pose, straight into its crop.

Owns what `prepare --normals oracle --boundaries oracle` puts in the cache and the render
check every preparation records: `load_model` (an OBJ file, checked: present, readable, with
faces and finite vertices; kept per process, since many photos share a model),
`crop_camera` (Pix3D's intrinsics, f = focal_length * W / 32 with the principal point at the
image centre, moved and scaled into the crop window and its resize, so the full photo is
never rendered), `render_crop` (silhouette only, or normals + boundaries too) and
`silhouette_iou`. Any problem is a `RenderProblem` naming the file or the number that is
wrong; the caller names the entry. numpy only: it runs in the preparation workers.

These maps are oracles: they come from the ground-truth model and pose, which a method
evaluated on photos does not have, so everything trained on them is labelled so.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pix3d.constants import SENSOR_WIDTH_MM
from pix3d.render.mesh import read_obj
from pix3d.render.raster import edge_map, rasterize_projected
from pix3d.render.shading import normals_to_rgb

# What the manifest, meta.json and MLflow call this source (the word "oracle" marks it).
ORACLE_SOURCE = "oracle (rendered from the CAD model at the annotated pose)"
# Entries whose rendered silhouette overlaps the annotated mask less than this are listed by
# `python -m pix3d.inspect --render-check` (a wrong pose, model or mask).
IOU_THRESHOLD = 0.7
# Boundary settings of oracle renders (recorded in the manifest: part of the cache key).
EDGE_SETTINGS = {"depth_jump": 0.03, "crease_cos": 0.8}
_CACHE_SIZE = 32  # models kept per process


class RenderProblem(Exception):
    """An entry's model cannot be rendered: the message says what is wrong (one line)."""


@dataclass(frozen=True)
class CropCamera:
    """Pinhole intrinsics of a crop window resized to size x size (Pix3D's frame:
    u = cx - fx X/Z, v = cy - fy Y/Z)."""

    fx: float
    fy: float
    cx: float
    cy: float
    size: int

    def project(self, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (u, v) of camera-frame points (N x 3, z > 0)."""
        return self.cx - self.fx * cam[:, 0] / cam[:, 2], self.cy - self.fy * cam[:, 1] / cam[:, 2]


def crop_camera(focal_mm: float, img_size: Sequence[int], window: Sequence[int], size: int) -> CropCamera:
    """The photo's camera seen through `window` (left, top, right, bottom in photo pixels,
    as `pix3d.data.images.pixel_box` cuts it) resized to `size`: shift, then scale."""
    width, height = float(img_size[0]), float(img_size[1])
    if not (math.isfinite(focal_mm) and focal_mm > 0):
        raise RenderProblem(f"focal_length must be a positive number, got {focal_mm!r}")
    f = focal_mm / SENSOR_WIDTH_MM * width
    left, top, right, bottom = (float(v) for v in window)
    kx, ky = size / (right - left), size / (bottom - top)
    return CropCamera(f * kx, f * ky, (width / 2 - left) * kx, (height / 2 - top) * ky, int(size))


_MODELS: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()


def load_model(path: Path, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(vertices V x 3, triangles F x 3) of an OBJ model, checked; cached per process by path
    and file stamp. `name` is how messages call the file (the json's relative path)."""
    path = Path(path)
    name = name or str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise RenderProblem(f"model file {name} is missing") from None
    except OSError as exc:
        raise RenderProblem(f"model file {name} is unreadable ({exc.strerror or exc})") from None
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return _MODELS[key]
    try:
        vertices, faces = read_obj(path)
    except (OSError, ValueError, IndexError) as exc:  # UnicodeDecodeError is a ValueError
        reason = str(exc).splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise RenderProblem(f"model file {name} is unreadable as OBJ ({reason})") from None
    if vertices.ndim != 2 or vertices.shape[0] == 0 or vertices.shape[1] != 3:
        raise RenderProblem(f"model file {name} is degenerate: no vertices")
    if faces.ndim != 2 or faces.shape[0] == 0:
        raise RenderProblem(f"model file {name} is degenerate: no faces")
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices)).any(1).sum())
        raise RenderProblem(f"model file {name} is degenerate: {bad} vertices are NaN or infinite")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise RenderProblem(f"model file {name} is degenerate: a face refers to vertex "
                            f"{int(faces.max() if faces.max() >= len(vertices) else faces.min()) + 1} "
                            f"of {len(vertices)}")
    _MODELS[key] = (vertices, faces)
    while len(_MODELS) > _CACHE_SIZE:
        _MODELS.popitem(last=False)
    return vertices, faces


def to_camera(vertices: np.ndarray, rot_mat, trans_mat) -> np.ndarray:
    """X_cam = R X_model + t, refusing a pose that puts any of the model at or behind the camera."""
    R, t = np.asarray(rot_mat, np.float64), np.asarray(trans_mat, np.float64)
    if R.shape != (3, 3) or t.shape != (3,) or not (np.isfinite(R).all() and np.isfinite(t).all()):
        raise RenderProblem("rot_mat / trans_mat are not a finite 3x3 rotation and 3-vector")
    cam = vertices @ R.T + t
    behind = int((cam[:, 2] <= 1e-6).sum())
    if behind:
        raise RenderProblem(f"the pose puts {behind} of {len(cam)} model vertices behind the camera "
                            f"(z <= 0; nearest z {cam[:, 2].min():.3g})")
    return cam


@dataclass
class OracleRender:
    """One entry's render in its crop window: silhouette; normals and boundaries when asked."""

    mask: np.ndarray                      # bool S x S
    normals: np.ndarray | None = None     # float S x S x 3, camera frame, 0 outside
    boundaries: np.ndarray | None = None  # bool S x S

    def normals_rgb(self) -> np.ndarray:
        """The normals encoded exactly as predicted ones are stored (`normals_to_rgb`: Taskonomy's
        axes, pred / 2 + 0.5, 128 grey off the model): uint8 S x S x 3."""
        return normals_to_rgb(self.normals, self.mask)

    def boundaries_u8(self) -> np.ndarray:
        """The boundaries as the project stores them: uint8 S x S, 255 on an edge."""
        return self.boundaries.astype(np.uint8) * 255


def face_normals_towards_camera(cam: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit normal of each triangle in the camera frame, turned to face the camera (the side
    a photo shows; Pix3D's meshes are not consistently wound)."""
    a, b, c = cam[faces[:, 0]], cam[faces[:, 1]], cam[faces[:, 2]]
    n = np.cross(b - a, c - a)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    n = n / np.maximum(length, 1e-20)
    facing_away = (n * (a + b + c)).sum(1) > 0
    n[facing_away] *= -1
    return n


def render_crop(vertices: np.ndarray, faces: np.ndarray, rot_mat, trans_mat, focal_mm: float,
                img_size: Sequence[int], window: Sequence[int], size: int, *,
                full: bool = True) -> OracleRender:
    """Render the model into the crop window at `size` px: the silhouette, and with `full`
    the camera-frame normals and the occluding contours and creases (`edge_map`)."""
    camera = crop_camera(focal_mm, img_size, window, size)
    cam = to_camera(vertices, rot_mat, trans_mat)
    u, v = camera.project(cam)
    if not full:
        mask, _ = rasterize_projected(u, v, cam[:, 2], faces, size, size, with_depth=False)
        return OracleRender(mask)
    face_id, depth = rasterize_projected(u, v, cam[:, 2], faces, size, size)
    mask = face_id >= 0
    table = np.vstack([face_normals_towards_camera(cam, faces), np.zeros((1, 3))])
    normals = table[np.where(mask, face_id, len(faces))].astype(np.float32)
    return OracleRender(mask, normals, edge_map(mask, depth, normals, **EDGE_SETTINGS))


def silhouette_iou(rendered: np.ndarray, annotated: np.ndarray) -> float | None:
    """Intersection over union of two silhouettes (bool, or uint8 thresholded at 128);
    None when both are empty."""
    a = rendered if rendered.dtype == bool else rendered >= 128
    b = annotated if annotated.dtype == bool else annotated >= 128
    union = int((a | b).sum())
    return None if union == 0 else int((a & b).sum()) / union
