"""A run's live state: set up from a config and data (or continued from a checkpoint), and
turned back into a checkpoint after every epoch.

Owns what `fit` does before its first epoch: the checks on the data, the torch settings
(threads, device, precision), seeding, the split and the bins fitted on its training rows,
the input normalisation, the `BatchSource`, and the model, optimizer and scheduler. The order
matters: the model's weights are drawn from the torch generator right after seeding, and a
resumed run restores the saved RNG state only after that, so it reproduces an uninterrupted one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pix3d.data.dataset import ModalityView, check_modalities
from pix3d.data.splits import split_indices
from pix3d.devices import resolve_device
from pix3d.errors import Pix3DError
from pix3d.models import get_model
from pix3d.data.pose import Bins, fit_bins
from pix3d.train.batches import BatchSource, channel_stats
from pix3d.train.checkpoints import checkpoint_to_resume, rng_state, seed_everything, set_rng_state, to_cpu
from pix3d.train.config import TrainConfig
from pix3d.train.evaluation import majority_baseline
from pix3d.train.precision import resolve_precision


@dataclass
class Split:
    """The training and validation rows, and what is fitted on the training rows only."""

    train: torch.Tensor             # int64 cache rows
    val: torch.Tensor
    bins: Bins
    labels: np.ndarray              # N x 3 bin labels of every cache row
    baseline: dict[str, float]      # every metric's majority baseline on the validation rows
    angles: np.ndarray              # N x 3 annotated angles (degrees) of every cache row


@dataclass
class RunState:
    """Everything a run carries from one epoch to the next (what a checkpoint saves, live)."""

    config: TrainConfig
    device: torch.device
    precision: str                  # what 'auto' resolved to here
    shuffle: torch.Generator        # the batch-shuffle generator
    split: Split
    norm: dict
    source: BatchSource
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    history: list[dict] = field(default_factory=list)
    best: float = 0.0
    start_epoch: int = 0

    def checkpoint(self, epoch: int) -> dict:
        """The full state after `epoch`, ready for torch.save."""
        return {
            # Deep copies: the caller may keep the dict while training goes on.
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": to_cpu(copy.deepcopy(self.optimizer.state_dict())),
            "scheduler": copy.deepcopy(self.scheduler.state_dict()),
            "epoch": epoch,
            "rng": rng_state(self.shuffle),
            "config": self.config.to_dict(),
            "bins": self.split.bins.to_dict(),
            "norm": self.norm,
            "history": copy.deepcopy(self.history),
            "best": self.best,
        }


def start_run(config: TrainConfig, data, resume_from: dict | str | Path | None = None) -> RunState:
    """Check, seed and build everything for `config` on `data`; continue `resume_from` if given."""
    check_data(config, data)
    device, precision = configure_torch(config)
    shuffle = seed_everything(config.seed)
    checkpoint = checkpoint_to_resume(resume_from, config)
    split = split_data(config, data)
    norm = normalisation(config, data, split.train, checkpoint)
    # Built once: on CUDA it copies the trial's channels of the whole cache to the GPU.
    source = BatchSource(data.images, split.labels, config.modalities, norm, device, config.channels_last)
    model, optimizer, scheduler = build_model(config, device)
    state = RunState(config, device, precision, shuffle, split, norm, source, model, optimizer, scheduler)
    if checkpoint is not None:
        restore(state, checkpoint)
    return state


def check_data(config: TrainConfig, data) -> None:
    """The config is a TrainConfig, and `data` was prepared at its size with its modalities."""
    if not isinstance(config, TrainConfig):
        raise Pix3DError(f"fit() needs a TrainConfig, got {type(config).__name__}")
    if data.image_size != config.image_size:
        raise Pix3DError(
            f"data was prepared at {data.image_size} px but config key 'image_size' is "
            f"{config.image_size}; prepare the data at {config.image_size} px"
        )
    check_modalities(config.modalities, data.available)


def configure_torch(config: TrainConfig) -> tuple[torch.device, str]:
    """Apply the config's thread count; resolve its device and precision (cuDNN autotuning on CUDA)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device, precision


def split_data(config: TrainConfig, data) -> Split:
    """Split, optional training cap, bins fitted on the training split only, majority baselines."""
    dataset = (getattr(data, "manifest", None) or {}).get("dataset") or {}
    train_idx, val_idx = split_indices(config.split, data.categories, data.model_ids,
                                       seed=config.seed, val_fraction=config.val_fraction,
                                       img_paths=data.img_paths, dataset=dataset.get("name"),
                                       builtin=bool(dataset.get("builtin")))
    if config.category is not None:  # one category's own split: the rows of both sides that are of it
        if config.category not in set(data.categories):
            raise Pix3DError(f"config key 'category': no image of {config.category!r} in the data; it has "
                             f"{', '.join(sorted(set(data.categories)))}")
        of = np.asarray(data.categories) == config.category
        train_idx, val_idx = train_idx[of[train_idx]], val_idx[of[val_idx]]
    if config.max_train_images and len(train_idx) > config.max_train_images:
        keep = np.random.default_rng(config.seed).choice(len(train_idx), config.max_train_images, replace=False)
        train_idx = np.sort(train_idx[keep])
    if len(train_idx) < 2 or len(val_idx) < 1:
        raise Pix3DError(f"split {config.split!r} left {len(train_idx)} training and {len(val_idx)} validation images; need >= 2 and >= 1")
    bins = fit_bins(config.bins, data.azimuth[train_idx], data.elevation[train_idx], data.inplane[train_idx])
    labels = bins.labels(data.azimuth, data.elevation, data.inplane)
    angles = np.stack([data.azimuth, data.elevation, data.inplane], axis=1).astype(np.float64)
    baseline = majority_baseline(labels[train_idx], labels[val_idx], angles[val_idx], bins)
    return Split(torch.as_tensor(train_idx, dtype=torch.int64), torch.as_tensor(val_idx, dtype=torch.int64),
                 bins, labels, baseline, angles)


def normalisation(config: TrainConfig, data, train: torch.Tensor, checkpoint: dict | None) -> dict:
    """The input normalisation: a checkpoint's, raw 0..255 under the raw_input quirk, else training-split stats."""
    channels = list(config.modalities.channels)
    if checkpoint is not None and checkpoint.get("norm") is not None:
        return checkpoint["norm"]  # the statistics the checkpointed weights were trained with
    if config.has_quirk("raw_input"):
        return {"channels": channels, "mean": [0.0] * len(channels), "std": [1.0] * len(channels), "scale": "raw"}
    return channel_stats(ModalityView(data.images, config.modalities).images, train, channels)


def build_model(config: TrainConfig, device: torch.device,
                ) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    """(model on `device`, Adam, StepLR) for the config; the weights come from the torch generator."""
    model = get_model(config.model, config.modalities, image_size=config.image_size, seed_quirks=config.seed_quirks)
    model = model.to(device, memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # Created in both schedules (the notebook created it too); stepped only under "step".
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    return model, optimizer, scheduler


def restore(state: RunState, checkpoint: dict) -> None:
    """Load a checkpoint's weights, optimizer, scheduler, RNG state, history and epoch into `state`."""
    if checkpoint.get("bins") is not None and Bins.from_dict(checkpoint["bins"]).to_dict() != state.split.bins.to_dict():
        raise Pix3DError("checkpoint bins differ from the bins fitted on this data; is it another dataset?")
    state.model.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"], state.shuffle)
    state.history = [dict(m) for m in checkpoint.get("history", [])]
    state.best = float(checkpoint.get("best", 0.0))
    state.start_epoch = int(checkpoint["epoch"])
