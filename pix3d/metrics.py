"""The validation metrics, one spec each: name, unit, direction, how it is computed from the
predictions, its majority-class baseline (pure numpy).

`METRICS` is the one registry: `pix3d.train.evaluation.evaluate` computes every spec that has
a `compute` from a `Predictions`, `pix3d.train.state` logs each spec's `baseline` (the same
computation on the majority-class predictions), and `analysis` reads units, directions and
baselines from the same specs (`analysis.table --metric` lists them). Adding a metric is one
`MetricSpec` in `METRICS`; names are MLflow keys, so existing ones never change.

Pose on Pix3D is reported as the median angular error and the accuracy within pi/6
(Acc@pi/6: the share of errors below 30 degrees). A classifier predicts a bin, so its angle
is the predicted bin's centre. Two families (docs/metrics.md):
  * the field's: `val_rotation_*`, the geodesic angle between the predicted and the annotated
    rotation, d(R1, R2) = ||log(R1^T R2)||_F / sqrt(2), over all three angles;
  * azimuth-only: `val_azimuth_*`, the circular error of the azimuth (359 and 1 degree are
    2 apart, which matters on real Pix3D, whose frontal views straddle the 0/360 bin edge).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from pix3d.constants import HEADS, N_BINS
from pix3d.data.pose import circular_bin_distance, rotation_from_angles

ACC_PI6_DEG = 30.0  # pi/6


# ----------------------------------------------------------------------------- angles


def circular_error_deg(predicted_deg, true_deg) -> np.ndarray:
    """|predicted - true| on the circle, degrees in [0, 180]."""
    diff = np.abs(np.asarray(predicted_deg, dtype=np.float64) - np.asarray(true_deg, dtype=np.float64)) % 360.0
    return np.minimum(diff, 360.0 - diff)


def geodesic_deg(R1, R2) -> np.ndarray:
    """d(R1, R2) = ||log(R1^T R2)||_F / sqrt(2) in degrees, [0, 180], over leading dimensions.

    The angle of R1^T R2 from atan2(|vee(M - M^T)| / 2, (tr M - 1) / 2): exact at every angle,
    where arccos of the trace alone loses half the digits near 0 and 180 degrees.
    """
    M = np.swapaxes(np.asarray(R1, dtype=np.float64), -1, -2) @ np.asarray(R2, dtype=np.float64)
    cos = (np.trace(M, axis1=-2, axis2=-1) - 1.0) / 2.0
    vee = np.stack([M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]], -1)
    return np.degrees(np.arctan2(np.linalg.norm(vee, axis=-1) / 2.0, cos))


def rotation_error_deg(predicted_angles, true_angles) -> np.ndarray:
    """Geodesic error (degrees) between the rotations two N x 3 angle arrays (azimuth,
    elevation, in-plane; degrees) stand for, both built by `pix3d.data.pose.rotation_from_angles`.

    The annotated side is the rotation built from the annotated angles, not the entry's
    `rot_mat`: the classifier predicts those three angles, so a prediction at exactly them
    scores 0, and the error measures the angles alone. `rot_mat` also holds where the object
    sits off the optical axis, which no angle triple describes: on real Pix3D's bed/0001
    (tests/pix3d_fixtures.REAL_ENTRY) rot_mat and the rotation of its angles are 6.3 degrees
    apart, 4.5 of them the camera looking atan(t_y / t_z) above the model's origin, a floor
    no classifier could go below. Pose-from-Shape, whose angle annotations the published
    table used, also builds both rotations from the angles.
    """
    p = np.asarray(predicted_angles, dtype=np.float64).reshape(-1, 3)
    t = np.asarray(true_angles, dtype=np.float64).reshape(-1, 3)
    return geodesic_deg(rotation_from_angles(*p.T), rotation_from_angles(*t.T))


def median_error_deg(errors) -> float:
    """Median of angular errors (degrees); NaN for none."""
    errors = np.asarray(errors, dtype=np.float64)
    return float(np.median(errors)) if errors.size else float("nan")


def accuracy_within(errors, threshold_deg: float = ACC_PI6_DEG) -> float:
    """Share of errors strictly below `threshold_deg` (Acc@pi/6 by default); NaN for none."""
    errors = np.asarray(errors, dtype=np.float64)
    return float((errors < threshold_deg).mean()) if errors.size else float("nan")


# ----------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class Predictions:
    """What the validation metrics are computed from, one row per validation image.

    `angles` are the annotated angles (degrees, columns in HEADS order); `centres` each head's
    bin centres in degrees (3 x N_BINS, `Bins.centres`: a head whose edges are in radians,
    the published in-plane one, is converted there); `losses` the per-image validation loss.
    A metric that needs a field left None is not computed.
    """

    predicted: np.ndarray                 # int N x 3 predicted bins
    truth: np.ndarray                     # int N x 3 annotated bins
    angles: np.ndarray | None = None      # float N x 3, degrees
    centres: np.ndarray | None = None     # float 3 x N_BINS, degrees
    losses: np.ndarray | None = None      # float N

    def subset(self, mask: np.ndarray) -> "Predictions":
        """The rows where `mask` is true (centres are shared)."""
        def pick(a):
            return None if a is None else a[mask]
        return replace(self, predicted=self.predicted[mask], truth=self.truth[mask],
                       angles=pick(self.angles), losses=pick(self.losses))

    def predicted_angles(self) -> np.ndarray:
        """N x 3 degrees: the centre of each predicted bin, per head."""
        return np.stack([self.centres[h][self.predicted[:, h]] for h in range(len(HEADS))], axis=1)

    def has(self, fields: Sequence[str]) -> bool:
        return all(getattr(self, f) is not None for f in fields)


def majority_predictions(train_labels: np.ndarray, val: Predictions) -> Predictions:
    """`val` with every image predicted as each head's most frequent training bin (no losses)."""
    majority = [int(np.bincount(train_labels[:, h], minlength=N_BINS).argmax()) for h in range(len(HEADS))]
    predicted = np.broadcast_to(np.asarray(majority, dtype=np.int64), val.truth.shape)
    return replace(val, predicted=predicted, losses=None)


