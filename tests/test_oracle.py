"""Oracle maps and the render check on real files: a model, a photo and a mask on disk, a
pix3d.json, `prepare(normals=, boundaries=)` and `python -m pix3d.inspect --render-check`.

The masks here are drawn by the test's own projection, written from Pix3D's formula
(X_cam = R X + t; u = W/2 - f X/Z, v = H/2 - f Y/Z, f = focal_length * W / 32), filling each
projected triangle with PIL: never the code under test."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from analysis.cells import ORACLE_MARK
from analysis.run_fields import data_provenance, oracle_inputs
from analysis.summary import summarise
from pix3d.constants import MODALITY_CHANNELS
from pix3d.data.maps import EDGE_KINDS, ORACLE
from pix3d.data.prepare import prepare
from pix3d.render.mesh import boxes_to_mesh, write_obj
from pix3d.render.oracle import ORACLE_SOURCE, RenderProblem, crop_camera
from pix3d.render.shading import NORMALS_BACKGROUND
from pix3d.render.raster import rasterize, rasterize_projected
from pix3d.render.shapes import build_bed, build_chair
from tests.pix3d_fixtures import REAL_ENTRY, rotation_from_angles
from tests.inproc import run_module

REPO = Path(__file__).resolve().parents[1]
MASK, BOUNDARIES, NORMALS = (slice(*MODALITY_CHANNELS[m]) for m in ("mask", "boundaries", "normals"))


def own_projection(vertices, rot_mat, trans_mat, focal_mm, width, height, *, mirrored=False):
    """Pixel coordinates by the formula (mirrored: the x-right / y-down frame, to show the test can fail)."""
    cam = vertices @ np.asarray(rot_mat, float).T + np.asarray(trans_mat, float)
    f = focal_mm * width / 32.0
    sign = 1.0 if mirrored else -1.0
    return width / 2 + sign * f * cam[:, 0] / cam[:, 2], height / 2 + sign * f * cam[:, 1] / cam[:, 2]


def own_mask(vertices, faces, u, v, width, height) -> np.ndarray:
    """Fill every projected triangle (PIL's polygon fill): the silhouette, by the test's hand."""
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    for a, b, c in faces:
        draw.polygon([(u[a], v[a]), (u[b], v[b]), (u[c], v[c])], fill=255)
    return np.asarray(image) > 0


def add_entry(root: Path, name: str, mesh, rot_mat, trans_mat, focal_mm, width, height, *,
              mask_override=None, model: str | None = None) -> dict:
    """Write one real-format entry (model .obj, photo, mask) and return its json entry."""
    model = model or f"model/chair/{name}/model.obj"
    if mesh is not None:
        write_obj(mesh, root / model)
    verts = mesh.vertices if mesh is not None else np.zeros((1, 3))
    u, v = own_projection(verts, rot_mat, trans_mat, focal_mm, width, height)
    mask = own_mask(verts, mesh.faces, u, v, width, height) if mesh is not None else None
    if mask_override is not None:
        mask = mask_override(mask)
    ys, xs = np.nonzero(mask)
    rng = np.random.default_rng(len(name))
    photo = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    photo[mask] = (200, 120, 60)
    for folder, array in (("img", photo), ("mask", mask.astype(np.uint8) * 255)):
        (root / folder / "chair").mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / folder / "chair" / f"{name}.png")
    R, t = np.asarray(rot_mat, float), np.asarray(trans_mat, float)
    return {"img": f"img/chair/{name}.png", "mask": f"mask/chair/{name}.png", "category": "chair",
            "img_size": [width, height], "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
            "model": model, "rot_mat": R.tolist(), "trans_mat": t.tolist(), "focal_length": focal_mm,
            "cam_position": (-R.T @ t).tolist(), "inplane_rotation": 0.0,
            "truncated": False, "occluded": False, "slightly_occluded": False}


def chair():
    return boxes_to_mesh(build_chair(np.random.default_rng(3)))


def two_entry_folder(root: Path) -> Path:
    """The real bed entry's pose and image size with a procedural bed, and a 2400 x 1800
    photo of a chair (a photo-sized image: the oracle renders only its crop)."""
    bed = boxes_to_mesh(build_bed(np.random.default_rng(7)))
    bed = dataclasses.replace(bed, vertices=bed.vertices * 0.6)
    e = REAL_ENTRY
    entries = [add_entry(root, "0001", bed, e["rot_mat"], e["trans_mat"], e["focal_length"], *e["img_size"]),
               add_entry(root, "0002", chair(), rotation_from_angles(40, 25, 0.2), [0.05, -0.03, 2.2], 45.0, 2400, 1800)]
    (root / "pix3d.json").write_text(json.dumps(entries))
    return root


def quiet(root, size, cache, **kwargs):
    messages: list[str] = []
    data = prepare(root, size, cache_dir=cache, progress=False, workers=1, log=messages.append, **kwargs)
    return data, messages


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_oracle_silhouette_matches_an_independent_projection(tmp_path):
    root = two_entry_folder(tmp_path / "set")
    data, _ = quiet(root, 96, tmp_path / "cache", normals="oracle", boundaries="oracle")
    meta = json.loads((Path(data.manifest["cache_path"]) / "meta.json").read_text())
    for i in range(len(data)):
        rendered = (data.images[i, NORMALS] != NORMALS_BACKGROUND).any(0)  # 128 grey off the model
        drawn = data.images[i, MASK][0] >= 128          # the test's own projection, cropped by prepare
        assert 0.1 < drawn.mean() < 0.9
        assert iou(rendered, drawn) > 0.9, (i, iou(rendered, drawn))
        assert meta["render_iou"][i] > 0.9 and meta["render_problem"][i] is None
        assert data.images[i, BOUNDARIES][0][rendered].max() == 255    # contours and creases drawn
    # The check can fail: a mask drawn in the mirrored frame does not match the oracle.
    e = REAL_ENTRY
    bed = boxes_to_mesh(build_bed(np.random.default_rng(7)))
    verts = bed.vertices * 0.6
    W, H = e["img_size"]
    right = own_mask(verts, bed.faces, *own_projection(verts, e["rot_mat"], e["trans_mat"], e["focal_length"], W, H), W, H)
    wrong = own_mask(verts, bed.faces, *own_projection(verts, e["rot_mat"], e["trans_mat"], e["focal_length"], W, H,
                                                        mirrored=True), W, H)
    assert iou(right, wrong) < 0.7


def test_oracle_maps_are_labelled_and_sources_enter_the_cache_key(tmp_path):
    root = two_entry_folder(tmp_path / "set")
    cache = tmp_path / "cache"
    oracle, messages = quiet(root, 64, cache, normals="oracle", boundaries="oracle")
    m = oracle.manifest
    assert m["sources"]["normals"] == m["sources"]["boundaries"] == ORACLE_SOURCE and "oracle" in ORACLE_SOURCE
    assert m["oracle"] == ["boundaries", "normals"] and m["available"]["normals"]
    assert m["requested_sources"] == {"boundaries": "oracle", "normals": "oracle"}
    meta = json.loads((Path(m["cache_path"]) / "meta.json").read_text())
    assert meta["normals_source"] == [ORACLE_SOURCE] * 2
    assert any("oracle" in line for line in messages)
    auto, _ = quiet(root, 64, cache)
    mixed, _ = quiet(root, 64, cache, boundaries="oracle")
    none, _ = quiet(root, 64, cache, normals="none", boundaries="canny")
    paths = {d.manifest["cache_path"] for d in (oracle, auto, mixed, none)}
    assert len(paths) == 4
    assert auto.manifest["oracle"] == [] and not auto.available["normals"]
    assert mixed.manifest["oracle"] == ["boundaries"] and not mixed.available["normals"]
    # Without asking for the oracle, the render check is still recorded (silhouette only).
    assert auto.manifest["render_check"]["rendered"] == 2 and auto.manifest["render_check"]["below"] == 0
    again, messages = quiet(root, 64, cache, normals="oracle", boundaries="oracle")
    assert again.manifest["cache_path"] == oracle.manifest["cache_path"] and "cache hit" in messages[0]
    # MLflow: a run's params say oracle, and its tag names the oracle modalities it trained on.
    assert data_provenance(m)["data.oracle"] == "boundaries+normals"
    assert data_provenance(m)["data.sources.normals"] == ORACLE_SOURCE
    assert oracle_inputs(m, "rgb+mask") == "none" and oracle_inputs(m, "rgb+mask+normals") == "normals"
    assert oracle_inputs(auto.manifest, "rgb+mask+boundaries+normals") == "none"
    # What the boundaries show: the model's 3D edges from the oracle, texture edges from Canny.
    assert m["edges"] == EDGE_KINDS[ORACLE] and m["edges"].startswith("3D edges")
    assert none.manifest["edges"] == EDGE_KINDS["canny"] and none.manifest["edges"].startswith("texture edges")
    assert auto.manifest["edges"].startswith("texture edges")  # no boundaries/ folder, no weights: Canny
    assert data_provenance(m)["data.edges"] == EDGE_KINDS[ORACLE]


def test_bad_source_names_are_usage_errors(tmp_path):
    from pix3d.errors import UsageError

    root = two_entry_folder(tmp_path / "set")
    with pytest.raises(UsageError, match="--normals must be one of .*oracle.*got 'canny'"):
        quiet(root, 64, tmp_path / "cache", normals="canny")
    with pytest.raises(UsageError, match="--boundaries files: boundaries/ lacks maps for 2 of 2 entries"):
        quiet(root, 64, tmp_path / "cache", boundaries="files")


def _break(kind: str, root: Path, entry: dict) -> str:
    """Make the second entry's model (or pose) bad in one way; what the message must say."""
    path = root / entry["model"]
    if kind == "missing":
        path.unlink()
        return "is missing"
    if kind == "unreadable":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
        return "unreadable"
    if kind == "no_faces":
        path.write_text("\n".join(l for l in path.read_text().splitlines() if not l.startswith("f ")))
        return "no faces"
    if kind == "nan":
        lines = path.read_text().splitlines()
        lines[1] = "v nan 0.1 0.2"
        path.write_text("\n".join(lines))
        return "NaN"
    if kind == "behind":
        entry["trans_mat"] = [0.0, 0.0, -3.0]
        entry["cam_position"] = (-np.asarray(entry["rot_mat"]).T @ np.asarray(entry["trans_mat"])).tolist()
        return "behind the camera"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "unreadable", "no_faces", "nan", "behind"])
