"""One training run: typed config -> seeded split, bins, normalisation -> Adam loop -> metrics.

Pure PyTorch (no Ray, no MLflow), so one run works from a shell, from tests and from a Tune
trainable alike. The recipe is the published one (Adam, StepLR(3, 0.1), batch 10, 25 epochs,
loss = CE(azimuth) + CE(elevation) + CE(in-plane)); `lr_schedule="none"` reproduces what the
published notebook actually ran (a StepLR that was created and never stepped).

Hot path: the prepared uint8 cache (N x 8 x S x S) is sliced into batches with index tensors
and converted to float on the fly; nothing is decoded and no per-sample `__getitem__` runs.
On CUDA the needed channels of the whole cache are moved to the GPU once.

    python -m pix3d.train --model combined_net --modalities rgb,mask --lr 1e-5 --budget quick
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pix3d.constants import HEADS, N_BINS, modalities_key, modality_channels, parse_modalities
from pix3d.data.dataset import ModalityView, check_modalities
from pix3d.data.splits import SPLITS, split_indices
from pix3d.errors import Pix3DError, UsageError, one_line
from pix3d.metrics import azimuth_angle_metrics, per_category_metrics
from pix3d.fileio import atomic_path, check_free_space, ensure_writable_dir, write_json
from pix3d.models import get_model, list_models, published_lr
from pix3d.data.pose import BIN_SCHEMES, Bins, circular_bin_distance, fit_bins

PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("step", "none")


# ----------------------------------------------------------------------------- config

@dataclass
class TrainConfig:
    """Everything that determines one run's result (plus `threads`/`device`, which do not).

    Construction validates: wrong types and bad values raise Pix3DError naming the key.
    """

    model: str = "combined_net"
    modalities: tuple[str, ...] = ("rgb",)
    lr: float = 1e-5
    batch_size: int = 10
    epochs: int = 25
    weight_decay: float = 0.0
    lr_schedule: str = "step"  # "step": StepLR stepped each epoch | "none": as the notebook ran
    step_size: int = 3
    gamma: float = 0.1
    bins: str = "seed"
    split: str = "seed"
    val_fraction: float = 0.1
    seed: int = 0
    image_size: int = 224
    precision: str = "fp32"
    channels_last: bool = False
    threads: int | None = None
    device: str = "auto"
    seed_quirks: bool = False
    # At most this many training images (a seeded subset of the training split; validation
    # is untouched). None = all. Lets the CPU budget trade images for epochs.
    max_train_images: int | None = None

    def __post_init__(self):
        _check_types(self)
        try:
            self.modalities = parse_modalities(self.modalities)
        except ValueError as exc:
            raise Pix3DError(f"config key 'modalities': {exc}") from None
        for key in ("lr", "batch_size", "epochs", "step_size", "gamma", "image_size"):
            if not getattr(self, key) > 0:
                raise Pix3DError(f"config key {key!r} must be positive, got {getattr(self, key)!r}")
        if not math.isfinite(self.lr):
            raise Pix3DError(f"config key 'lr' must be finite, got {self.lr!r}")
        if self.weight_decay < 0:
            raise Pix3DError(f"config key 'weight_decay' must be >= 0, got {self.weight_decay!r}")
        if not 0 < self.val_fraction < 1:
            raise Pix3DError(f"config key 'val_fraction' must lie in (0, 1), got {self.val_fraction!r}")
        for key in ("threads", "max_train_images"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise Pix3DError(f"config key {key!r} must be positive or None, got {value!r}")
        choices = {
            "model": tuple(list_models()),
            "precision": PRECISIONS,
            "lr_schedule": LR_SCHEDULES,
            "bins": tuple(BIN_SCHEMES),
            "split": tuple(SPLITS),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise Pix3DError(
                    f"config key {key!r}: unknown value {getattr(self, key)!r}; choose from {', '.join(allowed)}"
                )
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise Pix3DError(f"config key 'device': unknown value {self.device!r}; choose from auto, cpu, cuda, cuda:N")

    def to_dict(self) -> dict:
        """Plain JSON-able dict; modalities as a list."""
        d = dataclasses.asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a dict (Tune config, checkpoint); unknown keys raise, listing the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise Pix3DError(f"unknown config key {unknown[0]!r}; known keys: {', '.join(known)}")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def _check_types(config: TrainConfig) -> None:
    """Reject wrong types by the field annotations (ints for floats are fine, bools are not)."""
    expected = {
        "model": (str,), "lr": (float, int), "batch_size": (int,), "epochs": (int,),
        "weight_decay": (float, int), "lr_schedule": (str,), "step_size": (int,),
        "gamma": (float, int), "bins": (str,), "split": (str,), "val_fraction": (float, int),
        "seed": (int,), "image_size": (int,), "precision": (str,), "channels_last": (bool,),
        "threads": (int, type(None)), "device": (str,), "seed_quirks": (bool,),
        "max_train_images": (int, type(None)), "modalities": (str, list, tuple),
    }
    for key, types in expected.items():
        value = getattr(config, key)
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise Pix3DError(f"config key {key!r} must be {names}, got {type(value).__name__} {value!r}")
    for key in ("lr", "weight_decay", "gamma", "val_fraction"):
        setattr(config, key, float(getattr(config, key)))


# Keys that do not change what a run computes: a resumed run may differ in them.
RESUME_FREE_KEYS = frozenset({"epochs", "threads", "device"})


# ----------------------------------------------------------------------------- budgets

BUDGETS: dict[str, dict[str, Any]] = {
    # The published setup: meant for a GPU. precision "auto": bf16 autocast (AMP) on a GPU that
    # supports it, fp32 elsewhere; pass precision fp32 to match the published arithmetic exactly.
    "paper": {"image_size": 224, "epochs": 25, "batch_size": 10, "precision": "auto",
              "channels_last": False, "max_train_images": None},
    # Sized by measurement on this project's 2-core CPU (benchmarks/bench_train.py; figures in
    # the closing note of issue 4). 64 px: just above combined_net's 58 px minimum for its
    # unpadded convolutions. precision "auto" resolves to fp32 on this CPU: it has no
    # bf16 units (no AMX / AVX512-BF16) and bf16 autocast measured ~2.5x SLOWER here; on a CPU
    # with AMX it resolves to bf16 (~3x faster there). combined_net's conv(64->256, 7) makes a training step cost ~1.5 GMAC per image
    # even at 64 px (~20 images/s on one quiet core), so the budget is ~900 image passes:
    # 300 training images (validation untouched) x 3 epochs -> ~55 s (combined_net) and
    # ~25 s (separate_net) per trial on one core. 3 epochs also means StepLR(3) never fires.
    # channels_last measured 5-45% faster in fp32 for both models here.
    "quick": {"image_size": 64, "epochs": 3, "batch_size": 10, "precision": "auto",
              "channels_last": True, "max_train_images": 300},
}


def resolve_budget(name: str) -> tuple[str, dict, str]:
    """'auto' | 'paper' | 'quick' -> (resolved name, config overrides, a line saying why)."""
    if name == "auto":
        if torch.cuda.is_available():
            resolved, why = "paper", f"CUDA device found ({torch.cuda.get_device_name(0)})"
        else:
            resolved, why = "quick", "no CUDA device, training on CPU"
        message = f"budget auto -> {resolved}: {why}"
    elif name in BUDGETS:
        resolved, message = name, f"budget {name}"
    else:
        raise UsageError(f"unknown budget {name!r}; choose from auto, {', '.join(BUDGETS)}")
    overrides = dict(BUDGETS[resolved])
    message += " (" + ", ".join(f"{k}={v}" for k, v in overrides.items()) + ")"
    return resolved, overrides, message


# ----------------------------------------------------------------------------- seeding

def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (CPU and CUDA); return the seeded batch-shuffle generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _rng_state(shuffle: torch.Generator) -> dict:
    """All RNG states, as types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "random": random.getstate(),
        "shuffle": shuffle.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- data on device

