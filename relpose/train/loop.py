"""`fit`: one training run (seeded split, Adam, optional cosine decay), evaluated each epoch,
resumable from the checkpoint handed to `on_epoch`."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch

from pix3d.devices import resolve_device
from pix3d.errors import Pix3DError
from relpose.models import RelPoseNet
from relpose.pairs import PairData
from relpose.train.batches import PairTensors
from relpose.train.config import RelPoseConfig
from relpose.train.evaluation import baselines, evaluate
from relpose.train.loss import loss_fn



def train_batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """`order` cut into batches of `batch_size`; a last batch of one pair joins the one before,
    since BatchNorm cannot normalise a single sample in training (every pair still trains)."""
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches

def fit(config: RelPoseConfig, data: PairData, *, on_epoch: Callable[..., None] | None = None,
        resume_from: dict | None = None) -> dict:
    """Train and evaluate each epoch; returns {"config", "history", "final", "model"}.

    `on_epoch(metrics, checkpoint)` after every epoch; `checkpoint` (model, optimizer, epoch,
    shuffle state, history, config) is ready for torch.save and, given back as `resume_from`,
    continues the run at the next epoch exactly where it stopped.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    # The test models are the pair set's (the same for every seed); nothing here looks at
    # them but the report: no early stopping, no sizing, no choice is made on them.
    train_idx, val_idx, test_idx = data.splits(config.val_fraction, config.seed, config.test_fraction)
    if len(train_idx) < 2:  # BatchNorm cannot normalise one sample in training
        raise Pix3DError(f"the split left {len(train_idx)} training pair(s) of {len(data)}; use more pairs")
    tensors = PairTensors(data, device)
    model = RelPoseNet(config.fusion, config.weights, config.freeze_backbone, config.backbone).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    steps = config.epochs * -(-len(train_idx) // config.batch_size)
    scheduler = (torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
                 if config.lr_schedule == "cosine" else None)
    shuffle = torch.Generator().manual_seed(config.seed)
    train_t, val_t, test_t = (torch.as_tensor(i) for i in (train_idx, val_idx, test_idx))
    reference = baselines(tensors, val_t)  # computed once: they do not change with training
    if len(test_t):
        reference.update(baselines(tensors, test_t, prefix="test_"))
    history, first_epoch = [], 1
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        if scheduler is not None and resume_from.get("scheduler"):
            scheduler.load_state_dict(resume_from["scheduler"])
        shuffle.set_state(resume_from["shuffle"])
        history = list(resume_from["history"])
        first_epoch = int(resume_from["epoch"]) + 1
    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        for step, idx in enumerate(train_batches(train_t[torch.randperm(len(train_t), generator=shuffle)],
                                                 config.batch_size), 1):
            b = tensors.batch(idx)
            loss = loss_fn(config.loss, b, model(b["source"], b["target"]))
            if not torch.isfinite(loss):
                raise Pix3DError(f"loss is {loss.item()} at epoch {epoch}, step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
        train_time = time.perf_counter() - started
        metrics = {"epoch": epoch, "train_loss": loss_sum / seen, "pairs_per_s": seen / train_time,
                   "lr": optimizer.param_groups[0]["lr"],
                   **evaluate(model, tensors, val_t), **(evaluate(model, tensors, test_t, "test") if len(test_t) else {}),
                   **reference, "n_train": len(train_idx), "n_val": len(val_idx), "n_test": len(test_idx)}
        history.append(metrics)
        if on_epoch:
            on_epoch(metrics, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict() if scheduler is not None else None,
                               "shuffle": shuffle.get_state(), "epoch": epoch, "history": history,
                               "config": dataclasses.asdict(config)})
    return {"config": dataclasses.asdict(config), "history": history, "final": history[-1], "model": model}

