"""Pose angles from Pix3D annotations, and the bin schemes that turn them into labels.

Convention (Pose-from-Shape's Pix3D annotations, used by the published table), with
(x, y, z) the camera centre in the model frame:
    azimuth   = atan2(x, -z) mod 360        in [0, 360)
    elevation = atan(y / sqrt(x^2 + z^2))   in [-90, 90]
    in-plane  = inplane_rotation in degrees
The camera centre is `cam_position` when present, else -rot_mat^T @ trans_mat.

Bin schemes (a registry; the scheme is a config key and is saved with every run):
  published the published rule, kept exactly ("seed" is its old name, still accepted): np.digitize(v, edges, right=True) - 1 with
            -1 -> 0; edges = 9 points over [0, 360] for azimuth AND elevation (so nearly all
            elevations land in bin 0) and over [-pi, pi] applied to the in-plane angle in
            radians.
  quantile  azimuth uniform over the circle; elevation and in-plane with equal-frequency
            edges fitted on the training split only, so every head is informative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pix3d.constants import HEADS, N_BINS
from pix3d.data.annotations import CAM_POSITION_TOL, Annotation
from pix3d.errors import Pix3DError, UsageError, current_name


def camera_position(ann: Annotation) -> np.ndarray:
    """Camera centre in the model frame; checks cam_position against -R^T t when both exist."""
    from_pose = -ann.rot_mat.T @ ann.trans_mat
    if ann.cam_position is None:
        return from_pose
    gap = float(np.linalg.norm(ann.cam_position - from_pose))
    if gap > CAM_POSITION_TOL * max(1.0, float(np.linalg.norm(from_pose))):
        raise Pix3DError(
            f"{ann.where()}: cam_position {np.round(ann.cam_position, 5).tolist()} disagrees "
            f"with -rot_mat^T trans_mat {np.round(from_pose, 5).tolist()}"
        )
    return np.asarray(ann.cam_position, dtype=np.float64)


def angles_from_cam_position(xyz) -> tuple[float, float]:
    """(azimuth, elevation) in degrees of a camera centre (x, y, z) in the model frame."""
    x, y, z = (float(v) for v in xyz)
    azimuth = math.degrees(math.atan2(x, -z)) % 360.0
    if azimuth >= 360.0:  # -1e-17 % 360 rounds to 360.0; the circle closes at 0
        azimuth = 0.0
    elevation = math.degrees(math.atan2(y, math.hypot(x, z)))
    return azimuth, elevation


def angles(ann: Annotation) -> tuple[float, float, float]:
    """(azimuth, elevation, in-plane) in degrees for one annotation."""
    azimuth, elevation = angles_from_cam_position(camera_position(ann))
    return azimuth, elevation, math.degrees(ann.inplane_rotation)


def rotation_from_angles(azimuth, elevation, inplane) -> np.ndarray:
    """The model -> camera rotation (..., 3, 3) that angles in degrees stand for: the inverse of `angles`.

    R = Rz(inplane) Rx(-elevation) Ry(azimuth), in real Pix3D's camera frame (x left, y up,
    z forward): the camera at `view_direction(azimuth, elevation)` (pix3d.render.camera)
    looking at the model's origin with the model's y axis up in the image, then rolled about
    its optical axis by the in-plane angle. For |elevation| < 90 this is exactly the
    synthetic writer's `rot_mat` (`camera_pose`: look_at, then the roll), so the annotated
    angles of an entry give back `angles` of it; azimuth 0, elevation 0, in-plane 0 is the
    identity (a frontal view). Past the poles (elevation beyond +-90, which only a bin
    centre of the published elevation bins can be) the product carries on smoothly where a
    look-at would flip.
    """
    a, e, r = (np.radians(np.asarray(v, dtype=np.float64)) for v in (azimuth, elevation, inplane))
    a, e, r = np.broadcast_arrays(a, e, r)
    ca, sa, ce, se, cr, sr = np.cos(a), np.sin(a), np.cos(e), np.sin(e), np.cos(r), np.sin(r)
    one, zero = np.ones_like(a), np.zeros_like(a)

    def matrix(rows):
        return np.stack([np.stack(row, -1) for row in rows], -2)

    yaw = matrix([[ca, zero, sa], [zero, one, zero], [-sa, zero, ca]])          # Ry(azimuth)
    pitch = matrix([[one, zero, zero], [zero, ce, se], [zero, -se, ce]])        # Rx(-elevation)
    roll = matrix([[cr, -sr, zero], [sr, cr, zero], [zero, zero, one]])         # Rz(in-plane)
    return roll @ pitch @ yaw


# ----------------------------------------------------------------------------- bins


@dataclass
class Bins:
    """Fitted bin edges per head (N_BINS + 1 each). JSON round trip via to_dict/from_dict.

    `units[head]` is "deg" or "rad": the unit the edges are in. Inputs to `labels` are always
    degrees; a "rad" head converts its input first (the seed scheme's in-plane rule).
    """

    scheme: str
    edges: dict[str, list[float]]
    units: dict[str, str] = field(default_factory=lambda: {h: "deg" for h in HEADS})

    def __post_init__(self):
        for head in HEADS:
            edges = self.edges.get(head)
            if edges is None or len(edges) != N_BINS + 1:
                raise Pix3DError(f"bins {self.scheme!r}: head {head} needs {N_BINS + 1} edges")
            if any(b < a for a, b in zip(edges, edges[1:])):
                raise Pix3DError(f"bins {self.scheme!r}: edges of {head} are not sorted")
            if self.units.get(head, "deg") not in ("deg", "rad"):
                raise Pix3DError(f"bins {self.scheme!r}: unit of {head} must be deg or rad")

    def _in_units(self, head: str, degrees) -> np.ndarray:
        values = np.asarray(degrees, dtype=np.float64)
        return np.radians(values) if self.units.get(head, "deg") == "rad" else values

    def head_labels(self, head: str, degrees) -> np.ndarray:
        """Bin of each angle (degrees) for one head, int64 in [0, N_BINS)."""
        values = self._in_units(head, degrees)
        # The published rule; values below the first edge give -1 -> bin 0. Values past the
        # last edge (only possible for fitted edges, or in-plane beyond pi) go to the last bin.
        labels = np.digitize(values, np.asarray(self.edges[head]), right=True) - 1
        return np.clip(labels, 0, N_BINS - 1).astype(np.int64)

    def labels(self, azimuth, elevation, inplane) -> np.ndarray:
        """int64 N x 3 labels (columns azimuth, elevation, inplane) for angles in degrees."""
        columns = [self.head_labels(h, v) for h, v in zip(HEADS, (azimuth, elevation, inplane))]
        return np.stack(columns, axis=1)

    def centres(self, head: str) -> np.ndarray:
        """Centre of each bin in degrees (N_BINS,): the angle a predicted bin stands for."""
        if head not in self.edges:
            raise UsageError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")
        edges = np.asarray(self.edges[head], dtype=np.float64)
        mids = (edges[:-1] + edges[1:]) / 2
        return np.degrees(mids) if self.units.get(head, "deg") == "rad" else mids

    def to_angle(self, head: str, labels) -> np.ndarray:
        """Bins -> angles (degrees, the bin centres), for reporting errors in degrees."""
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= N_BINS):
            raise Pix3DError(f"bin labels must lie in [0, {N_BINS}), got {labels.min()}..{labels.max()}")
        return self.centres(head)[labels]

    def to_dict(self) -> dict:
        return {
            "scheme": self.scheme,
            "edges": {h: [float(e) for e in self.edges[h]] for h in HEADS},
            "units": {h: self.units.get(h, "deg") for h in HEADS},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Bins":
        try:
            return cls(
                scheme=str(current_name("bin scheme", d["scheme"])),
                edges={h: [float(e) for e in d["edges"][h]] for h in HEADS},
                units={h: str(d.get("units", {}).get(h, "deg")) for h in HEADS},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise Pix3DError(f"bins dict is malformed ({exc!r}): {d!r}") from None


def circular_bin_distance(a, b, n_bins: int = N_BINS) -> np.ndarray:
    """Distance in bins on a circle (azimuth): 7 and 0 are neighbours."""
    diff = np.abs(np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64)) % n_bins
    return np.minimum(diff, n_bins - diff)


def _fit_published(azimuth, elevation, inplane) -> Bins:
    uniform = np.linspace(0.0, 360.0, N_BINS + 1).tolist()
    return Bins(
        scheme="published",
        edges={
            "azimuth": uniform,
            "elevation": uniform,
            "inplane": np.linspace(-np.pi, np.pi, N_BINS + 1).tolist(),
        },
        units={"azimuth": "deg", "elevation": "deg", "inplane": "rad"},
    )


def _quantile_edges(values, head: str) -> list[float]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < N_BINS:
        raise Pix3DError(
            f"quantile bins need at least {N_BINS} training angles for {head}, got {values.size}"
        )
    return np.quantile(values, np.linspace(0.0, 1.0, N_BINS + 1)).tolist()


def _fit_quantile(azimuth, elevation, inplane) -> Bins:
    return Bins(
        scheme="quantile",
        edges={
            # Azimuth is the headline metric and is compared with the published table: keep
            # it uniform over the circle so a bin means the same 45 degrees everywhere.
            "azimuth": np.linspace(0.0, 360.0, N_BINS + 1).tolist(),
            "elevation": _quantile_edges(elevation, "elevation"),
            "inplane": _quantile_edges(inplane, "inplane"),
        },
    )


BIN_SCHEMES: dict[str, Callable[..., Bins]] = {
    "published": _fit_published,
    "quantile": _fit_quantile,
}


def get_bin_scheme(name: str) -> Callable[..., Bins]:
    """The fit function of a bin scheme; unknown names raise listing the known ones."""
    try:
        return BIN_SCHEMES[current_name("bin scheme", name)]
    except (KeyError, TypeError):
        raise UsageError(f"unknown bin scheme {name!r}; choose from {', '.join(BIN_SCHEMES)}") from None


def fit_bins(scheme: str, azimuth, elevation, inplane) -> Bins:
    """Fit a scheme's edges on angles (degrees) of the TRAINING split only."""
    return get_bin_scheme(scheme)(azimuth, elevation, inplane)
