"""A real (tiny) Tune trainable and sweep runner shared by the tracking, table and sync tests.

The trainable is a real computation, not canned numbers: softmax regression of the azimuth
bin from noisy (cos, sin) features, where more modalities mean less noise. It reports exactly
the metric names of docs/interfaces.md, including the non-scalar confusion.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ray import tune

from analysis.tracking import MLflowTrackingCallback
from pix3d.constants import N_BINS

EPOCHS = 2
# The MLflow metrics a trial run gets (analysis.run_fields.scalar_metrics: the epoch is the step,
# the scheduled rate and the timings renamed).
METRIC_NAMES = (
    "train_loss", "val_loss", "val_azimuth_acc", "val_elevation_acc", "val_inplane_acc",
    "val_azimuth_acc_within1", "majority_azimuth_acc", "majority_elevation_acc",
    "majority_inplane_acc", "best_val_azimuth_acc", "lr_scheduled", "system/images_per_s",
    "system/epoch_time_s", "headline/val_azimuth_acc", "headline/val_azimuth_mederr", "headline/train_loss",
    "headline/val_loss",
)
BOOKKEEPING = ("epoch", "lr", "training_iteration", "bf16_autocast", "gpus_given", "images_per_s", "n_train", "n_val")
SPLIT_SIZES = {"n_train": 200, "n_val": 40}  # what tiny_pose_epochs trains and validates on: run params


def _softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def tiny_pose_epochs(config):
    """Softmax regression of 8 azimuth bins; yields per epoch the documented metric dict."""
    import time

    rng = np.random.default_rng(int(config["seed"]) * 1000 + len(config["modalities"]))
    n_mod = len(config["modalities"].split("+"))
    noise = 1.2 / n_mod + (0.3 if config["model"] == "separate_net" else 0.0)
    azimuth = rng.uniform(0, 360, 240)
    rad = np.deg2rad(azimuth)
    feats = np.stack([np.cos(rad), np.sin(rad), np.cos(2 * rad), np.sin(2 * rad)], 1)
    feats = np.hstack([feats + rng.normal(0, noise, feats.shape), np.ones((len(feats), 1))])
    labels = np.minimum((azimuth // 45).astype(int), N_BINS - 1)
    train, val = np.arange(200), np.arange(200, 240)
    weights = np.zeros((feats.shape[1], N_BINS))
    majority = np.bincount(labels[train], minlength=N_BINS).argmax()
    best = 0.0
    step_lr = float(config["lr"]) * 1e4  # the sweeps use 1e-5..1e-3; scale to a useful step
    for epoch in range(1, int(config.get("epochs", EPOCHS)) + 1):
        start = time.perf_counter()
        for _ in range(20):
            # Full batch, or with `batch_size` (a grid axis) a seeded minibatch per step.
            batch = (rng.choice(train, int(config["batch_size"]), replace=False)
                     if "batch_size" in config else train)
            probs = _softmax(feats[batch] @ weights)
            probs[np.arange(len(batch)), labels[batch]] -= 1
            weights -= step_lr * feats[batch].T @ probs / len(batch)
        p_train = _softmax(feats[train] @ weights)
        p_val = _softmax(feats[val] @ weights)
        pred = p_val.argmax(1)
        acc = float((pred == labels[val]).mean())
        best = max(best, acc)
        confusion = np.zeros((N_BINS, N_BINS), int)
        np.add.at(confusion, (labels[val], pred), 1)
        circ = np.abs(pred - labels[val]) % N_BINS
        elapsed = max(time.perf_counter() - start, 1e-6)
        yield {
            "epoch": epoch,
            "train_loss": float(-np.log(p_train[np.arange(len(train)), labels[train]] + 1e-9).mean()),
            "val_loss": float(-np.log(p_val[np.arange(len(val)), labels[val]] + 1e-9).mean()),
            "val_azimuth_acc": acc, "val_elevation_acc": 1.0, "val_inplane_acc": acc,
            "val_azimuth_acc_within1": float(np.isin(circ, (0, 1, N_BINS - 1)).mean()),
            "val_azimuth_mederr": float(45.0 * np.median(np.minimum(circ, N_BINS - circ))),
            "majority_azimuth_acc": float((labels[val] == majority).mean()),
            "majority_elevation_acc": 1.0,
            "majority_inplane_acc": float((labels[val] == majority).mean()),
            "best_val_azimuth_acc": best, "lr": float(config["lr"]),
            "images_per_s": len(train) / elapsed, "epoch_time_s": elapsed,
            "val_azimuth_confusion": confusion.tolist(), "n_train": len(train), "n_val": len(val),
        }


def tiny_pose_trainable(config):
    """`tiny_pose_epochs` as a Tune trainable: reports each epoch; fails where configured."""
    for result in tiny_pose_epochs(config):
        tune.report(result)
        epoch = result["epoch"]
        if config.get("fail_at_epoch") == epoch:
            raise RuntimeError(f"planned failure at epoch {epoch}")
        # Fail once (as if the machine went away), succeed when the sweep is resumed.
        marker = config.get("fail_once_marker")
        if marker and config["modalities"] == "rgb+mask" and epoch == 2 and not os.path.exists(marker):
            Path(marker).write_text("failed once")
            raise RuntimeError("interrupted at epoch 2")


def param_space(models=("combined_net", "separate_net"), subsets=("rgb", "rgb+mask"),
                seeds=(0, 1), lrs=None, **extra):
    space = {
        "model": tune.grid_search(list(models)),
        "modalities": tune.grid_search(list(subsets)),
        "seed": tune.grid_search(list(seeds)),
        "epochs": EPOCHS, "seed_quirks": False,
    }
    if lrs is None:
        space["lr"] = 1e-4
    else:
        space["lr"] = tune.grid_search(list(lrs))
    space.update(extra)
    return space


SPLIT_SHA256 = "5e" * 32  # a manifest's published-split hash, as pix3d.data.prepare records it


def run_sweep(storage: Path, name: str, tracking_uri: str, *, experiment: str = "smoke",
              space=None, grid: str = "smoke", manifest=None):
    """One real Tune sweep through the real callback; returns (ResultGrid, callback)."""
    callback = MLflowTrackingCallback(
        tracking_uri, experiment, sweep_name=name, grid=grid,
        command=f"pytest sweep {name}", storage_path=str(storage),
        data_manifest=manifest or {"dataset": "tiny", "key": "abc123", "n": 240, "crop": "published",
                                   "sources": {"boundaries": "files", "normals": "unavailable"},
                                   "published_split": {"membership": "notebook", "sha256": SPLIT_SHA256}},
    )
    tuner = tune.Tuner(
        tiny_pose_trainable,
        param_space=space or param_space(),
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), callbacks=[callback],
                                  verbose=0),
    )
    return tuner.fit(), callback


def log_sweep(tracking_uri: str, experiment: str, configs, *, sweep_name: str = "smoke", grid: str = "smoke",
              storage_path: str = "/tmp/pix3d-tests/ray", search: dict | None = None):
    """A sweep logged without Ray: the project's SweepLogger (what the Tune callback drives) fed
    each config's `tiny_pose_epochs` results; the SweepInfo. For the UI tests, which need runs in
    a store, not a Tune run. A config's `stop_at_epoch` ends it there (as ASHA would)."""
    from analysis.sweep_logger import SweepInfo, SweepLogger

    info = SweepInfo(sweep_id=f"{sweep_name}-{experiment}", sweep_name=sweep_name, experiment=experiment,
                     grid=grid, command=f"pytest {sweep_name}", storage_path=storage_path,
                     tracking_uri=tracking_uri, search=dict(search or {}),
                     data_manifest={"dataset": "tiny", "key": "abc123", "n": 240})
    logger = SweepLogger(tracking_uri, info)
    logger.parent_run_id()
    for number, config in enumerate(configs):
        trial_id = f"t{number:05d}"
        logger.start_trial(trial_id, config, f"{number}_{trial_id}")
        last = {}
        for result in tiny_pose_epochs(config):
            logger.log_result(trial_id, result)
            last = result
            if result["epoch"] == config.get("stop_at_epoch"):
                break
        logger.end_trial(trial_id, "FINISHED", last_result=last)
    logger.end_sweep(len(configs), 0)
    return info
