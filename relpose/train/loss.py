"""The two losses: photometric (no pose labels, through the differentiable warp) and pose
(chordal rotation distance plus translation error); `pose_errors` in degrees and metres.

The photometric error is taken over ALL the target's object pixels. A pixel that the motion
sends outside the source image or behind its camera has nothing to be compared with; it
costs `OUTSIDE_PENALTY`, the largest L1 a pixel of [0, 1] images can have. Dropping such
pixels from the average instead (as this loss once did) made leaving the frame the best
"explanation": a 5 m translation scored 0.0.
"""

from __future__ import annotations

import torch

from pix3d import geometry
from relpose.pairs import rotation_angle_deg

# The worst in-image match costs 1.0 per pixel, so no motion can lower its error by pushing
# pixels out of view: leaving costs at least as much as any comparison it avoids.
OUTSIDE_PENALTY = 1.0


def photometric_terms(b: dict, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(photometric L1, fraction of object pixels that land outside / behind), per pair (B,).

    The L1 is the mean over the target's object pixels of |target - warp(source)| (mean over
    channels) where the pixel lands inside the source image in front of its camera, and
    `OUTSIDE_PENALTY` where it does not."""
    warped, valid = geometry.inverse_warp(b["source"], b["depth"], motion, b["K"])
    inside = (warped - b["target"]).abs().mean(dim=1)
    error = torch.where(valid, inside, torch.full_like(inside, OUTSIDE_PENALTY))
    on_object = b["mask"].to(error.dtype)
    count = on_object.sum(dim=(1, 2)).clamp_min(1.0)
    lost = ((~valid).to(error.dtype) * on_object).sum(dim=(1, 2))
    return (error * on_object).sum(dim=(1, 2)) / count, lost / count


def photometric_l1(b: dict, motion: torch.Tensor) -> torch.Tensor:
    """Per-pair photometric error over all object pixels, those out of view at `OUTSIDE_PENALTY` (B,)."""
    return photometric_terms(b, motion)[0]


def pose_errors(T_pred: torch.Tensor, T_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotation error in degrees, translation error in metres), per pair."""
    R_err = T_pred[:, :3, :3].transpose(1, 2) @ T_true[:, :3, :3]
    return rotation_angle_deg(R_err), (T_pred[:, :3, 3] - T_true[:, :3, 3]).norm(dim=1)


def loss_fn(kind: str, b: dict, twist: torch.Tensor) -> torch.Tensor:
    if kind == "photometric":
        return photometric_l1(b, twist).mean()
    T = geometry.se3_exp(twist)
    rotation = (T[:, :3, :3] - b["T"][:, :3, :3]).flatten(1).norm(dim=1)
    translation = (T[:, :3, 3] - b["T"][:, :3, 3]).norm(dim=1)
    return (rotation + translation).mean()
