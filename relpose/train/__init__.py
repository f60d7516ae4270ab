"""Training of the relative-pose study, split by phase as `pix3d.train` is (no Ray here).

    python -m relpose.train --fusion early --loss photometric --weights imagenet

The package, by concern:

- `config`: `RelPoseConfig` and its checks, `LOSSES`, `LR_SCHEDULES`, the sweep `BUDGETS`.
- `batches`: `PairTensors` (the uint8 pair arrays -> float batches on the device).
- `loss`: `photometric_l1`, `pose_errors`, `loss_fn`.
- `evaluation`: `baselines` (identity and true motion) and `evaluate` (the model).
- `loop`: `fit`.
- `plots`: `plot_history`.
- `cli` (and `__main__`): the `python -m relpose.train` command.

Imported here, the API that trainables, search and the tests use.
"""

from __future__ import annotations

from relpose.train.batches import PairTensors
from relpose.train.cli import get_args_parser, main
from relpose.train.config import BUDGETS, LOSSES, LR_SCHEDULES, RelPoseConfig
from relpose.train.evaluation import baselines, evaluate
from relpose.train.loop import fit
from relpose.train.loss import loss_fn, photometric_l1, pose_errors
from relpose.train.plots import plot_history

__all__ = ["BUDGETS", "LOSSES", "LR_SCHEDULES", "PairTensors", "RelPoseConfig", "baselines", "evaluate", "fit",
           "get_args_parser", "loss_fn", "main", "photometric_l1", "plot_history", "pose_errors"]
