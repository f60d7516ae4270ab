"""pix3d.pose: the angle convention on the quoted real entry, and the bin schemes."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from pix3d.data.annotations import load_annotations
from pix3d.constants import N_BINS
from pix3d.errors import Pix3DError, UsageError
from pix3d.data.pose import (
    BIN_SCHEMES,
    Bins,
    angles,
    angles_from_cam_position,
    circular_bin_distance,
    fit_bins,
    get_bin_scheme,
)
from tests.pix3d_fixtures import REAL_ENTRY, REAL_ENTRY_ANGLES, make_entry, write_pix3d_folder


@pytest.fixture(scope="module")
def real_annotation(tmp_path_factory):
    root = write_pix3d_folder(tmp_path_factory.mktemp("real"), [REAL_ENTRY])
    return load_annotations(root)[0][0]


def test_real_entry_angles_to_a_hundredth_of_a_degree(real_annotation):
    azimuth, elevation, inplane = angles(real_annotation)
    assert azimuth == pytest.approx(REAL_ENTRY_ANGLES[0], abs=0.01)
    assert elevation == pytest.approx(REAL_ENTRY_ANGLES[1], abs=0.01)
    assert inplane == pytest.approx(REAL_ENTRY_ANGLES[2], abs=0.01)


def test_fallback_to_rotation_and_translation(real_annotation):
    without = dataclasses.replace(real_annotation, cam_position=None)
    for got, want in zip(angles(without), REAL_ENTRY_ANGLES):
        assert got == pytest.approx(want, abs=0.01)


def test_disagreeing_cam_position_raises_naming_entry(real_annotation):
    moved = dataclasses.replace(real_annotation, cam_position=np.array([0.7, 0.2, 0.9]))
    with pytest.raises(Pix3DError, match=r"entry 0 \(img/bed/0001.png\): cam_position .* disagrees"):
        angles(moved)


@pytest.mark.parametrize("azimuth", [0.5, 44.0, 91.0, 179.0, 200.0, 300.0, 359.5])
@pytest.mark.parametrize("elevation", [-30.0, 0.0, 12.5, 60.0])
def test_convention_recovers_the_camera_that_made_the_pose(azimuth, elevation):
    # The fixture builds a look-at rotation for a camera at (azimuth, elevation); angles()
    # from -R^T t alone must give them back (the real annotations' convention).
    entry = make_entry(
        0, category="chair", model="m", img_size=(64, 64), ext="png", azimuth=azimuth,
        elevation=elevation, inplane_rad=0.2, distance=2.5, rng=np.random.default_rng(0),
    )
    rot, trans = np.array(entry["rot_mat"]), np.array(entry["trans_mat"])
    az, el = angles_from_cam_position(-rot.T @ trans)
    assert az == pytest.approx(azimuth, abs=0.01) and el == pytest.approx(elevation, abs=0.01)


def test_azimuth_wraps_into_0_360():
    assert angles_from_cam_position([-1e-18, 0.0, -1.0])[0] == 0.0
    assert angles_from_cam_position([-1.0, 0.0, 0.0])[0] == pytest.approx(270.0)
    assert angles_from_cam_position([0.0, 1.0, 0.0])[1] == pytest.approx(90.0)


def published_rule(values, edges):
    """The published labelling, written out independently of pix3d.pose."""
    labels = np.digitize(values, edges, right=True) - 1
    labels[labels == -1] = 0
    return labels


def test_seed_scheme_is_the_published_rule():
    rng = np.random.default_rng(1)
    azimuth = np.concatenate([rng.uniform(0, 360, 500), [0.0, 45.0, 45.000001, 180.0, 359.999]])
    elevation = np.concatenate([rng.uniform(-40, 60, 500), [-5.0, 0.0, 45.0, 45.5, 89.0]])
    inplane_rad = np.concatenate([rng.uniform(-0.6, 0.6, 500), [-math.pi, -0.01, 0.0, 0.9, math.pi]])
    bins = fit_bins("published", azimuth, elevation, np.degrees(inplane_rad))
    labels = bins.labels(azimuth, elevation, np.degrees(inplane_rad))
    edges360 = np.linspace(0, 360, 9)
    np.testing.assert_array_equal(labels[:, 0], published_rule(azimuth, edges360))
    np.testing.assert_array_equal(labels[:, 1], published_rule(elevation, edges360))
    np.testing.assert_array_equal(labels[:, 2], published_rule(inplane_rad, np.linspace(-np.pi, np.pi, 9)))
    # The quirk is kept: every elevation below 45 degrees, negatives included, is bin 0.
    assert set(labels[elevation <= 45.0, 1]) == {0}
    # right=True: an angle on an edge belongs to the bin below it; 0 and 45 are both bin 0.
    assert labels[-5:, 0].tolist() == [0, 0, 1, 3, 7]
    assert labels[-5:, 2].tolist() == [0, 3, 3, 5, 7]


def test_quantile_is_fitted_on_the_training_split_only():
    rng = np.random.default_rng(2)
    train = [rng.uniform(0, 360, 800), rng.normal(15, 10, 800), rng.normal(0, 5, 800)]
    val = [rng.uniform(0, 360, 50), rng.normal(60, 3, 50), rng.normal(30, 1, 50)]
    bins = fit_bins("quantile", *train)
    again = fit_bins("quantile", *[np.concatenate([t, v]) for t, v in zip(train, val)])
    assert bins.edges != again.edges  # validation angles would move the edges
    train_labels = bins.labels(*train)
    for head in (1, 2):
        counts = np.bincount(train_labels[:, head], minlength=N_BINS)
        assert counts.min() >= 800 / N_BINS - 2 and counts.max() <= 800 / N_BINS + 2
    assert bins.edges["azimuth"] == np.linspace(0, 360, 9).tolist()
    # Angles beyond the fitted range land in the outer bins, never outside [0, N_BINS).
    val_labels = bins.labels(*val)
    assert val_labels.min() >= 0 and val_labels.max() < N_BINS
    assert set(val_labels[:, 1]) == {N_BINS - 1}


def test_bins_json_round_trip_gives_identical_labels():
    rng = np.random.default_rng(3)
    angles3 = [rng.uniform(0, 360, 300), rng.uniform(-30, 60, 300), rng.uniform(-20, 20, 300)]
    for scheme in BIN_SCHEMES:
        bins = fit_bins(scheme, *angles3)
        restored = Bins.from_dict(json.loads(json.dumps(bins.to_dict())))
        assert restored.scheme == scheme
        np.testing.assert_array_equal(restored.labels(*angles3), bins.labels(*angles3))


def test_centres_and_bin_to_angle():
    bins = fit_bins("published", [1.0], [1.0], [1.0])
    np.testing.assert_allclose(bins.centres("azimuth"), np.arange(22.5, 360, 45))
    np.testing.assert_allclose(bins.centres("inplane"), np.arange(-157.5, 180, 45))
    # A bin maps back to an angle inside that bin.
    angles_deg = np.array([10.0, 100.0, 350.0])
    labels = bins.head_labels("azimuth", angles_deg)
    back = bins.to_angle("azimuth", labels)
    assert np.all(np.abs(back - angles_deg) <= 22.5)
    with pytest.raises(Pix3DError, match="bin labels"):
        bins.to_angle("azimuth", [8])


def test_circular_bin_distance():
    assert circular_bin_distance([7, 0, 3], [0, 7, 6]).tolist() == [1, 1, 3]


def test_unknown_scheme_lists_known_names():
    with pytest.raises(UsageError, match="unknown bin scheme 'uniform'; choose from published, quantile"):
        get_bin_scheme("uniform")
    with pytest.raises(UsageError):
        fit_bins("nope", [1.0], [1.0], [1.0])


def test_bad_bins_dict_raises():
    with pytest.raises(Pix3DError, match="malformed"):
        Bins.from_dict({"scheme": "seed"})
    with pytest.raises(Pix3DError, match="needs 9 edges"):
        Bins(scheme="x", edges={"azimuth": [0, 1], "elevation": [0, 1], "inplane": [0, 1]})