def test_a_bad_model_or_pose_makes_its_oracle_maps_unavailable_or_skips_it(tmp_path, kind):
    root = two_entry_folder(tmp_path / "set")
    entries = json.loads((root / "pix3d.json").read_text())
    expected = _break(kind, root, entries[1])
    (root / "pix3d.json").write_text(json.dumps(entries))
    data, messages = quiet(root, 64, tmp_path / "cache", normals="oracle", boundaries="oracle")
    named = [line for line in messages if "entry 1 (img/chair/0002.png)" in line]
    assert len(named) == 1 and expected in named[0] and "\n" not in named[0], messages
    assert not data.available["normals"] and not data.available["boundaries"]  # never a blank map
    assert "unavailable" in data.manifest["sources"]["normals"] and "oracle" in data.manifest["sources"]["normals"]
    skipped, _ = quiet(root, 64, tmp_path / "cache", normals="oracle", boundaries="oracle", skip_invalid=True)
    assert len(skipped) == 1 and skipped.available["normals"]
    assert len(skipped.manifest["skipped"]) == 1 and expected in skipped.manifest["skipped"][0]
    # Not asking for the oracle: the entry stays, its render check says why it has no IoU.
    plain, messages = quiet(root, 64, tmp_path / "cache")
    meta = json.loads((Path(plain.manifest["cache_path"]) / "meta.json").read_text())
    assert len(plain) == 2 and meta["render_iou"][1] is None and expected in meta["render_problem"][1]
    assert any("render check: 1 of 2" in line for line in messages)


