"""The pose metrics: azimuth-only MedErr and Acc@pi/6 (circular at 0/360), the field's geodesic
rotation error from the three predicted bins, per category, and the one registry of specs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pix3d.metrics import (
    METRICS,
    Predictions,
    accuracy_within,
    azimuth_angle_metrics,
    baseline_metrics,
    circular_error_deg,
    geodesic_deg,
    median_error_deg,
    per_category_metrics,
    rotation_error_deg,
    validation_metrics,
)
from pix3d.data.pose import angles_from_cam_position, fit_bins, rotation_from_angles
from pix3d.render.camera import Camera, camera_pose
from pix3d.train.evaluation import bin_centres
from pix3d.train import fit
from tests.test_train import pose_pattern_data, small_config

# The azimuth bins both schemes use: 8 x 45 degrees, centres 22.5, 67.5, ..., 337.5.
CENTRES = fit_bins("published", [0.0], [0.0], [0.0]).centres("azimuth")


def test_bin_centres_are_the_uniform_azimuth_bins():
    assert CENTRES.tolist() == [22.5 + 45 * k for k in range(8)]


def test_circular_error_wraps_at_360():
    assert circular_error_deg([359.0, 1.0, 10.0, 180.0], [1.0, 359.0, 350.0, 0.0]).tolist() == [2.0, 2.0, 20.0, 180.0]


def test_mederr_and_acc_pi6_on_hand_made_predictions_across_the_0_360_edge():
    true_deg = np.array([359.0, 1.0, 10.0, 100.0, 200.0])
    predicted_bins = np.array([0, 7, 0, 3, 4])
    # Errors from the predicted bin's centre, on the circle:
    #   359 vs 22.5 -> 23.5 (not 336.5); 1 vs 337.5 -> 23.5; 10 vs 22.5 -> 12.5;
    #   100 vs 157.5 -> 57.5; 200 vs 202.5 -> 2.5.
    metrics = azimuth_angle_metrics(predicted_bins, true_deg, CENTRES)
    assert metrics["val_azimuth_mederr"] == pytest.approx(23.5)
    assert metrics["val_azimuth_acc_pi6"] == pytest.approx(4 / 5)
    # The near misses across the edge are wrong bins: 8-bin accuracy says 2/5, Acc@pi/6 4/5.
    true_bins = fit_bins("published", [0.0], [0.0], [0.0]).head_labels("azimuth", true_deg)
    assert true_bins.tolist() == [7, 0, 0, 2, 4]
    assert float((predicted_bins == true_bins).mean()) == pytest.approx(2 / 5)


def test_acc_pi6_is_strictly_below_30_degrees_and_empty_is_nan():
    assert accuracy_within([29.999, 30.0, 30.001]) == pytest.approx(1 / 3)
    assert median_error_deg([1.0, 3.0, 100.0, 2.0]) == pytest.approx(2.5)
    assert math.isnan(median_error_deg([])) and math.isnan(accuracy_within([]))


def azimuth_only(predicted_bins, true_bins, true_deg) -> Predictions:
    """Predictions whose elevation and in-plane are right and at their bins' centres."""
    n = len(true_deg)
    centres = bin_centres(fit_bins("published", [0.0], [0.0], [0.0]))
    predicted = np.column_stack([predicted_bins, np.zeros(n, int), np.full(n, 4)])
    truth = np.column_stack([true_bins, np.zeros(n, int), np.full(n, 4)])
    true_angles = np.column_stack([true_deg, np.full(n, centres[1][0]), np.full(n, centres[2][4])])
    return Predictions(predicted, truth, true_angles, centres)


def test_per_category_metrics_split_by_category():
    true_deg = np.array([10.0, 100.0, 350.0, 190.0])
    true_bins = np.array([0, 2, 7, 4])
    predicted = np.array([0, 3, 0, 4])
    out = per_category_metrics(azimuth_only(predicted, true_bins, true_deg), ["chair", "chair", "desk", "desk"])
    assert out["val_azimuth_acc.chair"] == pytest.approx(0.5)
    assert out["val_azimuth_acc.desk"] == pytest.approx(0.5)
    # chair errors 12.5 and 57.5; desk errors 32.5 (350 vs 22.5) and 12.5.
    assert out["val_azimuth_mederr.chair"] == pytest.approx(35.0)
    assert out["val_azimuth_acc_pi6.chair"] == pytest.approx(0.5)
    assert out["val_azimuth_mederr.desk"] == pytest.approx(22.5)
    assert out["val_azimuth_acc_pi6.desk"] == pytest.approx(0.5)
    # Elevation and in-plane are exact, so the rotation error is the azimuth's (a turn about y).
    assert out["val_rotation_mederr.chair"] == pytest.approx(35.0)
    assert out["val_rotation_mederr.desk"] == pytest.approx(22.5)
    assert out["val_rotation_acc_pi6.desk"] == pytest.approx(0.5)


