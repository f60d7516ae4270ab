"""What a run is: `TrainConfig` and its checks, the budgets, and which keys a resume may change.

Owns the config's fields and validation (wrong types and bad values raise Pix3DError naming
the key), `config_differences` (what makes a checkpoint another run's), and the named
budgets (`paper`, `quick`, `cpu`) that `resolve_budget` turns into config overrides.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from pix3d.constants import Modalities
from pix3d.data.splits import SPLITS
from pix3d.errors import RENAMED, Pix3DError, UsageError, current_name
from pix3d.models import list_models, quirk_set, quirks_value
from pix3d.data.pose import BIN_SCHEMES

PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("step", "none")

# Keys that do not change what a run computes: a resumed run may differ in them.
RESUME_FREE_KEYS = frozenset({"epochs", "threads", "device"})


@dataclass
class TrainConfig:
    """Everything that determines one run's result (plus `threads`/`device`, which do not).

    Construction validates: wrong types and bad values raise Pix3DError naming the key.
    """

    model: str = "combined_net"
    # Parsed here once (from "rgb+mask", a list or a tuple); below the config every consumer
    # reads the typed subset, its key and its channels (pix3d.constants.Modalities).
    modalities: Modalities = Modalities(("rgb",))
    lr: float = 1e-5
    batch_size: int = 10
    epochs: int = 25
    weight_decay: float = 0.0
    lr_schedule: str = "step"  # "step": StepLR stepped each epoch | "none": as the notebook ran
    step_size: int = 3
    gamma: float = 0.1
    bins: str = "published"
    split: str = "published"
    val_fraction: float = 0.1
    seed: int = 0
    image_size: int = 224
    precision: str = "fp32"
    channels_last: bool = False
    threads: int | None = None
    device: str = "auto"
    # The published code's quirks (pix3d.models.QUIRKS): True = all four, False = none, or
    # a "+"-joined list switching some alone (canonicalised: all / none become True / False).
    seed_quirks: bool | str = False
    # At most this many training images (a seeded subset of the training split; validation
    # is untouched). None = all. Lets the CPU budget trade images for epochs.
    max_train_images: int | None = None
    # Train and validate on this category's images only (the published notebook's per-category
    # training, its cell 11; the `per_category` grid); None = every category.
    category: str | None = None

    def __post_init__(self) -> None:
        """Check types, canonicalise the modalities, then check the values."""
        _check_types(self)
        self.bins, self.split = _current_names(self.bins, self.split)
        self.seed_quirks = quirks_value(self.seed_quirks)
        try:
            self.modalities = Modalities(self.modalities)
        except ValueError as exc:
            raise Pix3DError(f"config key 'modalities': {exc}") from None
        _check_numbers(self)
        _check_choices(self)

    def has_quirk(self, name: str) -> bool:
        """Whether the published code's quirk `name` (pix3d.models.QUIRKS) is switched on."""
        return name in quirk_set(self.seed_quirks)

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
        """A validated copy with `changes` applied."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def _check_types(config: TrainConfig) -> None:
    """Reject wrong types by the field annotations (ints for floats are fine, bools are not)."""
    expected = {
        "model": (str,), "lr": (float, int), "batch_size": (int,), "epochs": (int,),
        "weight_decay": (float, int), "lr_schedule": (str,), "step_size": (int,),
        "gamma": (float, int), "bins": (str,), "split": (str,), "val_fraction": (float, int),
        "seed": (int,), "image_size": (int,), "precision": (str,), "channels_last": (bool,),
        "threads": (int, type(None)), "device": (str,), "seed_quirks": (bool, str),
        "max_train_images": (int, type(None)), "modalities": (str, list, tuple), "category": (str, type(None)),
    }
    for key, types in expected.items():
        value = getattr(config, key)
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise Pix3DError(f"config key {key!r} must be {names}, got {type(value).__name__} {value!r}")
    for key in ("lr", "weight_decay", "gamma", "val_fraction"):
        setattr(config, key, float(getattr(config, key)))


def _check_numbers(config: TrainConfig) -> None:
    """Positive sizes and rates, a finite lr, a validation fraction inside (0, 1)."""
    for key in ("lr", "batch_size", "epochs", "step_size", "gamma", "image_size"):
        if not getattr(config, key) > 0:
            raise Pix3DError(f"config key {key!r} must be positive, got {getattr(config, key)!r}")
    if not math.isfinite(config.lr):
        raise Pix3DError(f"config key 'lr' must be finite, got {config.lr!r}")
    if config.weight_decay < 0:
        raise Pix3DError(f"config key 'weight_decay' must be >= 0, got {config.weight_decay!r}")
    if not 0 < config.val_fraction < 1:
        raise Pix3DError(f"config key 'val_fraction' must lie in (0, 1), got {config.val_fraction!r}")
    for key in ("threads", "max_train_images"):
        value = getattr(config, key)
        if value is not None and value <= 0:
            raise Pix3DError(f"config key {key!r} must be positive or None, got {value!r}")


def _check_choices(config: TrainConfig) -> None:
    """Names (model, precision, schedule, bins, split, device) that must be known ones."""
    choices = {
        "model": tuple(list_models()),
        "precision": PRECISIONS,
        "lr_schedule": LR_SCHEDULES,
        "bins": tuple(BIN_SCHEMES),
        "split": tuple(SPLITS),
    }
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise Pix3DError(
                f"config key {key!r}: unknown value {getattr(config, key)!r}; choose from {', '.join(allowed)}"
            )
    if not (config.device in ("auto", "cpu", "cuda") or config.device.startswith("cuda:")):
        raise Pix3DError(f"config key 'device': unknown value {config.device!r}; choose from auto, cpu, cuda, cuda:N")


def _current_names(bins: str, split: str) -> tuple[str, str]:
    """The scheme names of today ("seed" -> "published", with a one-line warning)."""
    return current_name("bin scheme", bins), current_name("split", split)


def config_differences(a: dict, b: dict, ignore=RESUME_FREE_KEYS) -> list[str]:
    """Keys whose values differ between two config dicts (lists and tuples compare equal; an
    old scheme name equals its new one, so checkpoints saved before the rename resume)."""
    keys = sorted((set(a) | set(b)) - set(ignore))

    def norm(key: str, value):
        if key in ("bins", "split") and value in RENAMED:
            return RENAMED[value]
        return list(value) if isinstance(value, (list, tuple)) else value
    return [k for k in keys if norm(k, a.get(k)) != norm(k, b.get(k))]


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
    # The smallest budget in which a model learns on a CPU, sized with benchmarks/bench_learning.py
    # on a 2-core AMD EPYC (AVX2, fp32; docs/results.md "Sizing the cpu budget"): 3 epochs over 1,300
    # training images (3,900 image passes) at a constant lr, batches of 32 (at lr 1e-3 they
    # helped combined_net: 1.6x the majority after one epoch against 1.3x with batches of 10).
    # At lr 1e-3 on RGB+mask, separate_net reaches ~2x the majority baseline and combined_net
    # ~1.8x (docs/results.md); combined_net's conv(64->256, 7) costs ~3.2 GFLOP per training image, ~70 ms
    # of a core at 88% of its fp32 peak, and the ablation (16 trials, 2 seeds) took 26 minutes.
    "cpu": {"image_size": 64, "epochs": 3, "batch_size": 32, "precision": "auto",
            "channels_last": True, "max_train_images": 1300, "lr_schedule": "none"},
}


def resolve_budget(name: str) -> tuple[str, dict, str]:
    """'auto' | 'paper' | 'quick' | 'cpu' -> (resolved name, config overrides, a line saying why)."""
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