def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present else CPU; an explicit 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Pix3DError(f"config key 'device' is {name!r} but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise Pix3DError(f"config key 'device': unknown value {name!r}") from None


def channel_stats(images: torch.Tensor, indices: torch.Tensor, channels: list[int], chunk: int = 256) -> dict:
    """Per-channel mean/std of the [0, 1]-scaled images at `indices` (the training split)."""
    total = torch.zeros(len(channels), dtype=torch.float64)
    total_sq = torch.zeros(len(channels), dtype=torch.float64)
    count = 0
    for start in range(0, len(indices), chunk):
        batch = images[indices[start:start + chunk]][:, channels].to(torch.float64) / 255.0
        total += batch.sum(dim=(0, 2, 3))
        total_sq += (batch * batch).sum(dim=(0, 2, 3))
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)  # constant channel
    return {"channels": channels, "mean": mean.tolist(), "std": std.tolist(), "scale": "unit"}


class BatchSource:
    """Uint8 cache + labels on the training device, turned into normalised float batches.

    Without quirks: x = (u8 / 255 - mean) / std with training-split statistics. With
    seed_quirks the published raw 0..255 floats (`norm["scale"] == "raw"`). On the CPU batches
    are gathered from the shared cache itself (no copy). On CUDA only the trial's channels of
    the whole cache are moved to the GPU, once and in chunks (a 224-px Pix3D cache is about
    4 GB in all 8 channels, 1.5 GB in RGB), so a batch never crosses the bus. `compact`
    forces either layout (the compact one is what CUDA uses; tests compare the two on CPU).
    """

    COPY_CHUNK = 512  # cache rows per host-to-device copy: bounds the temporary host memory

    def __init__(self, images, labels: np.ndarray, modalities, norm: dict,
                 device: torch.device, channels_last: bool, *, compact: bool | None = None):
        view = ModalityView(images, modalities)  # validates the subset against the cache layout
        if compact is None:
            compact = device.type != "cpu"
        if compact:
            cache, channels = view.images, torch.as_tensor(view.channels)
            self.compact = torch.empty((cache.shape[0], len(view.channels), *cache.shape[2:]),
                                       dtype=torch.uint8, device=device)
            for start in range(0, cache.shape[0], self.COPY_CHUNK):
                rows = cache[start:start + self.COPY_CHUNK].index_select(1, channels)
                self.compact[start:start + len(rows)].copy_(rows)
            self.view = None
        else:
            self.compact, self.view = None, view
        self.labels = torch.as_tensor(labels, dtype=torch.int64, device=device)
        self.device = device
        self.channels_last = channels_last
        n = view.num_channels
        if norm["scale"] == "raw":
            mean, inv_std = torch.zeros(n), torch.ones(n)
        else:  # fold /255 into the affine map: one multiply-add per pixel
            mean = torch.tensor(norm["mean"]) * 255.0
            inv_std = 1.0 / (torch.tensor(norm["std"]) * 255.0)
        self.mean = mean.view(1, -1, 1, 1).to(device, torch.float32)
        self.inv_std = inv_std.view(1, -1, 1, 1).to(device, torch.float32)

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """Float B x C x S x S for cache rows `idx` (a CPU int64 tensor)."""
        if self.compact is not None:
            batch = self.compact.index_select(0, idx.to(self.device))
        else:
            batch = self.view.batch(idx)
        x = (batch.to(torch.float32) - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        return self.labels.index_select(0, idx.to(self.device))


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix units (AMX or AVX512-BF16).

    Without them bf16 autocast is emulated and measured ~2.5x SLOWER than fp32 (this
    project's 2-core Xeon: 23 vs 82 GFLOP/s matmul); with AMX it is ~3x faster.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))


PRECISION_ENV = "PIX3D_PRECISION"


def forced_precision() -> str | None:
    """The precision that `$PIX3D_PRECISION` forces on 'auto' ('fp32' or 'bf16'), or None.

    Unset, empty or 'auto' force nothing. Lets a whole test suite (or a sweep) run in bf16 on a
    machine whose hardware check would pick fp32, and the other way round.
    """
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("fp32", "bf16"):
        raise UsageError(f"environment variable {PRECISION_ENV}: unknown value {value!r}; "
                         "choose from fp32, bf16, auto")
    return value


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> `$PIX3D_PRECISION` when set; else 'bf16' where the hardware runs it fast (CUDA
    with bf16, CPU with AMX or AVX512-BF16), else 'fp32'. Explicit 'fp32' / 'bf16' are kept."""
    if precision != "auto":
        return precision
    forced = forced_precision()
    if forced is not None:
        return forced
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def pose_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """CE(azimuth) + CE(elevation) + CE(in-plane); logits B x 3 x N_BINS, targets B x 3."""
    per_head = F.cross_entropy(logits.float().permute(0, 2, 1), targets, reduction="none")  # B x 3
    per_sample = per_head.sum(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample


def train_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled positions 0..n-1 in batches; a trailing batch of one joins the previous one
    (BatchNorm cannot normalise a single sample whose last feature map is 1 x 1)."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


# ----------------------------------------------------------------------------- evaluation

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
def _predict(model: nn.Module, source: BatchSource, indices: torch.Tensor, precision: str,
             batch_size: int = 128, shuffle: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
        with _autocast(source.device, precision):
            logits = model(source.inputs(idx))
        logits_out[positions] = logits.float().cpu()
        losses_out[positions] = pose_loss(logits, source.targets(idx), reduction="none").float().cpu()
    return logits_out, losses_out


@torch.no_grad()
def _evaluate(model: nn.Module, source: BatchSource, indices: torch.Tensor, precision: str,
              batch_size: int = 128, *, shuffle: torch.Generator | None = None,
              azimuth_deg: np.ndarray | None = None, azimuth_centres: np.ndarray | None = None,
              categories: Sequence[str] | None = None) -> dict:
    """Validation metrics. With the true azimuths (degrees, all cache rows) and the bin
    centres, also MedErr and Acc@pi/6; with `categories` (all cache rows), per-category ones."""
    logits, losses = _predict(model, source, indices, precision, batch_size, shuffle)
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


def evaluate(model: nn.Module, data, indices, bins: Bins, *, modalities, norm: dict,
             precision: str = "fp32", channels_last: bool = False, device: str | torch.device = "cpu",
             train_indices=None, batch_size: int = 128) -> dict:
    """Per-head accuracy, circular within-one-bin azimuth accuracy, loss and azimuth confusion
    of `model` on `data[indices]`; with `train_indices`, also the majority baseline."""
    device = torch.device(device)
    labels = bins.labels(data.azimuth, data.elevation, data.inplane)
    source = BatchSource(data.images, labels, modalities, norm, device, channels_last)
    indices = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
    centres = bins.centres("azimuth")
    metrics = _evaluate(model.to(device), source, indices, precision, batch_size,
                        azimuth_deg=data.azimuth, azimuth_centres=centres, categories=data.categories)
    if train_indices is not None:
        metrics.update(majority_baseline(labels[np.asarray(train_indices)], labels[indices.numpy()]))
        metrics.update(majority_angle_baseline(labels[np.asarray(train_indices)],
                                               data.azimuth[indices.numpy()], centres))
    return metrics


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: str | Path, checkpoint: dict) -> Path:
    """torch.save to a temp file beside `path`, then os.replace: never a half-written file.

    Serialised in memory first: torch's zip writer turns a full disk into an opaque
    RuntimeError, a plain write gives ENOSPC, which atomic_path reports naming the path."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    check_free_space(path, buffer.getbuffer().nbytes)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by save_checkpoint (tensors and plain types only)."""
    path = Path(path)
    if not path.is_file():
        raise Pix3DError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or not a torch file
        raise Pix3DError(f"checkpoint {path} cannot be read: {exc.__class__.__name__}: {one_line(exc)}") from None
    missing = {"model", "optimizer", "scheduler", "epoch", "rng", "config"} - set(checkpoint if isinstance(checkpoint, dict) else {})
    if missing:
        raise Pix3DError(f"checkpoint {path} is not a pix3d.train checkpoint (missing {', '.join(sorted(missing))})")
    return checkpoint


def config_differences(a: dict, b: dict, ignore=RESUME_FREE_KEYS) -> list[str]:
    """Keys whose values differ between two config dicts (lists and tuples compare equal)."""
    keys = sorted((set(a) | set(b)) - set(ignore))
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return [k for k in keys if norm(a.get(k)) != norm(b.get(k))]


# ----------------------------------------------------------------------------- the run

def fit(config: TrainConfig, data, *, on_epoch: Callable[[dict, dict], None] | None = None,
        resume_from: dict | str | Path | None = None, progress: bool = False,
        log: Callable[[str], None] | None = None) -> dict:
    """Train `config.model` on `data` (a PreparedData) and return config, history and final metrics.

    `on_epoch(metrics, checkpoint)` runs after every epoch with the full state (ready for
    torch.save). `resume_from` (a checkpoint dict or path) continues that run exactly; a
    checkpoint from another config raises naming the differing keys.
    """
    if not isinstance(config, TrainConfig):
        raise Pix3DError(f"fit() needs a TrainConfig, got {type(config).__name__}")
    if data.image_size != config.image_size:
        raise Pix3DError(
            f"data was prepared at {data.image_size} px but config key 'image_size' is "
            f"{config.image_size}; prepare the data at {config.image_size} px"
        )
    check_modalities(config.modalities, data.available)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    shuffle = seed_everything(config.seed)

    checkpoint_in = None
    if resume_from is not None:
        checkpoint_in = load_checkpoint(resume_from) if isinstance(resume_from, (str, Path)) else resume_from
        differing = config_differences(checkpoint_in["config"], config.to_dict())
        if differing:
            shown = ", ".join(f"{k} ({checkpoint_in['config'].get(k)!r} vs {getattr(config, k, None)!r})" for k in differing)
            raise Pix3DError(f"checkpoint is from another config; differing keys: {shown}")

    # Split, optional training cap, bins fitted on the training split only.
    train_idx, val_idx = split_indices(config.split, data.categories, data.model_ids,
                                       seed=config.seed, val_fraction=config.val_fraction)
    if config.max_train_images and len(train_idx) > config.max_train_images:
        keep = np.random.default_rng(config.seed).choice(len(train_idx), config.max_train_images, replace=False)
        train_idx = np.sort(train_idx[keep])
    if len(train_idx) < 2 or len(val_idx) < 1:
        raise Pix3DError(f"split {config.split!r} left {len(train_idx)} training and {len(val_idx)} validation images; need >= 2 and >= 1")
    bins = fit_bins(config.bins, data.azimuth[train_idx], data.elevation[train_idx], data.inplane[train_idx])
    labels = bins.labels(data.azimuth, data.elevation, data.inplane)
    baseline = majority_baseline(labels[train_idx], labels[val_idx])
    azimuth_centres = bins.centres("azimuth")
    baseline.update(majority_angle_baseline(labels[train_idx], data.azimuth[val_idx], azimuth_centres))

    channels = modality_channels(config.modalities)
    train_t = torch.as_tensor(train_idx, dtype=torch.int64)
    val_t = torch.as_tensor(val_idx, dtype=torch.int64)
    if checkpoint_in is not None and checkpoint_in.get("norm") is not None:
        norm = checkpoint_in["norm"]  # the statistics the checkpointed weights were trained with
    elif config.seed_quirks:
        norm = {"channels": channels, "mean": [0.0] * len(channels), "std": [1.0] * len(channels), "scale": "raw"}
    else:
        norm = channel_stats(ModalityView(data.images, config.modalities).images, train_t, channels)
    # Built once: on CUDA it copies the trial's channels of the whole cache to the GPU.
    source = BatchSource(data.images, labels, config.modalities, norm, device, config.channels_last)

    model = get_model(config.model, config.modalities, image_size=config.image_size, seed_quirks=config.seed_quirks)
    model = model.to(device, memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # Created in both schedules (the notebook created it too); stepped only under "step".
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)

    history: list[dict] = []
    best = 0.0
    start_epoch = 0
    if checkpoint_in is not None:
        if checkpoint_in.get("bins") is not None and Bins.from_dict(checkpoint_in["bins"]).to_dict() != bins.to_dict():
            raise Pix3DError("checkpoint bins differ from the bins fitted on this data; is it another dataset?")
        model.load_state_dict(checkpoint_in["model"])
        optimizer.load_state_dict(checkpoint_in["optimizer"])
        scheduler.load_state_dict(checkpoint_in["scheduler"])
        _set_rng_state(checkpoint_in["rng"], shuffle)
        history = [dict(m) for m in checkpoint_in.get("history", [])]
        best = float(checkpoint_in.get("best", 0.0))
        start_epoch = int(checkpoint_in["epoch"])

    for epoch in range(start_epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        lr_now = optimizer.param_groups[0]["lr"]
        loss_sum, seen = torch.zeros((), dtype=torch.float64), 0
        batches = train_batches(len(train_t), config.batch_size, shuffle)
        bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=not progress, unit="batch")
        for step, positions in enumerate(bar, start=1):
            idx = train_t[positions]
            x, y = source.inputs(idx), source.targets(idx)
            with _autocast(device, precision):
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
        train_time = time.perf_counter() - started
        if config.lr_schedule == "step":
            scheduler.step()

        metrics = {"epoch": epoch, "train_loss": float(loss_sum) / seen}
        val_shuffle = None
        if config.seed_quirks:
            # The notebook validated in shuffled batches of the training batch size; with the
            # batch-mixing concatenation a prediction depends on its batch mates, so sorted
            # batches of 128 (neighbouring, same-category rows) would not be what it measured.
            # Its own generator (seed, epoch): the training shuffle and resume stay exact.
            val_shuffle = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        val = _evaluate(model, source, val_t, precision,
                        config.batch_size if config.seed_quirks else 128, shuffle=val_shuffle,
                        azimuth_deg=data.azimuth, azimuth_centres=azimuth_centres,
                        # Per-category numbers at the end of the trial only (not per epoch).
                        categories=data.categories if epoch == config.epochs else None)
        confusion = val.pop("val_azimuth_confusion")
        metrics.update(val)
        metrics.update(baseline)
        best = max(best, metrics["val_azimuth_acc"])
        metrics.update({
            "best_val_azimuth_acc": best, "lr": lr_now, "images_per_s": seen / train_time,
            "epoch_time_s": time.perf_counter() - started, "n_train": len(train_idx), "n_val": len(val_idx),
            # Which arithmetic actually ran ('auto' resolves per machine): provenance for the run.
            "bf16_autocast": 1.0 if precision == "bf16" else 0.0,
            "val_azimuth_confusion": confusion,
        })
        history.append(metrics)
        if log is not None:
            log(format_metrics(metrics, config.epochs))
        if on_epoch is not None:
            checkpoint = {
                # Deep copies: the caller may keep the dict while training goes on.
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": _to_cpu(copy.deepcopy(optimizer.state_dict())),
                "scheduler": copy.deepcopy(scheduler.state_dict()),
                "epoch": epoch,
                "rng": _rng_state(shuffle),
                "config": config.to_dict(),
                "bins": bins.to_dict(),
                "norm": norm,
                "history": copy.deepcopy(history),
                "best": best,
            }
            on_epoch(dict(metrics), checkpoint)

    if not history:
        raise Pix3DError(f"nothing to train: the checkpoint is at epoch {start_epoch} and epochs is {config.epochs}")
    return {"config": config.to_dict(), "history": history, "final": history[-1]}


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def format_metrics(m: dict, epochs: int) -> str:
    """One line per epoch for humans."""
    return (
        f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
        f"az {m['val_azimuth_acc']:.3f} (+-1 bin {m['val_azimuth_acc_within1']:.3f}, majority "
        f"{m['majority_azimuth_acc']:.3f}; MedErr {m.get('val_azimuth_mederr', math.nan):.1f} deg, "
        f"Acc@pi/6 {m.get('val_azimuth_acc_pi6', math.nan):.3f})  el {m['val_elevation_acc']:.3f}  ip {m['val_inplane_acc']:.3f}  "
        f"lr {m['lr']:.1e}  {m['images_per_s']:.0f} img/s  {m['epoch_time_s']:.1f}s"
    )


# ----------------------------------------------------------------------------- CLI

def get_args_parser():
    from pix3d.cli import ArgumentParser, nonnegative_int, positive_float, positive_int

    p = ArgumentParser(prog="python -m pix3d.train", description="Train one pose classifier on a prepared Pix3D cache.")
    p.add_argument("--model", default="combined_net", help=f"one of {', '.join(list_models())}")
    p.add_argument("--modalities", default="rgb", help="comma- or plus-separated, e.g. rgb,mask")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: the model's published lr)")
    p.add_argument("--data", default="synthetic", help="Pix3D folder (with pix3d.json) or 'synthetic'")
    p.add_argument("--cache", type=Path, default=None, help="cache root (default $PIX3D_CACHE or ~/.cache/pix3d-pose)")
    p.add_argument("--budget", default="auto", choices=["auto", *BUDGETS], help="auto = paper on a GPU, quick on CPU")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--image-size", type=int, default=None, help="override the budget's image size")
    p.add_argument("--max-train-images", type=nonnegative_int, default=None, help="override the budget's cap (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default=None)
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed-quirks", action="store_true", help="reproduce the published code's quirks")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="step")
    p.add_argument("--bins", default="seed", help=f"one of {', '.join(BIN_SCHEMES)}")
    p.add_argument("--split", default="seed", help="seed | random | by_model")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<model>-<modalities>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args) -> tuple[TrainConfig, str]:
    """CLI options over the budget's overrides over the defaults -> (TrainConfig, budget message)."""
    _, overrides, message = resolve_budget(args.budget)
    try:
        modalities = parse_modalities(args.modalities)
    except ValueError as exc:
        raise UsageError(f"--modalities: {exc}") from None
    if args.model not in list_models():
        raise UsageError(f"--model: unknown model {args.model!r}; choose from {', '.join(list_models())}")
    for option in ("lr", "epochs", "batch_size", "threads", "image_size"):
        value = getattr(args, option)
        if value is not None and not value > 0:
            raise UsageError(f"--{option.replace('_', '-')} must be positive, got {value}")
    explicit = {
        "epochs": args.epochs, "batch_size": args.batch_size, "image_size": args.image_size,
        "precision": args.precision, "channels_last": args.channels_last, "threads": args.threads,
    }
    d = {**overrides, **{k: v for k, v in explicit.items() if v is not None}}
    if args.max_train_images is not None:
        d["max_train_images"] = args.max_train_images or None
    d.update(model=args.model, modalities=modalities, seed=args.seed, device=args.device,
             seed_quirks=args.seed_quirks, lr_schedule=args.lr_schedule, bins=args.bins, split=args.split,
             lr=args.lr if args.lr is not None else published_lr(args.model))
    try:
        return TrainConfig.from_dict(d), message
    except Pix3DError as exc:
        raise UsageError(str(exc).replace("config key '", "option '")) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    config, message = config_from_args(args)
    out = args.out or Path("runs") / f"{config.model}-{modalities_key(config.modalities)}-s{config.seed}"
    checkpoint_path, history_path = out / "checkpoint.pt", out / "history.json"
    resume_from = None
    if args.resume:
        if not checkpoint_path.is_file():
            raise UsageError(f"--resume: no checkpoint at {checkpoint_path}")
        resume_from = load_checkpoint(checkpoint_path)
    elif checkpoint_path.exists():
        raise UsageError(f"{checkpoint_path} exists; pass --resume to continue it or choose another --out")
    ensure_writable_dir(out, "--out")  # now, not after the first epoch

    from pix3d.data.prepare import prepare

    print(message, flush=True)
    data = prepare(args.data, config.image_size, cache_dir=args.cache, progress=not args.no_progress)
    print(f"training {config.model} on {modalities_key(config.modalities)} (lr {config.lr:g}, "
          f"{config.epochs} epochs, batch {config.batch_size}, {config.image_size} px, "
          f"{resolve_precision(config.precision, resolve_device(config.device))} (precision {config.precision}), "
          f"device {resolve_device(config.device)}) -> {out}", flush=True)

    def save(metrics: dict, checkpoint: dict) -> None:
        save_checkpoint(checkpoint_path, checkpoint)
        write_json(history_path, {"config": config.to_dict(), "data": data.manifest, "history": checkpoint["history"]})

    started = time.perf_counter()
    result = fit(config, data, on_epoch=save, resume_from=resume_from, progress=not args.no_progress,
                 log=lambda line: print(line, flush=True))
    final = result["final"]
    print(
        f"done in {time.perf_counter() - started:.1f}s: val azimuth acc {final['val_azimuth_acc']:.3f} "
        f"(best {final['best_val_azimuth_acc']:.3f}, majority baseline {final['majority_azimuth_acc']:.3f}, "
        f"+-1 bin {final['val_azimuth_acc_within1']:.3f}); wrote {checkpoint_path} and {history_path}"
    )
    return 0


if __name__ == "__main__":
    from pix3d.cli import run_cli

    run_cli(main)