def test_fit_reports_mederr_and_acc_pi6_each_epoch_and_categories_at_the_end():
    data = pose_pattern_data(n=32)
    history = fit(small_config(epochs=2), data)["history"]
    for m in history:
        assert 0 <= m["val_azimuth_mederr"] <= 180
        assert 0 <= m["val_azimuth_acc_pi6"] <= 1
        # A right bin is within 22.5 degrees of the truth: Acc@pi/6 >= 8-bin accuracy.
        assert m["val_azimuth_acc_pi6"] >= m["val_azimuth_acc"]
        assert 0 <= m["majority_azimuth_mederr"] <= 180
        assert 0 <= m["val_rotation_mederr"] <= 180 and 0 <= m["val_rotation_acc_pi6"] <= 1
        assert 0 <= m["majority_rotation_mederr"] <= 180 and 0 <= m["majority_rotation_acc_pi6"] <= 1
    assert not any(k.startswith("val_azimuth_acc.") for k in history[0])
    last = history[-1]
    assert {"val_azimuth_acc.chair", "val_azimuth_acc.table", "val_azimuth_mederr.chair",
            "val_azimuth_acc_pi6.table", "val_rotation_mederr.chair", "val_rotation_acc_pi6.table"} <= set(last)
    # Both categories have the same number of validation images (seed split), so the
    # overall accuracy is the mean of the per-category ones.
    assert last["val_azimuth_acc"] == pytest.approx(
        (last["val_azimuth_acc.chair"] + last["val_azimuth_acc.table"]) / 2)


# ----------------------------------------------------------------------------- rotations


def test_geodesic_of_identity_and_of_a_known_axis_angle():
    eye = np.eye(3)
    assert geodesic_deg(eye, eye) == pytest.approx(0.0, abs=1e-12)
    # 40 degrees about the unit axis (1, 2, 2) / 3, by Rodrigues' formula written out here.
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    theta = np.radians(40.0)
    R = eye + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K
    assert geodesic_deg(eye, R) == pytest.approx(40.0, abs=1e-9)
    assert geodesic_deg(R, eye) == pytest.approx(40.0, abs=1e-9)  # symmetric
    # Invariant under a common rotation of both sides: d(Q R1, Q R2) = d(R1, R2).
    Q = rotation_from_angles(77.0, 12.0, -31.0)
    assert geodesic_deg(Q @ R, Q @ rotation_from_angles(10.0, 0.0, 0.0)) == pytest.approx(
        geodesic_deg(R, rotation_from_angles(10.0, 0.0, 0.0)), abs=1e-9)
    # Near 180 degrees the atan2 form keeps its digits: a half turn about x.
    half = np.diag([1.0, -1.0, -1.0])
    assert geodesic_deg(eye, half) == pytest.approx(180.0, abs=1e-9)


