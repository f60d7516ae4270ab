"""pix3d.annotations on real files: the quoted real entry, every image kind, each bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

from pix3d.data.annotations import load_annotations
from pix3d.errors import Pix3DError
from tests.pix3d_fixtures import REAL_ENTRY, read_json, write_json, write_pix3d_folder


@pytest.fixture
def folder(tmp_path):
    return write_pix3d_folder(tmp_path / "pix3d", 9)


def test_real_entry_is_typed_and_extra_fields_ignored(tmp_path):
    root = write_pix3d_folder(tmp_path / "real", [REAL_ENTRY])
    (ann,), skipped = load_annotations(root)
    assert skipped == []
    assert ann.index == 0 and ann.img == "img/bed/0001.png" and ann.category == "bed"
    assert ann.img_size == (395, 244) and ann.bbox == (4, 22, 362, 228)
    assert ann.rot_mat.shape == (3, 3) and ann.trans_mat.shape == (3,)
    np.testing.assert_allclose(ann.cam_position, REAL_ENTRY["cam_position"])
    assert ann.inplane_rotation == pytest.approx(-0.0785172)
    assert ann.focal_length == pytest.approx(35.2704)
    assert ann.truncated is False and ann.slightly_occluded is False
    assert not hasattr(ann, "voxel")


def test_every_image_kind_loads(folder):
    anns, skipped = load_annotations(folder)
    assert len(anns) == 9 and skipped == []
    modes = {Image.open(folder / a.img).mode for a in anns}
    formats = {Image.open(folder / a.img).format for a in anns}
    assert {"RGB", "L", "P", "RGBA"} <= modes
    assert {"PNG", "JPEG", "TIFF"} <= formats


def test_cam_position_may_be_absent(folder):
    entries = read_json(folder)
    del entries[2]["cam_position"]
    write_json(folder, entries)
    anns, _ = load_annotations(folder)
    assert anns[2].cam_position is None and anns[1].cam_position is not None


def _break(folder, index, mutate):
    entries = read_json(folder)
    mutate(entries[index])
    write_json(folder, entries)
    return entries[index]["img"] if isinstance(entries[index], dict) and "img" in entries[index] else None


BAD_ENTRIES = {
    "missing field": (lambda e: e.pop("rot_mat"), "missing required field rot_mat"),
    "not orthonormal": (lambda e: e.__setitem__("rot_mat", [[1, 0, 0], [0, 1, 0], [0, 0.1, 1]]), "not orthonormal"),
    "reflection": (lambda e: e.__setitem__("rot_mat", [[1, 0, 0], [0, 1, 0], [0, 0, -1]]), "reflection"),
    "rot_mat shape": (lambda e: e.__setitem__("rot_mat", [1, 0, 0]), "rot_mat must have shape"),
    "bbox outside": (lambda e: e.__setitem__("bbox", [0, 0, 500, 10]), "outside img_size"),
    "bbox empty": (lambda e: e.__setitem__("bbox", [10, 10, 10, 20]), "empty"),
    "flag not bool": (lambda e: e.__setitem__("occluded", "no"), "occluded must be true or false"),
    "focal not number": (lambda e: e.__setitem__("focal_length", "35"), "focal_length must be a number"),
    "cam disagrees": (lambda e: e.__setitem__("cam_position", [1.0, 2.0, 3.0]), "disagrees"),
    "img_size wrong": (lambda e: e.__setitem__("img_size", [200, 150]), "img_size says 200x150"),
    "missing image": (lambda e: e.__setitem__("img", "img/bed/nothere.png"), "does not exist"),
    "category empty": (lambda e: e.__setitem__("category", ""), "category"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_bad_entry_names_entry_and_problem(folder, case):
    mutate, expected = BAD_ENTRIES[case]
    img = _break(folder, 4, mutate)
    with pytest.raises(Pix3DError) as err:
        load_annotations(folder)
    message = str(err.value)
    assert "\n" not in message
    assert "pix3d.json" in message and "entry 4" in message and expected in message
    if img:
        assert img in message
    # ... and with skip_invalid the other entries survive and the skip is listed.
    anns, skipped = load_annotations(folder, skip_invalid=True)
    assert [a.index for a in anns] == [0, 1, 2, 3, 5, 6, 7, 8]
    assert len(skipped) == 1 and skipped[0].startswith("entry 4") and expected in skipped[0]


def test_corrupt_image_is_named(folder):
    entries = read_json(folder)
    (folder / entries[3]["img"]).write_bytes(b"not an image at all")
    with pytest.raises(Pix3DError, match=r"entry 3 .*not a readable image"):
        load_annotations(folder)


def test_mask_size_differs_from_image(folder):
    entries = read_json(folder)
    Image.new("L", (20, 20)).save(folder / entries[5]["mask"])
    with pytest.raises(Pix3DError, match=r"entry 5 \(.*\): mask .* is 20x20 but the image is 96x72"):
        load_annotations(folder)
    anns, skipped = load_annotations(folder, skip_invalid=True)
    assert len(anns) == 8 and "mask" in skipped[0]


def test_check_files_off_needs_no_files(tmp_path):
    (tmp_path / "pix3d.json").write_text(__import__("json").dumps([REAL_ENTRY]))
    anns, _ = load_annotations(tmp_path, check_files=False)
    assert anns[0].img == REAL_ENTRY["img"]
    with pytest.raises(Pix3DError, match="does not exist"):
        load_annotations(tmp_path)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("[{", "malformed JSON at line 1 column 3"),
        ("{}", "expected a JSON list"),
        ("[]", "empty"),
        ("[3]", "entry 0: must be a JSON object"),
    ],
)
def test_bad_json_file(tmp_path, content, expected):
    (tmp_path / "pix3d.json").write_text(content)
    with pytest.raises(Pix3DError) as err:
        load_annotations(tmp_path)
    assert expected in str(err.value) and str(tmp_path / "pix3d.json") in str(err.value)


def test_missing_folder_and_json(tmp_path):
    with pytest.raises(Pix3DError, match="does not exist"):
        load_annotations(tmp_path / "absent")
    with pytest.raises(Pix3DError, match="pix3d.json not found"):
        load_annotations(tmp_path)


def test_all_entries_invalid_is_an_error_even_when_skipping(folder):
    entries = read_json(folder)
    broken = [dict(copy.deepcopy(e), bbox=[0, 0, 0, 0]) for e in entries]
    write_json(folder, broken)
    with pytest.raises(Pix3DError, match="no valid entries"):
        load_annotations(folder, skip_invalid=True)
