"""One camera frame, Pix3D's: X_cam = R X_model + t; u = cx - f X/Z, v = cy - f Y/Z (x left,
y up, z forward), f = focal_length * W / 32, principal point at the image centre.

The projection here is the test's own, written from that formula, never the code under test.
A model projected with an entry's `rot_mat` / `trans_mat` / `focal_length` must land inside
its mask: for a real-format entry built from a real Pix3D entry's numbers (its mask drawn by
the project's renderer), and for every entry the synthetic writer makes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pix3d.data.annotations import load_annotations
from pix3d.render.mesh import boxes_to_mesh, read_obj, write_obj
from pix3d.render.raster import rasterize
from pix3d.render.shapes import build_bed
from pix3d.render.synthetic import SyntheticConfig, generate
from tests.pix3d_fixtures import REAL_ENTRY

SENSOR_MM = 32.0


def project(vertices: np.ndarray, rot_mat, trans_mat, focal_mm: float, width: int, height: int,
            *, frame: str = "pix3d") -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of model vertices: Pix3D's frame, or the x-right/y-down one."""
    cam = vertices @ np.asarray(rot_mat, float).T + np.asarray(trans_mat, float)
    f = focal_mm * width / SENSOR_MM
    sign = -1.0 if frame == "pix3d" else 1.0
    return width / 2 + sign * f * cam[:, 0] / cam[:, 2], height / 2 + sign * f * cam[:, 1] / cam[:, 2]


def share_inside(u: np.ndarray, v: np.ndarray, mask: np.ndarray) -> float:
    """Share of the points whose pixel is in the mask grown by one pixel (a vertex on the
    silhouette projects onto its edge); points outside the image count as outside."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    h, w = mask.shape
    x, y = np.floor(u).astype(int), np.floor(v).astype(int)
    ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    hits = np.zeros(len(u), bool)
    hits[ok] = grown[y[ok], x[ok]]
    return float(hits.mean())


def _real_format_folder(root: Path) -> Path:
    """The real bed entry's pose, focal length and image size, with a procedural bed as its
    model and the mask the project's renderer draws of it (Pix3D's masks are renders too)."""
    entry = dict(REAL_ENTRY, model="model/bed/toy_bed/model.obj")
    mesh = boxes_to_mesh(build_bed(np.random.default_rng(7)))
    # Scaled so that, at the real entry's 1.15 m, it fills about the real bbox's share of the photo.
    mesh = dataclasses.replace(mesh, vertices=mesh.vertices * 0.6)
    write_obj(mesh, root / entry["model"])
    width, height = entry["img_size"]
    R, t = np.asarray(entry["rot_mat"]), np.asarray(entry["trans_mat"])
    face_id, _ = rasterize(mesh.vertices @ R.T + t, mesh.faces, entry["focal_length"] / SENSOR_MM * width,
                           width, height, face_normals_cam=mesh.face_normals @ R.T)
    (root / "mask/bed").mkdir(parents=True)
    (root / "img/bed").mkdir(parents=True)
    Image.fromarray(((face_id >= 0) * 255).astype(np.uint8)).save(root / entry["mask"])
    Image.new("RGB", (width, height), (90, 80, 70)).save(root / entry["img"])
    (root / "pix3d.json").write_text(json.dumps([entry]))
    return root


def test_a_real_format_entry_projects_into_its_mask_in_pix3ds_frame(tmp_path):
    root = _real_format_folder(tmp_path / "pix3d")
    (ann,), skipped = load_annotations(root)
    assert not skipped
    vertices, _ = read_obj(root / ann.model)
    mask = np.asarray(Image.open(root / ann.mask)) > 0
    width, height = ann.img_size
    pix3d = share_inside(*project(vertices, ann.rot_mat, ann.trans_mat, ann.focal_length, width, height), mask)
    mirrored = share_inside(*project(vertices, ann.rot_mat, ann.trans_mat, ann.focal_length, width, height,
                                     frame="x-right-y-down"), mask)
    assert 0.05 < mask.mean() < 0.7 and pix3d >= 0.9
    assert mirrored < pix3d - 0.1  # the other frame would not pass: the check can fail


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("frame") / "set"
    generate(out, SyntheticConfig(n=42, seed=11, size=64), workers=1, progress=False, log=None)
    return out


def test_every_synthetic_entry_projects_into_its_mask(synthetic_set):
    annotations, skipped = load_annotations(synthetic_set)
    assert not skipped and len(annotations) == 42
    shares = []
    for ann in annotations:
        vertices, _ = read_obj(synthetic_set / ann.model)
        mask = np.asarray(Image.open(synthetic_set / ann.mask)) > 0
        u, v = project(vertices, ann.rot_mat, ann.trans_mat, ann.focal_length, *ann.img_size)
        shares.append(share_inside(u, v, mask))
    assert min(shares) >= 0.9, sorted(zip(shares, [a.img for a in annotations]))[:3]
