"""The synthetic set in the real format, field for field: every entry has exactly the keys of
a real Pix3D entry with the same JSON types, and its keypoints are consistent with its pose.

The projection below is this test's own copy of Pix3D's camera (docs/design.md): X_cam =
R X + t, u = cx - f X/Z, v = cy - f Y/Z, f = focal_length * W / 32, centre at W/2, H/2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pix3d.data.annotations import load_annotations
from pix3d.render.synthetic import SyntheticConfig, generate
from tests.pix3d_fixtures import REAL_ENTRY


def signature(value):
    """The JSON type of a value, lists by the types of their elements."""
    if isinstance(value, list):
        return ("list", frozenset(signature(v) for v in value))
    return type(value).__name__


def real_signature(key):
    sig = signature(REAL_ENTRY[key])
    return sig


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_format") / "set"
    generate(root, SyntheticConfig(n=21, seed=3, size=64), workers=1, progress=False, log=None)
    return root


def test_every_entry_has_the_real_keys_with_the_real_types(dataset):
    entries = json.loads((dataset / "pix3d.json").read_text())
    assert len(REAL_ENTRY) == 20
    for e in entries:
        assert list(e) == list(REAL_ENTRY)  # the same keys, in real Pix3D's order
        for key, value in e.items():
            if key == "2d_keypoints":  # the real entry has one point; ours has several
                assert signature(value) == ("list", frozenset({("list", frozenset({("list", frozenset({"float"}))}))}))
            else:
                assert signature(value) == real_signature(key), key
        assert e["img_source"] == e["model_source"] == "pix3d.synthetic"
        assert e["model_raw"] == e["model"] and (dataset / e["model_raw"]).is_file()
        assert e["voxel"] == ""
        assert len(e["img_size"]) == 2 and len(e["bbox"]) == 4 and len(e["cam_position"]) == 3
    # The project's loader still reads the set, files checked.
    anns, skipped = load_annotations(dataset)
    assert len(anns) == len(entries) and not skipped


def test_2d_keypoints_are_the_3d_keypoints_projected(dataset):
    entries = json.loads((dataset / "pix3d.json").read_text())
    shown = hidden = 0
    for e in entries:
        lines = (dataset / e["3d_keypoints"]).read_text().splitlines()
        points = np.array([[float(c) for c in line.split()] for line in lines])
        assert points.shape[1] == 3 and 4 <= len(points) <= 8
        # Keypoints are vertices of the model file.
        vertices = np.array([[float(c) for c in line.split()[1:]]
                             for line in (dataset / e["model"]).read_text().splitlines()
                             if line.startswith("v ")])
        assert all(np.abs(vertices - p).max(axis=1).min() < 1e-6 for p in points)
        w, h = e["img_size"]
        cam = points @ np.array(e["rot_mat"]).T + np.array(e["trans_mat"])
        f = e["focal_length"] * w / 32.0
        u, v = w / 2 - f * cam[:, 0] / cam[:, 2], h / 2 - f * cam[:, 1] / cam[:, 2]
        assert len(e["2d_keypoints"]) == 1 and len(e["2d_keypoints"][0]) == len(points)
        for (ku, kv), pu, pv, z in zip(e["2d_keypoints"][0], u, v, cam[:, 2]):
            inside = z > 0 and 0 <= pu < w and 0 <= pv < h
            if [ku, kv] == [-1.0, -1.0]:
                assert not inside or min(pu, pv) < 0.01 or pu > w - 0.01 or pv > h - 0.01
                hidden += 1
            else:
                assert 0 <= ku < w and 0 <= kv < h
                assert abs(ku - pu) <= 0.006 and abs(kv - pv) <= 0.006
                shown += 1
        # The visible keypoints lie in the box around the object (the bbox's pixels are
        # inclusive, a vertex on the silhouette may sit on the pixel edge beyond it).
        x0, y0, x1, y1 = e["bbox"]
        for ku, kv in e["2d_keypoints"][0]:
            if [ku, kv] != [-1.0, -1.0]:
                assert x0 - 1 <= ku <= x1 + 2 and y0 - 1 <= kv <= y1 + 2
    assert shown > 3 * hidden  # most corners are in the image: the check above is not empty
