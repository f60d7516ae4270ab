"""The two losses: photometric (no pose labels, through the differentiable warp) and pose
(chordal rotation distance plus translation error); `pose_errors` in degrees and metres."""

from __future__ import annotations

import torch

from pix3d import geometry
from relpose.pairs import rotation_angle_deg


def photometric_l1(b: dict, motion: torch.Tensor) -> torch.Tensor:
    """Per-pair mean |target - warp(source)| over object pixels that land inside the source (B,)."""
    warped, valid = geometry.inverse_warp(b["source"], b["depth"], motion, b["K"])
    use = (valid & b["mask"]).unsqueeze(1).to(warped.dtype)
    total = ((warped - b["target"]).abs() * use).sum(dim=(1, 2, 3))
    return total / (use.sum(dim=(1, 2, 3)) * 3).clamp_min(1.0)


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

