"""Held-out errors of a model's predicted motion, beside the identity motion (the "predict
nothing" baseline) and, for the photometric error, the true motion (its floor)."""

from __future__ import annotations

from typing import Callable

import torch

from pix3d import geometry
from relpose.models import RelPoseNet
from relpose.train.batches import PairTensors
from relpose.train.loss import photometric_terms, pose_errors


@torch.no_grad()
def _mean_errors(tensors: PairTensors, indices: torch.Tensor, motion: Callable[[dict], torch.Tensor],
                 batch_size: int = 64) -> tuple[float, float, float, float]:
    """Mean (rotation error deg, translation error m, photometric L1, fraction of object pixels
    out of view) of `motion(batch)` (B x 4 x 4)."""
    rot = trans = photo = lost = 0.0
    for idx in indices.split(batch_size):
        b = tensors.batch(idx)
        T = motion(b)
        r, t = pose_errors(T, b["T"])
        l1, outside = photometric_terms(b, T)
        rot, trans = rot + float(r.sum()), trans + float(t.sum())
        photo, lost = photo + float(l1.sum()), lost + float(outside.sum())
    n = max(1, len(indices))
    return rot / n, trans / n, photo / n, lost / n


def _identity(b: dict) -> torch.Tensor:
    return torch.eye(4, device=b["T"].device).expand_as(b["T"]).contiguous()


def baselines(tensors: PairTensors, indices: torch.Tensor, prefix: str = "") -> dict:
    """What no motion gives (the "predict nothing" baseline), and the photometric error the
    true motion leaves (the floor set by noise, occlusion and pixels the true motion takes out
    of view). Fixed for a split; `prefix` "test_" names the test split's."""
    id_rot, id_trans, id_photo, _ = _mean_errors(tensors, indices, _identity)
    *_, true_photo, _ = _mean_errors(tensors, indices, lambda b: b["T"])
    return {f"{prefix}identity_rotation_err_deg": id_rot, f"{prefix}identity_translation_err_m": id_trans,
            f"{prefix}identity_photometric_l1": id_photo, f"{prefix}true_motion_photometric_l1": true_photo}


def evaluate(model: RelPoseNet, tensors: PairTensors, indices: torch.Tensor, split: str = "val") -> dict:
    """Rotation, translation and photometric errors of the model's predicted motion on a split
    ("val" or "test"), and the fraction of object pixels it sends out of view."""
    model.eval()
    rot, trans, photo, lost = _mean_errors(tensors, indices,
                                           lambda b: geometry.se3_exp(model(b["source"], b["target"])))
    return {f"{split}_rotation_err_deg": rot, f"{split}_translation_err_m": trans,
            f"{split}_photometric_l1": photo, f"{split}_outside_fraction": lost}
