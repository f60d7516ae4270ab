"""The built-in synthetic Pix3D: layout, labels, buffers, determinism, CLI and cache reuse.

Every check reads the files the generator wrote (real PNGs, real json, real OBJ) and
compares them with an independent computation: the project's own Pix3D loader, the angle
formula of docs/design.md, and a second rasterisation of the OBJ through pix3d.geometry.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pix3d import geometry, synthetic
from pix3d.data.annotations import load_annotations
from pix3d.errors import UsageError
from pix3d.data.pose import angles, fit_bins
from pix3d.render.camera import Camera, camera_pose
from pix3d.render.mesh import boxes_to_mesh, read_obj
from pix3d.render.raster import rasterize
from pix3d.render.shading import NORMALS_BACKGROUND, normals_from_rgb, render_view
from pix3d.render.shapes import CATEGORIES, Box
from pix3d.render.synthetic import SyntheticConfig, build_models, ensure_builtin, generate, plan_images, read_stamp

REPO = Path(__file__).resolve().parents[1]
CONFIG = SyntheticConfig(n=24, seed=5, size=64)
PIX3D_FIELDS = ("img", "mask", "category", "img_size", "bbox", "model", "rot_mat", "trans_mat",
                "focal_length", "cam_position", "inplane_rotation", "truncated", "occluded",
                "slightly_occluded")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "set"
    generate(root, CONFIG, workers=2, progress=False, log=None)
    return root


@pytest.fixture(scope="module")
def entries(dataset) -> list[dict]:
    return json.loads((dataset / "pix3d.json").read_text())


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_layout_and_fields_are_pix3d(dataset, entries):
    assert len(entries) == CONFIG.n
    assert read_stamp(dataset)["n"] == CONFIG.n
    for e in entries:
        assert set(PIX3D_FIELDS) <= set(e)
        rel = e["img"].split("/", 1)[1]
        assert e["img"] == f"img/{e['category']}/{rel.split('/')[1]}"
        for kind in ("img", "mask", "normals", "boundaries"):
            assert (dataset / kind / rel).is_file()
        assert (dataset / e["model"]).is_file()
        assert png(dataset / e["img"]).shape == (CONFIG.size, CONFIG.size, 3)
        assert set(np.unique(png(dataset / e["mask"]))) <= {0, 255}
        assert set(np.unique(png(dataset / "boundaries" / rel))) <= {0, 255}
        assert e["img_size"] == [CONFIG.size, CONFIG.size]
        assert 28 <= e["focal_length"] <= 60
    # numbering restarts per category, from 0001, as in real Pix3D
    for category in {e["category"] for e in entries}:
        names = sorted(e["img"] for e in entries if e["category"] == category)
        assert names[0].endswith("/0001.png") and names[-1].endswith(f"/{len(names):04d}.png")


def test_project_loader_accepts_the_set_and_recovers_the_sampled_angles(dataset):
    annotations, skipped = load_annotations(dataset)
    assert skipped == [] and len(annotations) == CONFIG.n
    plans = plan_images(CONFIG, build_models(CONFIG))
    for ann, plan in zip(annotations, plans):
        azimuth, elevation, inplane = angles(ann)
        cam = plan.camera
        assert abs((azimuth - cam.azimuth + 180) % 360 - 180) < 1e-6, ann.img
        assert elevation == pytest.approx(cam.elevation, abs=1e-6)
        assert inplane == pytest.approx(cam.inplane, abs=1e-9)
        assert np.linalg.norm(ann.cam_position) == pytest.approx(cam.distance, rel=1e-9)


def test_cam_position_is_minus_rt_t_and_rotation_carries_the_roll(entries):
    for e in entries:
        R, t = np.array(e["rot_mat"]), np.array(e["trans_mat"])
        C = np.array(e["cam_position"])
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(C, -R.T @ t, atol=1e-12)
        # Undo the look-at part: what is left is a roll about the optical axis by inplane.
        R0, _ = geometry.look_at(torch.tensor(C), torch.zeros(3, dtype=torch.float64))
        roll = R @ R0.numpy().T
        np.testing.assert_allclose(roll[2], [0, 0, 1], atol=1e-12)
        assert math.atan2(roll[1, 0], roll[0, 0]) == pytest.approx(e["inplane_rotation"], abs=1e-12)


def silhouette_from_obj(obj: Path, R, t, focal_mm: float, size: int) -> np.ndarray:
    """Second rasterisation: every triangle of the OBJ against every pixel centre, in torch."""
    verts, faces = read_obj(obj)
    f64 = torch.float64
    verts = torch.tensor(verts, dtype=f64) @ torch.tensor(R, dtype=f64).T + torch.tensor(t, dtype=f64)
    K = geometry.intrinsics(torch.tensor(focal_mm, dtype=torch.float64), size, size)
    uv, _ = geometry.project(verts, K)
    tri = uv[torch.tensor(faces)]  # F x 3 x 2
    p = geometry.pixel_centres(size, size, dtype=torch.float64).reshape(-1, 1, 2)  # P x 1 x 2

    def cross(a, b, q):  # z of (b - a) x (q - a), broadcast P x F
        return (b[..., 0] - a[..., 0]) * (q[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (q[..., 0] - a[..., 0])

    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    e0, e1, e2 = cross(a, b, p), cross(b, c, p), cross(c, a, p)
    inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
    area = cross(a, b, c[None])
    inside &= area.abs() > 1e-12
    return inside.any(1).reshape(size, size).numpy()


def test_masks_equal_the_silhouette_of_the_obj_under_the_json_pose(dataset, entries):
    for e in entries:
        mask = png(dataset / e["mask"]) > 0
        expected = silhouette_from_obj(dataset / e["model"], e["rot_mat"], e["trans_mat"],
                                       e["focal_length"], CONFIG.size)
        # OBJ vertices are written to 6 decimals: a pixel centre lying within ~1e-5 px of an
        # edge may flip, nothing more.
        assert (mask != expected).sum() <= 2, e["img"]
        ys, xs = np.nonzero(mask)
        assert e["bbox"] == [xs.min(), ys.min(), xs.max(), ys.max()]
        touches = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
        assert e["truncated"] == bool(touches)
        assert mask.mean() > 0.03  # the object is visible, not a speck


def test_normals_are_unit_camera_frame_vectors_inside_the_mask(dataset, entries):
    for e in entries:
        rel = e["img"].split("/", 1)[1]
        mask = png(dataset / e["mask"]) > 0
        rgb = png(dataset / "normals" / rel)
        assert (rgb[~mask] == NORMALS_BACKGROUND).all()
        n = normals_from_rgb(rgb[mask])
        np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=0.02)
        # Visible surfaces face the camera: the normal opposes the viewing ray (Pix3D's frame:
        # the ray through pixel (u, v) is ((cx - u) / f, (cy - v) / f, 1)).
        f_px = e["focal_length"] / 32 * CONFIG.size
        ys, xs = np.nonzero(mask)
        rays = np.stack([(CONFIG.size / 2 - xs - 0.5) / f_px, (CONFIG.size / 2 - ys - 0.5) / f_px,
                         np.ones(len(xs))], 1)
        assert ((n * rays).sum(1) < 0.02).all(), e["img"]


def test_boundaries_hold_the_occluding_contour_and_creases(dataset, entries):
    for e in entries:
        rel = e["img"].split("/", 1)[1]
        mask = png(dataset / e["mask"]) > 0
        edges = png(dataset / "boundaries" / rel) > 0
        padded = np.pad(mask, 1)
        interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        inner = np.zeros_like(mask)
        inner[1:-1, 1:-1] = True  # a mask pixel on the image border has no outside neighbour
        contour = mask & ~interior & inner
        assert edges[contour].all(), e["img"]
        # Creases: boxes show at least two faces from these viewpoints, so some edge pixels
        # lie strictly inside the silhouette.
        assert (edges & interior).sum() > 0
        grown = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:] | mask
        assert not (edges & ~grown).any()


def test_rasterised_depth_is_perspective_correct():
    mesh = boxes_to_mesh([Box((0, 0, 0), (1, 1, 1))])
    R = geometry.rotation_about_axis("y", torch.tensor(0.5, dtype=torch.float64)).numpy()
    R = geometry.rotation_about_axis("x", torch.tensor(-0.3, dtype=torch.float64)).numpy() @ R
    t = np.array([0.1, -0.05, 3.0])
    size, focal_px = 48, 40.0
    normals_cam = mesh.face_normals @ R.T
    face_id, depth = rasterize(mesh.vertices @ R.T + t, mesh.faces, focal_px, size, size,
                                         face_normals_cam=normals_cam)
    ys, xs = np.nonzero(face_id >= 0)
    rays = np.stack([(size / 2 - xs - 0.5) / focal_px, (size / 2 - ys - 0.5) / focal_px, np.ones(len(xs))], 1)
    n = normals_cam[face_id[ys, xs]]
    on_plane = (mesh.vertices[mesh.faces[face_id[ys, xs], 0]] @ R.T + t)
    z = (n * on_plane).sum(1) / (n * rays).sum(1)  # ray-plane intersection
    np.testing.assert_allclose(depth[ys, xs], z, rtol=1e-9)
    assert len(np.unique(face_id[face_id >= 0] // 2)) == 3  # three faces of a tilted cube
    assert np.isinf(depth[face_id < 0]).all()


def test_same_seed_is_byte_identical_whatever_the_workers_and_other_seeds_differ(dataset, tmp_path):
    again = tmp_path / "again"
    generate(again, CONFIG, workers=1, progress=False, log=None)
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (dataset / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other"
    generate(other, SyntheticConfig(n=CONFIG.n, seed=CONFIG.seed + 1, size=CONFIG.size),
                       workers=1, progress=False, log=None)
    assert (other / "pix3d.json").read_bytes() != (dataset / "pix3d.json").read_bytes()
    first = json.loads((other / "pix3d.json").read_text())[0]["img"]
    assert not (dataset / first).is_file() or png(other / first).tobytes() != png(dataset / first).tobytes()


def test_views_cover_every_azimuth_bin_and_categories_differ():
    config = SyntheticConfig(n=400, seed=0, size=64)
    plans = plan_images(config, build_models(config))
    az = np.array([p.camera.azimuth for p in plans])
    el = np.array([p.camera.elevation for p in plans])
    ip = np.array([p.camera.inplane for p in plans])
    labels = fit_bins("published", az, el, ip).labels(az, el, ip)
    counts = np.bincount(labels[:, 0], minlength=8)
    assert (counts > 25).all(), counts  # ~50 per bin
    quantile = fit_bins("quantile", az, el, ip).labels(az, el, ip)
    assert len(np.unique(quantile[:, 1])) == 8 and len(np.unique(quantile[:, 2])) == 8
    assert {p.category for p in plans} == set(CATEGORIES)
    # Fronts differ from backs: a chair seen from azimuth 0 and 180 gives different masks.
    mesh, palette = build_models(config)["chair"][0]
    masks = []
    for az0 in (0.0, 180.0):
        cam = Camera(az0, 20.0, 0.0, 2.5, 40.0)
        R, t = camera_pose(cam)
        r = render_view(mesh, palette, R, t, cam.focal_mm, 64, 64, np.random.default_rng(0))
        masks.append(r.mask)
    assert (masks[0] != masks[1]).sum() > 20


def test_ensure_builtin_generates_once_then_reuses(tmp_path):
    small = SyntheticConfig(n=6, seed=2, size=40)
    messages: list[str] = []
    path = ensure_builtin(tmp_path, log=messages.append, config=small, workers=1, progress=False)
    assert path == tmp_path / "synthetic" / small.name()
    assert any("generating" in m for m in messages)
    stamp_before = (path / "pix3d.json").stat().st_mtime_ns
    messages.clear()
    assert ensure_builtin(tmp_path, log=messages.append, config=small) == path
    assert messages == [] and (path / "pix3d.json").stat().st_mtime_ns == stamp_before
    assert not [p for p in (tmp_path / "synthetic").iterdir() if p.name.startswith(".")]  # no temp left
    # The folder name tells sets apart: any change of n, seed, size or version moves it.
    from dataclasses import replace
    names = {small.name(), replace(small, n=7).name(), replace(small, seed=3).name(),
             replace(small, size=48).name(), replace(small, version=small.version + 1).name()}
    assert len(names) == 5


def test_prepare_reads_the_rendered_normals_and_boundaries(dataset, tmp_path):
    from pix3d.data.maps import BUILTIN_EDGES
    from pix3d.data.prepare import prepare

    data = prepare(dataset, 32, cache_dir=tmp_path, workers=1, progress=False, log=lambda m: None)
    assert data.images.shape == (CONFIG.n, 8, 32, 32)
    assert data.available["normals"] and data.manifest["sources"]["normals"] == "files"
    assert data.manifest["sources"]["boundaries"] == "files"
    assert data.manifest["edges"] == BUILTIN_EDGES  # the render's contours and creases: 3D edges
    assert data.images[:, 3].max() == 255 and data.images[:, 5:8].max() > 0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pix3d.synthetic", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_generates_reports_rate_and_writes_a_contact_sheet(tmp_path):
    out, sheet = tmp_path / "set", tmp_path / "sheet.png"
    done = run_cli("--out", str(out), "--n", "5", "--seed", "3", "--size", "40", "--workers", "2",
                   "--preview", str(sheet), "--rows", "4", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "images/s" in done.stdout
    assert len(json.loads((out / "pix3d.json").read_text())) == 5
    assert Image.open(sheet).size == (4 * 40, 4 * 40)
    # A previous synthetic set may be replaced by another one (in-process: saves a torch import).
    assert synthetic.main(["--out", str(out), "--n", "3", "--seed", "4", "--size", "40",
                           "--workers", "1", "--no-progress"]) == 0
    assert read_stamp(out)["seed"] == 4 and len(json.loads((out / "pix3d.json").read_text())) == 3
    assert len(list((out / "img").glob("*/*.png"))) == 3  # nothing of the old set remains


@pytest.mark.parametrize("args,needle", [
    (["--n", "0"], "--n must be a positive"),
    (["--n", "-3"], "--n must be a positive"),
    (["--size", "0"], "--size must be at least"),
    (["--workers", "0"], "--workers must be positive"),
    (["--n", "many"], "invalid int value"),
])
def test_cli_rejects_bad_numbers_with_one_error_line(tmp_path, args, needle):
    done = run_cli("--out", str(tmp_path / "x"), *args)
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and needle in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()


def test_cli_refuses_to_overwrite_a_folder_that_is_not_a_synthetic_set(tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not lose me")
    done = run_cli("--out", str(precious), "--n", "2", "--size", "32")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "not a synthetic Pix3D set" in done.stderr and str(precious) in done.stderr
    assert [p.name for p in precious.iterdir()] == ["thesis.txt"]
    assert (precious / "thesis.txt").read_text() == "do not lose me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temp folder left behind
    with pytest.raises(UsageError, match="not a synthetic"):
        generate(precious, SyntheticConfig(n=2, size=32), progress=False, log=None)


def test_cli_without_out_or_preview_is_a_usage_error():
    done = run_cli("--n", "4")
    assert done.returncode == 2 and done.stderr.startswith("error:") and "--out" in done.stderr


def test_inverse_warp_maps_one_rendered_view_onto_another():
    """Renderer and pix3d.geometry agree on the camera model: lifting view A's pixels with
    A's depth, moving them by the relative pose and projecting into view B lands on B's
    surface at B's depth, and on B's colour (shading lives in the model frame)."""
    config = SyntheticConfig(n=8, seed=1, size=96)
    mesh, palette = build_models(config)["sofa"][0]
    views = []
    for azimuth in (30.0, 40.0):
        cam = Camera(azimuth, 25.0, 5.0, 2.2, 40.0)
        R, t = camera_pose(cam)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, t
        r = render_view(mesh, palette, R, t, cam.focal_mm, 96, 96, np.random.default_rng(7))
        views.append((r, T))
    (a, T_a), (b, T_b) = views
    K = geometry.intrinsics(torch.tensor([40.0], dtype=torch.float64), 96, 96)
    depth_a = torch.tensor(np.where(a.mask, a.depth, 1.0))[None]
    source = np.concatenate([b.rgb, b.mask[..., None] * 255, np.where(b.mask, b.depth, 0)[..., None]], -1)
    source = torch.tensor(source, dtype=torch.float64).permute(2, 0, 1)[None]

    def compare(target_to_source):
        T = torch.tensor(target_to_source)[None]
        warped, valid = geometry.inverse_warp(source, depth_a, T, K)
        warped = warped[0].permute(1, 2, 0).numpy()
        z_in_b = geometry.transform_points(T, geometry.backproject(depth_a, K))[0, :, 2].reshape(96, 96).numpy()
        # Where A sees the object and B sees it too, away from B's silhouette edges.
        keep = a.mask & valid[0].numpy() & (warped[..., 3] > 254.9)
        depth_error = np.abs(warped[..., 4] - z_in_b)[keep] / z_in_b[keep]
        colour_error = np.abs(warped[..., :3] - a.rgb)[keep].mean()
        return np.median(depth_error), colour_error, keep.sum()

    depth_error, colour_error, n_pixels = compare(T_b @ np.linalg.inv(T_a))
    assert n_pixels > 0.5 * a.mask.sum()
    assert depth_error < 1e-3, depth_error  # surfaces visible in both views: same point
    assert colour_error < 12, colour_error  # sensor noise and interpolation only
    wrong_depth_error, _, _ = compare(np.eye(4))
    assert wrong_depth_error > 20 * max(depth_error, 1e-4)
