"""The Ray Tune trainable of the relative-pose study: a Tune config -> `RelPoseConfig` ->
`relpose.train.fit` -> reports, with a checkpoint each epoch.

As thin as `trainables.pose`: training lives in `relpose.train` (no Ray there). Wrap it as
`tune.with_parameters(train_relpose, data=pairs)` so the rendered pair set (a `PairData`) goes
into the object store once per sweep.

Config keys besides `RelPoseConfig` fields:
- `weights`: "scratch" or "imagenet" (the grid's axis). "imagenet" reads the file named by
  `imagenet_weights`, which `search.run` resolves on the driver before anything starts.
- `pairs_n`, `pairs_size`, `pairs_max_orbit_deg`, `pairs_models_per_category`: the pair set the sweep rendered; they are in
  the config so MLflow records them, and they must match the data the trial is given.
- `cpus_per_trial`, `gpus_per_trial`, `crash_once_at_epoch`: as in `trainables.pose`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import ray
import torch
from ray import tune

from pix3d.errors import Pix3DError
from trainables.pose import TUNE_ONLY_KEYS, crash_hook

CHECKPOINT_FILE = "checkpoint.pt"
WEIGHT_CHOICES = ("imagenet", "scratch")
PAIR_KEYS = {"pairs_n": "n", "pairs_size": "size", "pairs_max_orbit_deg": "max_orbit_deg",
             "pairs_models_per_category": "models_per_category"}


def relpose_config_from_tune(config: Mapping[str, Any]):
    """Tune config -> RelPoseConfig: weights axis -> a path or None, threads = the CPU share."""
    from relpose.train import RelPoseConfig

    fields = {k: v for k, v in config.items()
              if k not in TUNE_ONLY_KEYS and k not in PAIR_KEYS and k != "imagenet_weights"}
    weights = fields.get("weights", "scratch")
    if weights not in WEIGHT_CHOICES:
        raise Pix3DError(f"config key 'weights': unknown value {weights!r}; choose from {', '.join(WEIGHT_CHOICES)}")
    if weights == "imagenet":
        if not config.get("imagenet_weights"):
            raise Pix3DError("config key 'weights' is 'imagenet' but 'imagenet_weights' (the file) is not set")
        fields["weights"] = str(config["imagenet_weights"])
    else:
        fields["weights"] = None
    cpus = config.get("cpus_per_trial")
    if fields.get("threads") is None and cpus:
        fields["threads"] = max(1, int(cpus))
    if fields.get("device", "auto") == "auto" and not config.get("gpus_per_trial"):
        fields["device"] = "cpu"
    return RelPoseConfig.from_dict(fields)


def check_pairs(config: Mapping[str, Any], data) -> None:
    """The pair settings in the config are those of the data the trial was given."""
    for key, field in PAIR_KEYS.items():
        if key in config and float(config[key]) != float(data.config[field]):
            raise Pix3DError(f"config key {key!r} is {config[key]} but the pair set has {field}={data.config[field]}")


def train_relpose(config: dict, data=None) -> None:
    """Function trainable: one relative-pose training run, reported epoch by epoch."""
    from pix3d.train import save_checkpoint
    from relpose.train import fit

    if data is None:
        raise Pix3DError("train_relpose needs the pair set: wrap it with tune.with_parameters(train_relpose, data=...)")
    check_pairs(config, data)
    relpose_config = relpose_config_from_tune(config)
    node_id = ray.get_runtime_context().get_node_id()
    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            # weights_only: a checkpoint in (possibly shared) storage is data, never code to run.
            resume_from = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        if int(resume_from["epoch"]) >= relpose_config.epochs:
            return  # reported in full before the driver died: nothing left to train
    resumed_from_epoch = int(resume_from["epoch"]) if resume_from is not None else 0

    maybe_crash = crash_hook(config, resumed_from_epoch)

    def on_epoch(metrics: dict, state: dict) -> None:
        maybe_crash(int(metrics["epoch"]))
        report = {**metrics, "node_id": node_id, "resumed_from_epoch": resumed_from_epoch}
        with tempfile.TemporaryDirectory(prefix="relpose-ckpt-") as directory:
            save_checkpoint(os.path.join(directory, CHECKPOINT_FILE), state)  # a full disk: one line
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))

    fit(relpose_config, data, on_epoch=on_epoch, resume_from=resume_from)
