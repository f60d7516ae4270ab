"""Cameras of the synthetic views: how they are sampled and the (R, t) labels they give.

Owns the sampling ranges, `Camera` (one view in the angles the labels must recover),
`sample_camera`, `camera_pose` and `view_direction`. The camera frame (real Pix3D's: x left,
y up, z forward) and the maths of a pose are `pix3d.geometry`'s: X_c = R X_m + t, camera
centre -R^T t. The camera sits at
distance d along `view_direction(a, e)` = (sin a cos e, sin e, -cos a cos e), looks at the
model centre with +y up and is rolled about its optical axis by the in-plane angle; so
azimuth a = atan2(x, -z) and elevation e = atan(y / hypot(x, z)) come back exactly from the
camera centre. Furniture fronts face -z, so azimuth 0 is a frontal view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pix3d.constants import SENSOR_WIDTH_MM

# Camera sampling ranges: elevations as in photos of furniture, a modest camera roll, and
# focal lengths of ordinary lenses (mm on Pix3D's 32 mm wide sensor).
AZIMUTH_DEG = (0.0, 360.0)
ELEVATION_DEG = (-5.0, 50.0)
INPLANE_DEG = (-30.0, 30.0)
FOCAL_MM = (28.0, 60.0)
# Fraction of the half field of view that the model's bounding sphere spans. The sphere is
# conservative, so objects stay mostly inside the frame; the top end truncates a few.
FILL = (0.62, 1.02)


@dataclass(frozen=True)
class Camera:
    """One sampled view; angles in degrees (what the labels must recover), focal in mm."""

    azimuth: float
    elevation: float
    inplane: float
    distance: float
    focal_mm: float


def view_direction(azimuth: float, elevation: float) -> tuple[float, float, float]:
    """Unit vector of the model frame at `azimuth`, `elevation` (radians); 0, 0 is -z."""
    return (math.sin(azimuth) * math.cos(elevation), math.sin(elevation),
            -math.cos(azimuth) * math.cos(elevation))


def camera_pose(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) of a camera on the view sphere, rolled about its optical axis by `inplane`."""
    # torch is imported here, not at module level: it takes seconds, and neither the CLI's
    # argument checks nor the (spawned) render workers need it; poses are made in the parent.
    import torch

    from pix3d import geometry

    a, e = math.radians(cam.azimuth), math.radians(cam.elevation)
    eye = torch.tensor(view_direction(a, e), dtype=torch.float64) * cam.distance
    R0, _ = geometry.look_at(eye, torch.zeros(3, dtype=torch.float64))
    R = geometry.rotation_about_axis("z", torch.tensor(math.radians(cam.inplane),
                                                       dtype=torch.float64)) @ R0
    t = -(R @ eye)
    return R.numpy(), t.numpy()


def sample_camera(rng: np.random.Generator, radius: float) -> Camera:
    """Random view: full-circle azimuth, photo-like elevation and roll, distance from focal."""
    focal = rng.uniform(*FOCAL_MM)
    half_fov = math.atan(SENSOR_WIDTH_MM / 2 / focal)
    fill = rng.uniform(*FILL)
    distance = radius / math.sin(fill * half_fov)
    return Camera(
        azimuth=float(rng.uniform(*AZIMUTH_DEG)),
        elevation=float(rng.uniform(*ELEVATION_DEG)),
        inplane=float(rng.uniform(*INPLANE_DEG)),
        distance=float(distance),
        focal_mm=float(focal),
    )
