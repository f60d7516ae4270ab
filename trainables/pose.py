"""The Ray Tune trainable: a Tune config -> `TrainConfig` -> `pix3d.train.fit` -> reports.

Thin on purpose: everything about training lives in `pix3d.train` (no Ray there). This
module only translates the config, shares the prepared cache, reports each epoch with a
checkpoint and resumes from one.

Wrap it as `tune.with_parameters(train_pose, data=prepared)`: Ray puts the cache in the
object store once per sweep and every trial maps the same read-only arrays (numpy buffers
deserialize zero-copy), instead of pickling ~GBs into each trial's config.

Testing aid (documented, used by the fault-tolerance tests): a config key
`crash_once_at_epoch: N` (N >= 2) raises right before epoch N is reported, in an attempt that
started from scratch; the retry restores the epoch N-1 checkpoint and goes on, so Tune's retry
can be seen to resume without repeating epochs. "Once" is decided by the restored checkpoint,
not by a file: the trial directory an attempt sees differs between a fresh actor and a reused
one (Ray 2.60: `driver_artifacts/` vs `working_dirs/`), so a marker file there was missed
whenever the retry landed on a reused actor, and the trial crashed twice. A marker file is
still written where the crash happened, for a reader of the trial folder.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import ray
from ray import tune

from pix3d.errors import Pix3DError
# At module level on purpose: a trial's actor imports this module (and so torch) when it loads
# the trainable, before Tune's clock starts the trial; with actor reuse that is once per actor.
from pix3d.train import TrainConfig, fit, load_checkpoint, save_checkpoint

CHECKPOINT_FILE = "checkpoint.pt"
CRASH_MARKER = "crashed_once.marker"

# Keys a Tune config may carry that are not TrainConfig fields: resources and testing aids.
# `cell`: which cell of a grid with extra cells (search.grids) the trial is; its keys are in the config.
TUNE_ONLY_KEYS: frozenset[str] = frozenset({"cpus_per_trial", "gpus_per_trial", "crash_once_at_epoch", "cell"})


class InjectedCrash(RuntimeError):
    """Raised by the `crash_once_at_epoch` testing aid."""


def train_config_from_tune(config: Mapping[str, Any]):
    """Tune config -> TrainConfig: strip Tune-only keys, threads = the trial's CPU share.

    Torch threads follow `cpus_per_trial` so that concurrent trials on one node don't each
    start a thread per core and oversubscribe it. A trial without GPUs is pinned to the CPU
    even on a GPU node: its GPU belongs to other trials.
    """
    fields = {k: v for k, v in config.items() if k not in TUNE_ONLY_KEYS}  # "rgb+mask" parses in TrainConfig
    cpus = config.get("cpus_per_trial")
    if fields.get("threads") is None and cpus:
        fields["threads"] = max(1, int(cpus))
    if fields.get("device", "auto") == "auto" and not config.get("gpus_per_trial"):
        fields["device"] = "cpu"
    elif fields.get("device", "auto") == "auto":
        # Given GPUs: train on CUDA or fail (check_trial_device), never fall back to the CPU.
        fields["device"] = "cuda"
    return TrainConfig.from_dict(fields)


def check_trial_device(config: Mapping[str, Any], train_config) -> dict:
    """Before any training: a trial given GPUs must see CUDA (unless it simulates them on the
    CPU, `device: cpu`). Returns where it runs (pix3d.devices.placement) for its reports."""
    import socket

    from pix3d.devices import placement, require_cuda

    gpus = float(config.get("gpus_per_trial") or 0)
    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    if gpus > 0 and train_config.device != "cpu":
        require_cuda(node, gpus)
    gpu_ids = ray.get_gpu_ids() if gpus > 0 else []
    return placement(train_config.device, gpus=gpus, gpu_ids=gpu_ids, node=node,
                     simulated=gpus > 0 and train_config.device == "cpu")


def _restore_state() -> dict | None:
    """The latest checkpoint Tune hands this trial (after a retry or --resume), or None."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_checkpoint(Path(directory) / CHECKPOINT_FILE)


def crash_hook(config: Mapping[str, Any], resumed_from_epoch: int) -> Callable[[int], None]:
    """The `crash_once_at_epoch` testing aid (see the module docstring), checked once before any
    training: a callable for each epoch that crashes before `epoch` is reported, and only in an
    attempt that restored no checkpoint (`resumed_from_epoch` 0)."""
    crash_at = config.get("crash_once_at_epoch")
    if crash_at is None or resumed_from_epoch > 0:
        return lambda epoch: None
    if int(crash_at) < 2:
        # At epoch 1 there is no checkpoint yet: every retry would start from scratch and crash.
        raise Pix3DError(f"crash_once_at_epoch must be >= 2 (a checkpoint to retry from), got {crash_at}")

    def maybe_crash(epoch: int) -> None:
        if epoch != int(crash_at):
            return
        marker = Path(tune.get_context().get_trial_dir()) / CRASH_MARKER
        marker.write_text(f"crashed before reporting epoch {epoch}\n")
        raise InjectedCrash(f"testing aid: crash_once_at_epoch={epoch}")

    return maybe_crash


def train_pose(config: dict, data=None) -> None:
    """Function trainable: one pose-classifier training run, reported epoch by epoch."""
    if data is None:
        raise Pix3DError("train_pose needs the prepared data: wrap it with tune.with_parameters(train_pose, data=...)")
    started_at = time.time()
    train_config = train_config_from_tune(config)
    where = check_trial_device(config, train_config)
    node_id = ray.get_runtime_context().get_node_id()
    resume_from = _restore_state()
    if resume_from is not None and int(resume_from["epoch"]) >= train_config.epochs:
        # The driver died after the last epoch was reported but before Tune recorded the
        # trial as finished: there is nothing left to train, and its results are in storage.
        return

    # 0 for a fresh start; the checkpoint's epoch after a retry or --resume (shows restarts).
    resumed_from_epoch = int(resume_from["epoch"]) if resume_from is not None else 0

    maybe_crash = crash_hook(config, resumed_from_epoch)

    def on_epoch(metrics: dict, checkpoint: dict) -> None:
        maybe_crash(int(metrics["epoch"]))
        report = dict(metrics)
        # Where the trial ran (two nodes on one host share hostname and IP, not node id).
        report["node_id"] = node_id
        report["resumed_from_epoch"] = resumed_from_epoch
        # Device kind/name, GPU ids, node, simulation flag, and the arithmetic that ran.
        report.update(where, precision="bf16" if metrics.get("bf16_autocast") else "fp32",
                      started_at=started_at)
        with tempfile.TemporaryDirectory(prefix="pose-ckpt-") as directory:
            save_checkpoint(os.path.join(directory, CHECKPOINT_FILE), checkpoint)
            # ray.tune.report persists the checkpoint to the sweep's storage before returning.
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))

    fit(train_config, data, on_epoch=on_epoch, resume_from=resume_from)