def _head_accuracy(head: str) -> Callable[[Predictions], float]:
    h = HEADS.index(head)
    return lambda p: float((p.predicted[:, h] == p.truth[:, h]).mean())


def _azimuth_errors(p: Predictions) -> np.ndarray:
    return circular_error_deg(p.centres[0][p.predicted[:, 0]], p.angles[:, 0])


def _rotation_errors(p: Predictions) -> np.ndarray:
    return rotation_error_deg(p.predicted_angles(), p.angles)


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class MetricSpec:
    """One logged metric: how it reads (unit, direction), how it is computed, its baseline.

    compute: from a `Predictions` (None: the training loop logs it itself: the training loss,
    the running best); needs: the `Predictions` fields it reads beyond the bins; baseline:
    the MLflow key of the same computation on the majority-class predictions; per_category:
    also logged as `<name>.<category>` at a trial's end.
    """

    name: str
    unit: str = "%"                 # "%": a fraction shown x100; "deg"; "": as logged
    lower_is_better: bool = False
    compute: Callable[[Predictions], float] | None = None
    needs: tuple[str, ...] = ()
    baseline: str | None = None
    per_category: bool = False
    about: str = ""

    @property
    def scale(self) -> float:
        return 100.0 if self.unit == "%" else 1.0

    def describe(self) -> str:
        unit = {"%": "%", "deg": "degrees"}.get(self.unit, "as logged")
        return unit + (", lower is better" if self.lower_is_better else "")


METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("val_azimuth_acc", compute=_head_accuracy("azimuth"), baseline="majority_azimuth_acc",
               per_category=True, about="azimuth bin accuracy (the published table's metric)"),
    MetricSpec("val_azimuth_mederr", unit="deg", lower_is_better=True,
               compute=lambda p: median_error_deg(_azimuth_errors(p)), needs=("angles", "centres"),
               baseline="majority_azimuth_mederr", per_category=True,
               about="azimuth-only: median circular error of the predicted bin's centre"),
    MetricSpec("val_azimuth_acc_pi6", compute=lambda p: accuracy_within(_azimuth_errors(p)),
               needs=("angles", "centres"), baseline="majority_azimuth_acc_pi6", per_category=True,
               about="azimuth-only: share of circular errors below 30 degrees"),
    MetricSpec("val_rotation_mederr", unit="deg", lower_is_better=True,
               compute=lambda p: median_error_deg(_rotation_errors(p)), needs=("angles", "centres"),
               baseline="majority_rotation_mederr", per_category=True,
               about="the field's: median geodesic error of the rotation from the three bin centres"),
    MetricSpec("val_rotation_acc_pi6", compute=lambda p: accuracy_within(_rotation_errors(p)),
               needs=("angles", "centres"), baseline="majority_rotation_acc_pi6", per_category=True,
               about="the field's: share of geodesic rotation errors below pi/6"),
    MetricSpec("val_azimuth_acc_within1",
               compute=lambda p: float((circular_bin_distance(p.predicted[:, 0], p.truth[:, 0]) <= 1).mean()),
               about="azimuth bin within one bin, circularly"),
    MetricSpec("best_val_azimuth_acc", baseline="majority_azimuth_acc",
               about="the best val_azimuth_acc so far (logged by the loop)"),
    MetricSpec("val_elevation_acc", compute=_head_accuracy("elevation"), baseline="majority_elevation_acc",
               about="elevation bin accuracy"),
    MetricSpec("val_inplane_acc", compute=_head_accuracy("inplane"), baseline="majority_inplane_acc",
               about="in-plane bin accuracy"),
    MetricSpec("val_loss", unit="", lower_is_better=True, compute=lambda p: float(np.mean(p.losses)),
               needs=("losses",), about="the validation loss (sum of the three cross-entropies)"),
    MetricSpec("train_loss", unit="", lower_is_better=True, about="the training loss (logged by the loop)"),
)}

BASELINE_METRIC = METRICS["val_azimuth_acc"].baseline


def metric_spec(metric: str) -> MetricSpec:
    """The spec of a known metric; another name (Python API only) reads as a fraction in %."""
    if metric in METRICS:
        return METRICS[metric]
    return MetricSpec(metric, lower_is_better="loss" in metric or "err" in metric)


def _computable(predictions: Predictions):
    return [m for m in METRICS.values() if m.compute is not None and predictions.has(m.needs)]


def validation_metrics(predictions: Predictions) -> dict[str, float]:
    """Every registered metric that `predictions` holds what it needs for."""
    return {m.name: m.compute(predictions) for m in _computable(predictions)}


def baseline_metrics(train_labels: np.ndarray, val: Predictions) -> dict[str, float]:
    """Each metric's baseline: its value on `val` when every head predicts its most frequent
    training bin (the majority class: what 'learned nothing' scores)."""
    majority = majority_predictions(train_labels, val)
    return {m.baseline: m.compute(majority) for m in _computable(majority) if m.baseline}


def metric_key_part(category: str) -> str:
    """A category as a metric-name part MLflow and Tune accept (letters, digits, _ and -)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(category)) or "_"


def per_category_metrics(predictions: Predictions, categories: Sequence[str]) -> dict[str, float]:
    """`<name>.<category>` of every per-category metric `predictions` can give."""
    categories = np.asarray([str(c) for c in categories])
    specs = [m for m in _computable(predictions) if m.per_category]
    out: dict[str, float] = {}
    for category in sorted(set(categories.tolist())):
        part = metric_key_part(category)
        subset = predictions.subset(categories == category)
        for m in specs:
            out[f"{m.name}.{part}"] = m.compute(subset)
    return out


def azimuth_angle_metrics(predicted_bins, true_deg, centres_deg) -> dict[str, float]:
    """MedErr (degrees) and Acc@pi/6 of predicted azimuth bins against the true azimuths."""
    errors = circular_error_deg(np.asarray(centres_deg, dtype=np.float64)[np.asarray(predicted_bins, dtype=np.int64)],
                                true_deg)
    return {"val_azimuth_mederr": median_error_deg(errors), "val_azimuth_acc_pi6": accuracy_within(errors)}

