"""Held-out errors of a model's predicted motion, beside the identity motion (the "predict
nothing" baseline) and, for the photometric error, the true motion (its floor)."""

from __future__ import annotations

from typing import Callable

import torch

from pix3d import geometry
from relpose.models import RelPoseNet
from relpose.train.batches import PairTensors
from relpose.train.loss import photometric_l1, pose_errors


@torch.no_grad()
def _mean_errors(tensors: PairTensors, indices: torch.Tensor, motion: Callable[[dict], torch.Tensor],
                 batch_size: int = 64) -> tuple[float, float, float]:
    """Mean (rotation error deg, translation error m, photometric L1) of `motion(batch)` (B x 4 x 4)."""
    rot = trans = photo = 0.0
    for idx in indices.split(batch_size):
        b = tensors.batch(idx)
        T = motion(b)
        r, t = pose_errors(T, b["T"])
        rot, trans = rot + float(r.sum()), trans + float(t.sum())
        photo += float(photometric_l1(b, T).sum())
    n = len(indices)
    return rot / n, trans / n, photo / n


def _identity(b: dict) -> torch.Tensor:
    return torch.eye(4, device=b["T"].device).expand_as(b["T"]).contiguous()


def baselines(tensors: PairTensors, indices: torch.Tensor) -> dict:
    """What no motion gives (the "predict nothing" baseline), and the photometric error the
    true motion leaves (the floor set by noise and occlusion). Fixed for a split."""
    id_rot, id_trans, id_photo = _mean_errors(tensors, indices, _identity)
    *_, true_photo = _mean_errors(tensors, indices, lambda b: b["T"])
    return {"identity_rotation_err_deg": id_rot, "identity_translation_err_m": id_trans,
            "identity_photometric_l1": id_photo, "true_motion_photometric_l1": true_photo}


def evaluate(model: RelPoseNet, tensors: PairTensors, indices: torch.Tensor) -> dict:
    """Validation rotation, translation and photometric errors of the model's predicted motion."""
    model.eval()
    rot, trans, photo = _mean_errors(tensors, indices, lambda b: geometry.se3_exp(model(b["source"], b["target"])))
    return {"val_rotation_err_deg": rot, "val_translation_err_m": trans, "val_photometric_l1": photo}

