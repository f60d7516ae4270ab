"""How a model is scored: the pose loss, the majority baselines, prediction and validation metrics.

Owns `pose_loss` (the training objective, also the validation loss), `majority_baseline` /
`majority_angle_baseline` (what always guessing the most frequent training bin scores),
`predict` (logits and per-sample loss in the order of the rows asked for) and `evaluate`, the
one validation function: `fit` calls it every epoch, and it is public for scoring any model on
a `BatchSource`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pix3d.constants import HEADS, N_BINS
from pix3d.devices import EVAL_BATCH
from pix3d.metrics import azimuth_angle_metrics, per_category_metrics
from pix3d.data.pose import circular_bin_distance
from pix3d.train.batches import BatchSource
from pix3d.train.precision import autocast


def pose_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """CE(azimuth) + CE(elevation) + CE(in-plane); logits B x 3 x N_BINS, targets B x 3."""
    per_head = F.cross_entropy(logits.float().permute(0, 2, 1), targets, reduction="none")  # B x 3
    per_sample = per_head.sum(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample


def majority_angle_baseline(train_labels: np.ndarray, val_azimuth_deg, azimuth_centres) -> dict[str, float]:
    """MedErr and Acc@pi/6 on val of always predicting the most frequent training azimuth bin."""
    majority = np.bincount(train_labels[:, 0], minlength=N_BINS).argmax()
    angle = azimuth_angle_metrics(np.full(len(val_azimuth_deg), majority), val_azimuth_deg, azimuth_centres)
    return {"majority_azimuth_mederr": angle["val_azimuth_mederr"],
            "majority_azimuth_acc_pi6": angle["val_azimuth_acc_pi6"]}


def majority_baseline(train_labels: np.ndarray, val_labels: np.ndarray) -> dict[str, float]:
    """Accuracy on val of always predicting each head's most frequent training bin."""
    out = {}
    for h, head in enumerate(HEADS):
        majority = np.bincount(train_labels[:, h], minlength=N_BINS).argmax()
        out[f"majority_{head}_acc"] = float((val_labels[:, h] == majority).mean())
    return out


@torch.no_grad()
def predict(model: nn.Module, source: BatchSource, indices: torch.Tensor, precision: str,
            batch_size: int = EVAL_BATCH, shuffle: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N x 3 x N_BINS) and per-sample loss (N) for cache rows `indices`, in their order.

    Batches are consecutive rows, or with `shuffle` a seeded random order (as the published
    notebook validated); either way the outputs are put back in the order of `indices`.
    """
    model.eval()
    n = len(indices)
    order = torch.randperm(n, generator=shuffle) if shuffle is not None else torch.arange(n)
    logits_out = torch.empty((n, len(HEADS), N_BINS), dtype=torch.float32)
    losses_out = torch.empty(n, dtype=torch.float32)
    for positions in order.split(batch_size):
        idx = indices[positions]
        with autocast(source.device, precision):
            logits = model(source.inputs(idx))
        logits_out[positions] = logits.float().cpu()
        losses_out[positions] = pose_loss(logits, source.targets(idx), reduction="none").float().cpu()
    return logits_out, losses_out


@torch.no_grad()
def evaluate(model: nn.Module, source: BatchSource, indices, precision: str = "fp32",
             batch_size: int = EVAL_BATCH, *, shuffle: torch.Generator | None = None,
             azimuth_deg: np.ndarray | None = None, azimuth_centres: np.ndarray | None = None,
             categories: Sequence[str] | None = None) -> dict:
    """Validation metrics of `model` (on `source.device`) on cache rows `indices`.

    Loss, per-head accuracy, circular within-one-bin azimuth accuracy and the azimuth confusion
    matrix (`val_azimuth_confusion`, true x predicted). With the true azimuths (degrees, all
    cache rows) and the bin centres, also MedErr and Acc@pi/6; with `categories` (all cache
    rows), per-category ones.
    """
    indices = torch.as_tensor(indices, dtype=torch.int64)
    logits, losses = predict(model, source, indices, precision, batch_size, shuffle)
    predicted = logits.argmax(dim=2).numpy()
    truth = source.labels.index_select(0, indices.to(source.device)).cpu().numpy()
    metrics = {"val_loss": float(losses.mean())}
    for h, head in enumerate(HEADS):
        metrics[f"val_{head}_acc"] = float((predicted[:, h] == truth[:, h]).mean())
    az_pred, az_true = predicted[:, 0], truth[:, 0]
    metrics["val_azimuth_acc_within1"] = float((circular_bin_distance(az_pred, az_true) <= 1).mean())
    if azimuth_deg is not None and azimuth_centres is not None:
        rows = indices.numpy()
        true_deg = np.asarray(azimuth_deg, dtype=np.float64)[rows]
        metrics.update(azimuth_angle_metrics(az_pred, true_deg, azimuth_centres))
        if categories is not None:
            val_categories = [categories[i] for i in rows]
            metrics.update(per_category_metrics(az_pred, az_true, true_deg, azimuth_centres, val_categories))
    confusion = np.zeros((N_BINS, N_BINS), dtype=np.int64)
    np.add.at(confusion, (az_true, az_pred), 1)
    metrics["val_azimuth_confusion"] = confusion.tolist()
    return metrics
