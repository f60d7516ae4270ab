"""What one relative-pose run is: `RelPoseConfig`, the losses and schedules it knows, and the
sweep budgets (`BUDGETS`: the pair set each trial trains on, and the training settings)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pix3d.errors import Pix3DError
from relpose.models import BACKBONES, FUSIONS

LOSSES = ("photometric", "pose")
LR_SCHEDULES = ("none", "cosine")

# Sweep budgets (search.run's `fusion` grid): the pair set each trial trains on, and the
# training settings. Sized on the shared 2-core CPU (issue 14; docs/results.md, fusion budget),
# early fusion, pose loss, from scratch: the loss sits at the no-motion error for the first
# ~10,000 pair passes, then falls. 64 px learned as fast per epoch as 96 px (0.93x no motion
# at epoch 5 both) at a third of the cost (~50 pairs/s per core). Held-out models are what
# limits it: with 6 models per category the run overfit and stopped at 0.79x (train loss
# still falling), with 20 models per category the same 28,500 pair passes reached 0.69x. A
# cosine decay settles the last epochs (constant-lr curves moved +-0.05x epoch to epoch);
# lr 1e-3 sometimes never left the plateau (2 of 4 runs), 3e-4 left it in every run.
BUDGETS: dict[str, dict] = {
    "quick": {"pairs": {"n": 4800, "size": 64, "max_orbit_deg": 30.0, "models_per_category": 20},
              "train": {"epochs": 7, "batch_size": 16, "lr": 3e-4, "lr_schedule": "cosine"}},
    # What a 2-core CPU shared by several jobs (~4 pairs/s per trial, issue 28) can measure in
    # an hour for the early-fusion trials of `fusion_cpu`: ~3,400 pair passes per trial, well
    # inside the plateau above, so it says whether a loss can be gamed, not whether it learns
    # (`fusion_cpu` at `quick` is what learns: docs/relpose.md).
    "cpu": {"pairs": {"n": 1200, "size": 64, "max_orbit_deg": 30.0, "models_per_category": 20},
            "train": {"epochs": 4, "batch_size": 16, "lr": 3e-4, "lr_schedule": "cosine"}},
    "paper": {"pairs": {"n": 8000, "size": 128, "max_orbit_deg": 30.0, "models_per_category": 20},
              "train": {"epochs": 20, "batch_size": 32, "lr": 3e-4, "lr_schedule": "cosine"}},
}


@dataclass
class RelPoseConfig:
    fusion: str = "early"
    loss: str = "photometric"
    weights: str | None = None  # None | "imagenet" | a state_dict path
    freeze_backbone: bool = False
    backbone: str = "resnet18"  # relpose.models.BACKBONES
    lr: float = 1e-4
    lr_schedule: str = "none"  # "cosine": per step from lr down to 0 at the last step
    batch_size: int = 16
    epochs: int = 6
    val_fraction: float = 0.15
    test_fraction: float = 0.15  # models held out of training and validation (PairData.test_models)
    seed: int = 0
    threads: int | None = None
    device: str = "auto"

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise Pix3DError(f"config key 'fusion': unknown value {self.fusion!r}; choose from {', '.join(FUSIONS)}")
        if self.loss not in LOSSES:
            raise Pix3DError(f"config key 'loss': unknown value {self.loss!r}; choose from {', '.join(LOSSES)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise Pix3DError(f"config key 'lr_schedule': unknown value {self.lr_schedule!r}; "
                             f"choose from {', '.join(LR_SCHEDULES)}")
        for key in ("lr", "batch_size", "epochs"):
            if getattr(self, key) <= 0:
                raise Pix3DError(f"config key {key!r} must be positive, got {getattr(self, key)}")
        if not 0 < self.val_fraction < 1:
            raise Pix3DError(f"config key 'val_fraction' must lie in (0, 1), got {self.val_fraction}")
        if not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise Pix3DError(f"config key 'test_fraction' must lie in [0, 1) and leave training models "
                             f"beside val_fraction {self.val_fraction}, got {self.test_fraction}")
        if self.backbone not in BACKBONES:
            raise Pix3DError(f"config key 'backbone': unknown value {self.backbone!r}; choose from {', '.join(BACKBONES)}")

    @classmethod
    def from_dict(cls, d: dict) -> "RelPoseConfig":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise Pix3DError(f"unknown config key {unknown[0]!r}")
        return cls(**d)

