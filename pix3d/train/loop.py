"""The training loop: `fit` runs epochs of `train_one_epoch` and `evaluate` on a `RunState`.

Owns one epoch of training (`train_one_epoch`, the published recipe: Adam on CE(azimuth) +
CE(elevation) + CE(in-plane), with bf16 autocast where the precision says so), the epoch's
metrics (validation, baselines, timing, provenance), `fit` itself and `format_metrics`, the
line per epoch a human reads.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from pix3d.constants import HEADS, N_BINS
from pix3d.devices import EVAL_BATCH
from pix3d.errors import Pix3DError
from pix3d.train.batches import BatchSource, train_batches
from pix3d.train.config import TrainConfig
from pix3d.train.evaluation import evaluate, pose_loss
from pix3d.train.precision import autocast
from pix3d.train.state import RunState, build_model, configure_torch, start_run


def fit(config: TrainConfig, data, *, on_epoch: Callable[[dict, dict], None] | None = None,
        resume_from: dict | str | Path | None = None, progress: bool = False,
        log: Callable[[str], None] | None = None) -> dict:
    """Train `config.model` on `data` (a PreparedData) and return config, history and final metrics.

    `on_epoch(metrics, checkpoint)` runs after every epoch with the full state (ready for
    torch.save). `resume_from` (a checkpoint dict or path) continues that run exactly; a
    checkpoint from another config raises naming the differing keys.
    """
    state = start_run(config, data, resume_from)
    for epoch in range(state.start_epoch + 1, config.epochs + 1):
        metrics = run_epoch(state, data, epoch, progress=progress)
        state.history.append(metrics)
        if log is not None:
            log(format_metrics(metrics, config.epochs))
        if on_epoch is not None:
            on_epoch(dict(metrics), state.checkpoint(epoch))
    if not state.history:
        raise Pix3DError(f"nothing to train: the checkpoint is at epoch {state.start_epoch} and epochs is {config.epochs}")
    return {"config": config.to_dict(), "history": state.history, "final": state.history[-1]}


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, source: BatchSource,
                    indices: torch.Tensor, config: TrainConfig, epoch: int, *,
                    shuffle: torch.Generator, precision: str, progress: bool = False) -> tuple[float, int]:
    """One pass over cache rows `indices` in `shuffle`d batches of `config.batch_size`.

    Returns (mean training loss, images seen). A non-finite loss raises naming the epoch and step.
    """
    model.train()
    loss_sum, seen = torch.zeros((), dtype=torch.float64), 0
    batches = train_batches(len(indices), config.batch_size, shuffle)
    bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=not progress, unit="batch")
    for step, positions in enumerate(bar, start=1):
        idx = indices[positions]
        x, y = source.inputs(idx), source.targets(idx)
        with autocast(source.device, precision):
            logits = model(x)
        loss = pose_loss(logits, y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise Pix3DError(
                f"loss became {loss_value} at epoch {epoch}, step {step} "
                f"(model {config.model}, lr {config.lr:g}); lower the lr or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss_value * len(idx)
        seen += len(idx)
    return float(loss_sum) / seen, seen


def measure_train_step(config: TrainConfig) -> float:
    """Seconds of one training step of `config` (forward, loss, backward, Adam) on a batch of
    random inputs at its size, on its device, after one untimed step: what a budget costs."""
    device, precision = configure_torch(config)
    generator = torch.Generator().manual_seed(0)
    model, optimizer, _ = build_model(config, device)
    model.train()
    channels = len(config.modalities.channels)
    x = torch.rand((config.batch_size, channels, config.image_size, config.image_size), generator=generator).to(device)
    y = torch.randint(0, N_BINS, (config.batch_size, len(HEADS)), generator=generator).to(device)
    timings = []
    for _ in range(2):  # the first step allocates and picks kernels
        started = time.perf_counter()
        with autocast(device, precision):
            logits = model(x)
        loss = pose_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - started)
    return timings[-1]


def run_epoch(state: RunState, data, epoch: int, *, progress: bool = False) -> dict:
    """Train one epoch, step the schedule, validate; the epoch's metrics (updates `state.best`)."""
    config = state.config
    started = time.perf_counter()
    lr_now = state.optimizer.param_groups[0]["lr"]
    train_loss, seen = train_one_epoch(state.model, state.optimizer, state.source, state.split.train,
                                       config, epoch, shuffle=state.shuffle, precision=state.precision,
                                       progress=progress)
    train_time = time.perf_counter() - started
    if config.lr_schedule == "step":
        state.scheduler.step()

    metrics = {"epoch": epoch, "train_loss": train_loss}
    val = validate(state, data, epoch)
    confusion = val.pop("val_azimuth_confusion")
    metrics.update(val)
    metrics.update(state.split.baseline)
    state.best = max(state.best, metrics["val_azimuth_acc"])
    metrics.update({
        "best_val_azimuth_acc": state.best, "lr": lr_now, "images_per_s": seen / train_time,
        "epoch_time_s": time.perf_counter() - started,
        "n_train": len(state.split.train), "n_val": len(state.split.val),
        # Which arithmetic actually ran ('auto' resolves per machine): provenance for the run.
        "bf16_autocast": 1.0 if state.precision == "bf16" else 0.0,
        "val_azimuth_confusion": confusion,
    })
    return metrics


def validation_batching(config: TrainConfig, epoch: int) -> tuple[int, torch.Generator | None]:
    """(batch size, shuffle generator or None) of validation after `epoch`: sorted batches of
    EVAL_BATCH, or under the val_batching quirk shuffled batches of the training batch size."""
    if not config.has_quirk("val_batching"):
        return EVAL_BATCH, None
    # The notebook validated in shuffled batches of the training batch size; with the
    # batch-mixing concatenation a prediction depends on its batch mates, so sorted
    # batches of 128 (neighbouring, same-category rows) would not be what it measured.
    # Its own generator (seed, epoch): the training shuffle and resume stay exact.
    return config.batch_size, torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)


def validate(state: RunState, data, epoch: int) -> dict:
    """`evaluate` on the validation rows after `epoch`, batched as the config's recipe says."""
    config = state.config
    batch_size, val_shuffle = validation_batching(config, epoch)
    return evaluate(state.model, state.source, state.split.val, state.precision, batch_size, shuffle=val_shuffle,
                    angles=state.split.angles, bins=state.split.bins,
                    # Per-category numbers at the end of the trial only (not per epoch).
                    categories=data.categories if epoch == config.epochs else None)


def format_metrics(m: dict, epochs: int) -> str:
    """One line per epoch for humans."""
    return (
        f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
        f"az {m['val_azimuth_acc']:.3f} (+-1 bin {m['val_azimuth_acc_within1']:.3f}, majority "
        f"{m['majority_azimuth_acc']:.3f}; MedErr {m.get('val_azimuth_mederr', math.nan):.1f} deg, "
        f"Acc@pi/6 {m.get('val_azimuth_acc_pi6', math.nan):.3f})  el {m['val_elevation_acc']:.3f}  ip {m['val_inplane_acc']:.3f}  "
        f"rotation MedErr {m.get('val_rotation_mederr', math.nan):.1f} deg  "
        f"lr {m['lr']:.1e}  {m['images_per_s']:.0f} img/s  {m['epoch_time_s']:.1f}s"
    )
