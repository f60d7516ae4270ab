"""The field's pose metrics: MedErr and Acc@pi/6 from predicted bins, circular at 0/360."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pix3d.metrics import (
    accuracy_within,
    azimuth_angle_metrics,
    circular_error_deg,
    median_error_deg,
    per_category_metrics,
)
from pix3d.data.pose import fit_bins
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


def test_per_category_metrics_split_by_category():
    true_deg = np.array([10.0, 100.0, 350.0, 190.0])
    true_bins = np.array([0, 2, 7, 4])
    predicted = np.array([0, 3, 0, 4])
    out = per_category_metrics(predicted, true_bins, true_deg, CENTRES, ["chair", "chair", "desk", "desk"])
    assert out["val_azimuth_acc.chair"] == pytest.approx(0.5)
    assert out["val_azimuth_acc.desk"] == pytest.approx(0.5)
    # chair errors 12.5 and 57.5; desk errors 32.5 (350 vs 22.5) and 12.5.
    assert out["val_azimuth_mederr.chair"] == pytest.approx(35.0)
    assert out["val_azimuth_acc_pi6.chair"] == pytest.approx(0.5)
    assert out["val_azimuth_mederr.desk"] == pytest.approx(22.5)
    assert out["val_azimuth_acc_pi6.desk"] == pytest.approx(0.5)


def test_fit_reports_mederr_and_acc_pi6_each_epoch_and_categories_at_the_end():
    data = pose_pattern_data(n=32)
    history = fit(small_config(epochs=2), data)["history"]
    for m in history:
        assert 0 <= m["val_azimuth_mederr"] <= 180
        assert 0 <= m["val_azimuth_acc_pi6"] <= 1
        # A right bin is within 22.5 degrees of the truth: Acc@pi/6 >= 8-bin accuracy.
        assert m["val_azimuth_acc_pi6"] >= m["val_azimuth_acc"]
        assert 0 <= m["majority_azimuth_mederr"] <= 180
    assert not any(k.startswith("val_azimuth_acc.") for k in history[0])
    last = history[-1]
    assert {"val_azimuth_acc.chair", "val_azimuth_acc.table", "val_azimuth_mederr.chair",
            "val_azimuth_acc_pi6.table"} <= set(last)
    # Both categories have the same number of validation images (seed split), so the
    # overall accuracy is the mean of the per-category ones.
    assert last["val_azimuth_acc"] == pytest.approx(
        (last["val_azimuth_acc.chair"] + last["val_azimuth_acc.table"]) / 2)
