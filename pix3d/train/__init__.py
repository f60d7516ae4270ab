"""One training run: typed config -> seeded split, bins, normalisation -> Adam loop -> metrics.

Pure PyTorch (no Ray, no MLflow), so one run works from a shell, from tests and from a Tune
trainable alike. The recipe is the published one (Adam, StepLR(3, 0.1), batch 10, 25 epochs,
loss = CE(azimuth) + CE(elevation) + CE(in-plane)); `lr_schedule="none"` reproduces what the
published notebook actually ran (a StepLR that was created and never stepped).

    python -m pix3d.train --model combined_net --modalities rgb,mask --lr 1e-5 --budget quick

The package, by concern:

- `config`: `TrainConfig` and its checks, `BUDGETS` / `resolve_budget`, `config_differences`.
- `precision`: what precision 'auto' means here (`resolve_precision`, `$PIX3D_PRECISION`) and
  `autocast`. (Where a run trains, `resolve_device`, is pix3d.devices'.)
- `batches`: `BatchSource` (the uint8 cache -> normalised float batches on the device),
  `channel_stats`, `train_batches`.
- `evaluation`: `pose_loss`, the majority baselines, `predict` and `evaluate`.
- `checkpoints`: seeding, RNG state, `save_checkpoint` / `load_checkpoint`.
- `state`: `RunState`, set up (or resumed) by `start_run` before the first epoch.
- `loop`: `fit`, `train_one_epoch`, `format_metrics`.
- `cli` (and `__main__`): the `python -m pix3d.train` command.

Imported here, the public API that trainables, benchmarks, search and the CI use; anything
else is imported from its module.
"""

from __future__ import annotations

from pix3d.train.checkpoints import load_checkpoint, save_checkpoint
from pix3d.train.cli import main
from pix3d.train.config import BUDGETS, TrainConfig, resolve_budget
from pix3d.train.evaluation import evaluate, pose_loss
from pix3d.train.loop import fit, train_one_epoch
from pix3d.train.precision import forced_precision, resolve_precision

__all__ = [
    "BUDGETS", "TrainConfig", "evaluate", "fit", "forced_precision", "load_checkpoint", "main",
    "pose_loss", "resolve_budget", "resolve_precision", "save_checkpoint", "train_one_epoch",
]
