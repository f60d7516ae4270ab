"""How a model is scored: the pose loss, the majority baselines, prediction and validation metrics.

Owns `pose_loss` (the training objective, also the validation loss), `majority_baseline`
(what always guessing the most frequent training bin scores, on every metric with a
baseline), `predict` (logits and per-sample loss in the order of the rows asked for) and
`evaluate`, the one validation function: `fit` calls it every epoch, and it is public for
scoring any model on a `BatchSource`. Which metrics there are, and how each is computed from
the predictions, is `pix3d.metrics.METRICS`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pix3d.constants import HEADS, N_BINS
from pix3d.data.pose import Bins
from pix3d.devices import EVAL_BATCH
from pix3d.metrics import Predictions, baseline_metrics, per_category_metrics, validation_metrics
from pix3d.train.batches import BatchSource
from pix3d.train.precision import autocast


def pose_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """CE(azimuth) + CE(elevation) + CE(in-plane); logits B x 3 x N_BINS, targets B x 3."""
    per_head = F.cross_entropy(logits.float().permute(0, 2, 1), targets, reduction="none")  # B x 3
    per_sample = per_head.sum(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample


def bin_centres(bins: Bins) -> np.ndarray:
    """3 x N_BINS: each head's bin centres in degrees (in-plane edges in radians converted)."""
    return np.stack([bins.centres(head) for head in HEADS])


def majority_baseline(train_labels: np.ndarray, val_labels: np.ndarray, val_angles: np.ndarray | None = None,
                      bins: Bins | None = None) -> dict[str, float]:
    """Every metric's baseline on val (`majority_<head>_acc`, and with the validation angles
    (N x 3 degrees) and the bins the angular ones): each head always predicting its most
    frequent training bin."""
    val = Predictions(predicted=val_labels, truth=val_labels,
                      angles=None if val_angles is None else np.asarray(val_angles, dtype=np.float64),
                      centres=None if bins is None else bin_centres(bins))
    return baseline_metrics(train_labels, val)


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
             angles: np.ndarray | None = None, bins: Bins | None = None,
             categories: Sequence[str] | None = None) -> dict:
    """Validation metrics of `model` (on `source.device`) on cache rows `indices`.

    Every metric of `pix3d.metrics.METRICS` the inputs allow, plus the azimuth confusion matrix
    (`val_azimuth_confusion`, true x predicted). With the annotated angles (N x 3 degrees,
    all cache rows) and the bins, also the angular ones (azimuth and rotation MedErr,
    Acc@pi/6); with `categories` (all cache rows), the per-category ones.
    """
    indices = torch.as_tensor(indices, dtype=torch.int64)
    logits, losses = predict(model, source, indices, precision, batch_size, shuffle)
    predicted = logits.argmax(dim=2).numpy()
    truth = source.labels.index_select(0, indices.to(source.device)).cpu().numpy()
    rows = indices.numpy()
    with_angles = angles is not None and bins is not None
    predictions = Predictions(predicted=predicted, truth=truth, losses=losses.numpy().astype(np.float64),
                              angles=np.asarray(angles, dtype=np.float64)[rows] if with_angles else None,
                              centres=bin_centres(bins) if with_angles else None)
    metrics = validation_metrics(predictions)
    if categories is not None:
        metrics.update(per_category_metrics(predictions, [categories[i] for i in rows]))
    confusion = np.zeros((N_BINS, N_BINS), dtype=np.int64)
    np.add.at(confusion, (truth[:, 0], predicted[:, 0]), 1)
    metrics["val_azimuth_confusion"] = confusion.tolist()
    return metrics
