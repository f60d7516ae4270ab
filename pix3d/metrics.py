"""The field's pose metrics, computed from bin predictions (pure numpy).

Pose on Pix3D is reported as the median angular error and the accuracy within pi/6
(Acc@pi/6: the share of errors below 30 degrees). A classifier predicts a bin, so its angle
is the predicted bin's centre; the error is circular (359 and 1 degree are 2 apart), which
matters on real Pix3D, whose frontal views straddle the 0/360 bin edge: 8-bin accuracy
counts a near miss across that edge as wrong, the angular error does not.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

ACC_PI6_DEG = 30.0  # pi/6


def circular_error_deg(predicted_deg, true_deg) -> np.ndarray:
    """|predicted - true| on the circle, degrees in [0, 180]."""
    diff = np.abs(np.asarray(predicted_deg, dtype=np.float64) - np.asarray(true_deg, dtype=np.float64)) % 360.0
    return np.minimum(diff, 360.0 - diff)


def median_error_deg(errors) -> float:
    """Median of angular errors (degrees); NaN for none."""
    errors = np.asarray(errors, dtype=np.float64)
    return float(np.median(errors)) if errors.size else float("nan")


def accuracy_within(errors, threshold_deg: float = ACC_PI6_DEG) -> float:
    """Share of errors strictly below `threshold_deg` (Acc@pi/6 by default); NaN for none."""
    errors = np.asarray(errors, dtype=np.float64)
    return float((errors < threshold_deg).mean()) if errors.size else float("nan")


def azimuth_angle_metrics(predicted_bins, true_deg, centres_deg) -> dict[str, float]:
    """MedErr (degrees) and Acc@pi/6 of predicted azimuth bins against the true azimuths."""
    predicted_deg = np.asarray(centres_deg, dtype=np.float64)[np.asarray(predicted_bins, dtype=np.int64)]
    errors = circular_error_deg(predicted_deg, true_deg)
    return {"val_azimuth_mederr": median_error_deg(errors), "val_azimuth_acc_pi6": accuracy_within(errors)}


def metric_key_part(category: str) -> str:
    """A category as a metric-name part MLflow and Tune accept (letters, digits, _ and -)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(category)) or "_"


def per_category_metrics(predicted_bins, true_bins, true_deg, centres_deg,
                         categories: Sequence[str]) -> dict[str, float]:
    """`val_azimuth_acc.<category>`, `val_azimuth_mederr.<category>`, `val_azimuth_acc_pi6.<category>`."""
    predicted_bins = np.asarray(predicted_bins, dtype=np.int64)
    true_bins = np.asarray(true_bins, dtype=np.int64)
    true_deg = np.asarray(true_deg, dtype=np.float64)
    categories = np.asarray([str(c) for c in categories])
    out: dict[str, float] = {}
    for category in sorted(set(categories.tolist())):
        mask = categories == category
        part = metric_key_part(category)
        out[f"val_azimuth_acc.{part}"] = float((predicted_bins[mask] == true_bins[mask]).mean())
        for key, value in azimuth_angle_metrics(predicted_bins[mask], true_deg[mask], centres_deg).items():
            out[f"{key}.{part}"] = value
    return out