def test_non_positive_focal_length_is_refused_naming_the_entry(tmp_path):
    from pix3d.errors import Pix3DError

    with pytest.raises(RenderProblem, match="focal_length must be a positive number, got 0.0"):
        crop_camera(0.0, (100, 100), (0, 0, 50, 50), 32)
    root = two_entry_folder(tmp_path / "set")
    entries = json.loads((root / "pix3d.json").read_text())
    entries[1]["focal_length"] = -3.0
    (root / "pix3d.json").write_text(json.dumps(entries))
    with pytest.raises(Pix3DError, match=r"entry 1 .*focal_length must be positive"):
        quiet(root, 64, tmp_path / "cache", normals="oracle")
    data, _ = quiet(root, 64, tmp_path / "cache", normals="oracle", skip_invalid=True)
    assert len(data) == 1 and "focal_length" in data.manifest["skipped"][0]


def test_render_check_cli_prints_quantiles_and_lists_low_entries(tmp_path):
    root = two_entry_folder(tmp_path / "set")
    entries = json.loads((root / "pix3d.json").read_text())
    # A third entry whose mask is only the top third of its silhouette: its IoU is well below 0.7.
    def top_third(mask):
        ys = np.nonzero(mask)[0]
        cut = ys.min() + (ys.max() - ys.min()) // 3
        out = mask.copy()
        out[cut:] = False
        return out
    entries.append(add_entry(root, "0003", chair(), rotation_from_angles(200, 15, 0.0), [0.0, 0.0, 2.5], 40.0,
                             800, 600, mask_override=top_third))
    # A fourth entry, a photo of its own (one photo annotated twice is refused), whose model is gone.
    for kind in ("img", "mask"):
        shutil.copy(root / entries[0][kind], root / entries[0][kind].replace("0001", "0004"))
    entries.append(dict(entries[0], img=entries[0]["img"].replace("0001", "0004"),
                        mask=entries[0]["mask"].replace("0001", "0004"), model="model/chair/gone/model.obj"))
    (root / "pix3d.json").write_text(json.dumps(entries))
    run = run_module("pix3d.inspect", root, "--render-check", "--size", "64", "--cache", tmp_path / "cache")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "3 of 4 entries rendered, 1 cannot be" in out and "median" in out and "p05" in out
    assert "1 entries below IoU 0.7:" in out and "entry 2 (img/chair/0003.png): IoU 0." in out
    assert "entry 3 (img/chair/0004.png): model file model/chair/gone/model.obj is missing" in out
    assert "entry 0 (" not in out and "entry 1 (" not in out
    bad = run_module("pix3d.inspect", tmp_path / "nowhere", "--render-check")
    assert bad.returncode in (1, 2) and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_prepare_cli_takes_sources_and_refuses_bad_ones(tmp_path):
    root = two_entry_folder(tmp_path / "set")
    ok = subprocess.run([sys.executable, "-m", "pix3d.prepare", "--data", str(root), "--size", "32", "--cache",
                         str(tmp_path / "cache"), "--normals", "oracle", "--boundaries", "oracle", "--no-progress"],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "normals from oracle" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "pix3d.prepare", "--data", str(root), "--size", "32",
                          "--normals", "canny"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error:")


def test_contact_sheet_is_a_png_with_a_row_per_entry(tmp_path):
    root = two_entry_folder(tmp_path / "set")
    run = run_module("pix3d.inspect", root, "--contact-sheet", tmp_path / "sheet.png", "--rows", "2", "--size", "64")
    assert run.returncode == 0, run.stderr
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size[0] >= 5 * 64 and sheet.size[1] == 14 + 2 * (64 + 14)


def test_vectorised_rasteriser_agrees_with_the_loop():
    mesh = chair()
    R, t = rotation_from_angles(70, 20, 0.3), np.array([0.02, 0.01, 1.8])
    cam = mesh.vertices @ R.T + t
    f, W, H = 120.0, 160, 120
    face_id, depth = rasterize(cam, mesh.faces, f, W, H, cull_backfaces=False)
    u, v = W / 2 - f * cam[:, 0] / cam[:, 2], H / 2 - f * cam[:, 1] / cam[:, 2]
    fast_id, fast_depth = rasterize_projected(u, v, cam[:, 2], mesh.faces, W, H)
    mask, _ = rasterize_projected(u, v, cam[:, 2], mesh.faces, W, H, with_depth=False)
    assert (face_id >= 0).sum() > 500
    assert ((face_id >= 0) == (fast_id >= 0)).all() and (mask == (fast_id >= 0)).all()
    hit = face_id >= 0
    assert np.allclose(depth[hit], fast_depth[hit])


def test_crop_camera_is_the_photo_camera_shifted_and_scaled():
    cam = crop_camera(32.0, (1000, 800), (100, 200, 500, 600), 100)  # f = 1000 px, window 400 px -> 100
    assert math.isclose(cam.fx, 250.0) and math.isclose(cam.cx, (500 - 100) / 4) and math.isclose(cam.cy, (400 - 200) / 4)


def test_table_marks_oracle_cells_with_a_dagger_and_a_footnote():
    def records(oracle):
        return pd.DataFrame([{"run_id": f"r{s}", "parent_run_id": "p", "sweep_id": "s", "end_time": s,
                              "model": "combined_net", "modalities": "rgb+mask+boundaries+normals", "lr": 1e-5,
                              "seed": str(s), "seed_quirks": False, "split": "published", "oracle": oracle,
                              "value": 0.5 + s / 100, "baseline": 0.3} for s in range(2)])
    marked = summarise(records(True), experiment="x").to_markdown()
    plain = summarise(records(False), experiment="x").to_markdown()
    assert f"(n=2) {ORACLE_MARK}" in marked and "not comparable with the published numbers" in marked
    assert ORACLE_MARK not in plain


def test_mlflow_runs_and_the_table_say_oracle(tmp_path):
    """Through a real MLflow store: the sweep's runs carry the oracle tag and params, and the
    table built back from them marks the oracle cell and only it."""
    from analysis.records import load_records
    from analysis.sweep_logger import SweepInfo, SweepLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    manifest = {"key": "k", "n": 2, "oracle": ["boundaries", "normals"], "edges": EDGE_KINDS[ORACLE],
                "sources": {"rgb": "img files", "normals": ORACLE_SOURCE, "boundaries": ORACLE_SOURCE}}
    logger = SweepLogger(uri, SweepInfo(sweep_id="s1", sweep_name="oracle", experiment="oracle",
                                        grid="ablation", data_manifest=manifest))
    for trial, modalities in (("t1", "rgb+mask"), ("t2", "rgb+mask+boundaries+normals")):
        logger.start_trial(trial, {"model": "combined_net", "modalities": modalities, "lr": 1e-5, "seed": 0})
        logger.log_result(trial, {"epoch": 1, "val_azimuth_acc": 0.5, "majority_azimuth_acc": 0.2})
        logger.end_trial(trial, "FINISHED", last_result=None)
    runs = {r.data.tags["modalities"]: r for r in logger.client.search_runs([logger.experiment_id])
            if "modalities" in r.data.tags}
    assert runs["rgb+mask"].data.tags["oracle_inputs"] == "none"
    full = runs["rgb+mask+boundaries+normals"]
    assert full.data.tags["oracle_inputs"] == "boundaries+normals"
    assert full.data.params["data.oracle"] == "boundaries+normals" and "oracle" in full.data.params["data.sources.normals"]
    records, _, _ = load_records(uri, "oracle", metric="val_azimuth_acc", at="last", by="subset")
    table = summarise(records, experiment="oracle").to_markdown()
    line = next(l for l in table.splitlines() if l.startswith("| combined_net"))
    assert line.count(ORACLE_MARK) == 1 and "not comparable with the published numbers" in table
    assert f"boundaries input: {EDGE_KINDS[ORACLE]} in 1 run(s)" in table  # from the run's data.edges


def test_table_says_which_edges_the_boundaries_input_showed():
    def records(edges):
        return pd.DataFrame([{"run_id": f"r{s}{m}", "parent_run_id": "p", "sweep_id": "s", "end_time": s,
                              "model": "combined_net", "modalities": m, "lr": 1e-5, "seed": str(s),
                              "seed_quirks": False, "split": "published", "oracle": False, "edges": edges,
                              "value": 0.5, "baseline": 0.3}
                             for s in range(2) for m in ("rgb+mask", "rgb+mask+boundaries")])
    notes = summarise(records(EDGE_KINDS["canny"]), experiment="x").notes
    [note] = [n for n in notes if n.startswith("boundaries input:")]
    assert f"{EDGE_KINDS['canny']} in 2 run(s)" in note  # the rgb+mask runs do not count
    oracle_notes = summarise(records(EDGE_KINDS[ORACLE]), experiment="x").notes
    assert any("3D edges (oracle" in n for n in oracle_notes)
    no_boundaries = records("")
    no_boundaries = no_boundaries[no_boundaries["modalities"] == "rgb+mask"]
    assert not any(n.startswith("boundaries input:") for n in summarise(no_boundaries, experiment="x").notes)


def test_predict_without_its_weights_is_one_usage_error_and_auto_falls_back(tmp_path):
    """Until pix3d/data/predict.py and its weights are installed, asking for `predict` is a
    usage error saying what is missing, and auto means canny / unavailable."""
    from pix3d.constants import MODALITY
    from pix3d.data.maps import missing_predict_weights
    from pix3d.errors import UsageError

    problem = missing_predict_weights(MODALITY["normals"])
    if problem is None:
        pytest.skip("prediction weights are installed here")
    root = two_entry_folder(tmp_path / "set")
    with pytest.raises(UsageError, match=r"^--normals predict: ") as caught:
        quiet(root, 32, tmp_path / "cache", normals="predict")
    assert "\n" not in str(caught.value) and problem in str(caught.value)
    data, _ = quiet(root, 32, tmp_path / "cache")
    assert data.manifest["sources"]["boundaries"] == "canny-like edges from rgb" and not data.available["normals"]
    assert data.manifest["predict_weights"] == {"boundaries": False, "normals": False}


def test_bench_prepare_subdivision_keeps_the_shape_and_quadruples_triangles():
    from benchmarks.bench_prepare import subdivide

    mesh = chair()
    v, f = subdivide(mesh.vertices, mesh.faces, 2)
    assert len(f) == 16 * len(mesh.faces) and f.max() < len(v)
    assert np.allclose(v.min(0), mesh.vertices.min(0)) and np.allclose(v.max(0), mesh.vertices.max(0))

    def area(vertices, faces):  # the same surface: summed triangle areas do not change
        a, b, c = (vertices[faces[:, i]] for i in range(3))
        return np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2
    assert np.isclose(area(v, f), area(mesh.vertices, mesh.faces))


def test_a_truncated_object_is_rendered_only_inside_the_photo(tmp_path):
    """The model runs off the photo's left edge: the crop's padding stays empty in the oracle
    maps as in the rgb (no edge; for normals no surface, 128 grey), and the render check
    compares only what the photo shows."""
    root = tmp_path / "set"
    mesh = chair()
    entry = add_entry(root, "0001", mesh, rotation_from_angles(30, 20, 0.0), [0.35, 0.0, 2.0], 60.0, 640, 480)
    assert entry["bbox"][0] == 0  # truncated by the test's own projection
    (root / "pix3d.json").write_text(json.dumps([entry]))
    data, _ = quiet(root, 64, tmp_path / "cache", normals="oracle", boundaries="oracle")
    rgb_padding = data.images[0, :3].sum(0) == 0
    assert rgb_padding[:, 0].all()                     # the crop reaches past the photo's edge
    assert (data.images[0, NORMALS][:, rgb_padding] == NORMALS_BACKGROUND).all()
    assert not data.images[0, BOUNDARIES][0][rgb_padding].any()
    meta = json.loads((Path(data.manifest["cache_path"]) / "meta.json").read_text())
    assert meta["render_iou"][0] > 0.9


def test_paper_ablation_dry_run_on_a_real_format_folder_needs_a_normals_source(tmp_path, capsys, monkeypatch):
    """`search.run --grid ablation --budget paper --dry-run` on a real-format folder without
    normals/: refused in one line naming normals and the sources; with --normals oracle it
    plans every trial (2 models x 4 subsets x 3 seeds) and says where each modality comes from."""
    from tests.test_search import run_main

    root = two_entry_folder(tmp_path / "set")
    monkeypatch.chdir(tmp_path)

    def dry(*extra):
        code, out, err = run_main(["--grid", "ablation", "--budget", "paper", "--data", str(root), "--dry-run",
                                   *extra])
        return subprocess.CompletedProcess([], code, out, err)

    refused = dry()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: grid ablation uses normals") and "--normals" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    planned = dry("--normals", "oracle")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "grid ablation: 24 trials" in planned.stdout
    assert "normals from " + ORACLE_SOURCE in planned.stdout and "2 entries" in planned.stdout
    assert "image_size=224" in planned.stdout and not (tmp_path / "ray_results").exists()