def test_rotation_from_angles_conventions():
    assert np.allclose(rotation_from_angles(0.0, 0.0, 0.0), np.eye(3), atol=1e-15)
    # Azimuth alone turns the model about its y (up) axis; in-plane alone rolls about the
    # optical axis z; each by the angle itself.
    assert rotation_error_deg([[30.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]) == pytest.approx([30.0])
    assert rotation_error_deg([[0.0, 0.0, -25.0]], [[0.0, 0.0, 0.0]]) == pytest.approx([25.0])
    assert rotation_error_deg([[0.0, 20.0, 0.0]], [[0.0, -15.0, 0.0]]) == pytest.approx([35.0])
    R = rotation_from_angles(90.0, 0.0, 0.0)
    assert np.allclose(R[:, 1], [0, 1, 0]) and np.allclose(R @ [1.0, 0.0, 0.0], [0, 0, -1], atol=1e-15)


def test_rotation_error_wraps_at_0_360():
    # 359 and 1 degrees of azimuth are 2 degrees apart, 0 and 360 are the same rotation.
    assert rotation_error_deg([[359.0, 10.0, 5.0]], [[1.0, 10.0, 5.0]])[0] == pytest.approx(
        geodesic_deg(rotation_from_angles(1.0, 10.0, 5.0), rotation_from_angles(359.0, 10.0, 5.0)))
    assert rotation_error_deg([[359.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]])[0] == pytest.approx(2.0)
    assert rotation_error_deg([[360.0, 30.0, -20.0]], [[0.0, 30.0, -20.0]])[0] == pytest.approx(0.0, abs=1e-6)
    assert rotation_error_deg([[0.0, 0.0, 179.0]], [[0.0, 0.0, -179.0]])[0] == pytest.approx(2.0)


def test_annotated_angles_round_trip_to_the_rotation():
    """A prediction at exactly the annotated angles scores 0. The rotation built from angles is
    the synthetic writer's rot_mat (`camera_pose`: look-at plus roll), and the angles read back
    from its camera centre (`angles_from_cam_position`, what the labels are) are the ones it was
    built from, azimuth across the 0/360 edge included."""
    rng = np.random.default_rng(5)
    cams = [Camera(float(a), float(e), float(i), 2.5, 35.0) for a, e, i in
            zip(np.r_[rng.uniform(0, 360, 30), 0.0, 359.999, 180.0],
                np.r_[rng.uniform(-80, 80, 30), 0.0, -5.0, 60.0],
                np.r_[rng.uniform(-180, 180, 30), 0.0, 30.0, -179.0])]
    for cam in cams:
        R, t = camera_pose(cam)
        built = rotation_from_angles(cam.azimuth, cam.elevation, cam.inplane)
        assert np.allclose(built, R, atol=1e-12), cam
        azimuth, elevation = angles_from_cam_position(-R.T @ t)
        assert rotation_error_deg([[azimuth, elevation, cam.inplane]],
                                  [[cam.azimuth, cam.elevation, cam.inplane]])[0] == pytest.approx(0.0, abs=1e-5)


def test_rotation_metrics_use_the_bin_centres_in_the_schemes_own_units():
    """Published bins: in-plane edges over [-pi, pi] in radians, elevation over [0, 360] degrees.
    Truths exactly at the predicted bins' centres give 0; the centres are degrees."""
    bins = fit_bins("published", [0.0], [0.0], [0.0])
    centres = bin_centres(bins)
    assert centres[2].tolist() == pytest.approx([-157.5 + 45 * k for k in range(8)])  # not radians
    assert centres[1][0] == pytest.approx(22.5)  # where nearly every elevation lands
    true_angles = np.array([[centres[0][k], centres[1][0], centres[2][(k + 3) % 8]] for k in range(8)])
    truth = bins.labels(*true_angles.T)
    assert truth[:, 2].tolist() == [(k + 3) % 8 for k in range(8)]
    exact = validation_metrics(Predictions(truth, truth, true_angles, centres))
    assert exact["val_rotation_mederr"] == pytest.approx(0.0, abs=1e-6)
    assert exact["val_rotation_acc_pi6"] == 1.0
    # One in-plane bin off is 45 degrees about the optical axis, whatever the azimuth.
    off = truth.copy()
    off[:, 2] = (off[:, 2] + 1) % 8
    one_off = validation_metrics(Predictions(off, truth, true_angles, centres))
    assert one_off["val_rotation_mederr"] == pytest.approx(45.0)
    assert one_off["val_rotation_acc_pi6"] == 0.0
    assert one_off["val_azimuth_mederr"] == pytest.approx(0.0)  # azimuth-only cannot see it


def test_one_registry_drives_metrics_and_baselines():
    bins = fit_bins("published", [0.0], [0.0], [0.0])
    centres = bin_centres(bins)
    rng = np.random.default_rng(0)
    true_angles = np.column_stack([rng.uniform(0, 360, 40), rng.uniform(0, 40, 40), rng.uniform(-20, 20, 40)])
    truth = bins.labels(*true_angles.T)
    predicted = rng.integers(0, 8, truth.shape)
    predictions = Predictions(predicted, truth, true_angles, centres, losses=rng.uniform(0, 3, 40))
    computed = validation_metrics(predictions)
    assert set(computed) == {m.name for m in METRICS.values() if m.compute is not None}
    train = np.array([[3, 0, 4]] * 5 + [[1, 0, 3]] * 2)
    baselines = baseline_metrics(train, predictions)
    assert set(baselines) == {m.baseline for m in METRICS.values() if m.compute and m.baseline and "losses" not in m.needs}
    # The baseline is the metric itself on the majority predictions (3, 0, 4) for every image.
    majority = Predictions(np.tile([3, 0, 4], (40, 1)), truth, true_angles, centres)
    for spec in METRICS.values():
        if spec.baseline and spec.compute:
            assert baselines[spec.baseline] == pytest.approx(spec.compute(majority)), spec.name
    assert baselines["majority_azimuth_acc"] == pytest.approx(float((truth[:, 0] == 3).mean()))
