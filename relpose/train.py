"""Train a relative-pose network on synthetic view pairs: photometric (unsupervised) or pose loss.

The network predicts the target -> source twist; `pix3d.geometry.inverse_warp` pulls the
source into the target view through se3_exp, the target's depth and the pinhole K
(differentiable, `grid_sample`). Losses:
- `photometric`: mean L1 between the target and the warped source over the object pixels
  that land inside the source image (no pose labels used);
- `pose`: chordal rotation distance ||R - R*||_F plus translation error ||t - t*|| (metres).

Every epoch reports, on held-out models: rotation error (deg), translation error (m) and the
photometric L1 of the prediction, beside the identity motion (the "predict nothing"
baseline) and, for the photometric L1, the true motion (the floor that noise and occlusion
leave). So a run answers the study's question directly: do (ImageNet) features give pose?

    python -m relpose.train --fusion early --loss photometric --weights imagenet
    python -m relpose.train --fusion late --loss pose --weights none --epochs 8
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pix3d import geometry
from pix3d.cli import ArgumentParser, positive_float, positive_int, run_cli
from pix3d.errors import Pix3DError, UsageError
from pix3d.fileio import atomic_path, ensure_writable_dir, save_figure, write_json
from pix3d.devices import resolve_device
from relpose.models import FUSIONS, RelPoseNet, resolve_weights
from relpose.pairs import PairConfig, PairData, load_or_make_pairs, rotation_angle_deg

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
    "paper": {"pairs": {"n": 8000, "size": 128, "max_orbit_deg": 30.0, "models_per_category": 20},
              "train": {"epochs": 20, "batch_size": 32, "lr": 3e-4, "lr_schedule": "cosine"}},
}


@dataclass
class RelPoseConfig:
    fusion: str = "early"
    loss: str = "photometric"
    weights: str | None = None  # None | "imagenet" | a state_dict path
    freeze_backbone: bool = False
    lr: float = 1e-4
    lr_schedule: str = "none"  # "cosine": per step from lr down to 0 at the last step
    batch_size: int = 16
    epochs: int = 6
    val_fraction: float = 0.15
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

    @classmethod
    def from_dict(cls, d: dict) -> "RelPoseConfig":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise Pix3DError(f"unknown config key {unknown[0]!r}")
        return cls(**d)


class PairTensors:
    """The pair arrays as tensors on the device (images as float in [0, 1] per batch)."""

    def __init__(self, data: PairData, device: torch.device):
        self.source = torch.as_tensor(data.source).to(device)
        self.target = torch.as_tensor(data.target).to(device)
        self.depth = torch.as_tensor(data.depth).to(device)
        self.mask = torch.as_tensor(data.mask).to(device)
        self.K = torch.as_tensor(data.K).to(device)
        self.T = torch.as_tensor(data.T).to(device)
        self.device = device

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = idx.to(self.device)
        return {"source": self.source[idx].float() / 255, "target": self.target[idx].float() / 255,
                "depth": self.depth[idx], "mask": self.mask[idx], "K": self.K[idx], "T": self.T[idx]}


def photometric_l1(b: dict, motion: torch.Tensor) -> torch.Tensor:
    """Per-pair mean |target - warp(source)| over object pixels that land inside the source (B,)."""
    warped, valid = geometry.inverse_warp(b["source"], b["depth"], motion, b["K"])
    use = (valid & b["mask"]).unsqueeze(1).to(warped.dtype)
    total = ((warped - b["target"]).abs() * use).sum(dim=(1, 2, 3))
    return total / (use.sum(dim=(1, 2, 3)) * 3).clamp_min(1.0)


def pose_errors(T_pred: torch.Tensor, T_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotation error in degrees, translation error in metres), per pair."""
    R_err = T_pred[:, :3, :3].transpose(1, 2) @ T_true[:, :3, :3]
    return rotation_angle_deg(R_err), (T_pred[:, :3, 3] - T_true[:, :3, 3]).norm(dim=1)


def loss_fn(kind: str, b: dict, twist: torch.Tensor) -> torch.Tensor:
    if kind == "photometric":
        return photometric_l1(b, twist).mean()
    T = geometry.se3_exp(twist)
    rotation = (T[:, :3, :3] - b["T"][:, :3, :3]).flatten(1).norm(dim=1)
    translation = (T[:, :3, 3] - b["T"][:, :3, 3]).norm(dim=1)
    return (rotation + translation).mean()


@torch.no_grad()
def _mean_errors(tensors: PairTensors, indices: torch.Tensor, motion: Callable[[dict], torch.Tensor],
                 batch_size: int = 64) -> tuple[float, float, float]:
    """Mean (rotation error deg, translation error m, photometric L1) of `motion(batch)` (B x 4 x 4)."""
    rot = trans = photo = 0.0
    for idx in indices.split(batch_size):
        b = tensors.batch(idx)
        T = motion(b)
        r, t = pose_errors(T, b["T"])
        rot, trans = rot + float(r.sum()), trans + float(t.sum())
        photo += float(photometric_l1(b, T).sum())
    n = len(indices)
    return rot / n, trans / n, photo / n


def _identity(b: dict) -> torch.Tensor:
    return torch.eye(4, device=b["T"].device).expand_as(b["T"]).contiguous()


def baselines(tensors: PairTensors, indices: torch.Tensor) -> dict:
    """What no motion gives (the "predict nothing" baseline), and the photometric error the
    true motion leaves (the floor set by noise and occlusion). Fixed for a split."""
    id_rot, id_trans, id_photo = _mean_errors(tensors, indices, _identity)
    *_, true_photo = _mean_errors(tensors, indices, lambda b: b["T"])
    return {"identity_rotation_err_deg": id_rot, "identity_translation_err_m": id_trans,
            "identity_photometric_l1": id_photo, "true_motion_photometric_l1": true_photo}


def evaluate(model: RelPoseNet, tensors: PairTensors, indices: torch.Tensor) -> dict:
    """Validation rotation, translation and photometric errors of the model's predicted motion."""
    model.eval()
    rot, trans, photo = _mean_errors(tensors, indices, lambda b: geometry.se3_exp(model(b["source"], b["target"])))
    return {"val_rotation_err_deg": rot, "val_translation_err_m": trans, "val_photometric_l1": photo}


def fit(config: RelPoseConfig, data: PairData, *, on_epoch: Callable[..., None] | None = None,
        resume_from: dict | None = None) -> dict:
    """Train and evaluate each epoch; returns {"config", "history", "final", "model"}.

    `on_epoch(metrics, checkpoint)` after every epoch; `checkpoint` (model, optimizer, epoch,
    shuffle state, history, config) is ready for torch.save and, given back as `resume_from`,
    continues the run at the next epoch exactly where it stopped.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    train_idx, val_idx = data.split(config.val_fraction, config.seed)
    if len(train_idx) < 1:
        raise Pix3DError(f"the split left no training pairs (of {len(data)}); use more pairs")
    tensors = PairTensors(data, device)
    model = RelPoseNet(config.fusion, config.weights, config.freeze_backbone).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    steps = config.epochs * -(-len(train_idx) // config.batch_size)
    scheduler = (torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
                 if config.lr_schedule == "cosine" else None)
    shuffle = torch.Generator().manual_seed(config.seed)
    train_t, val_t = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    reference = baselines(tensors, val_t)  # computed once: they do not change with training
    history, first_epoch = [], 1
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        if scheduler is not None and resume_from.get("scheduler"):
            scheduler.load_state_dict(resume_from["scheduler"])
        shuffle.set_state(resume_from["shuffle"])
        history = list(resume_from["history"])
        first_epoch = int(resume_from["epoch"]) + 1
    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        for step, idx in enumerate(train_t[torch.randperm(len(train_t), generator=shuffle)].split(config.batch_size), 1):
            b = tensors.batch(idx)
            loss = loss_fn(config.loss, b, model(b["source"], b["target"]))
            if not torch.isfinite(loss):
                raise Pix3DError(f"loss is {loss.item()} at epoch {epoch}, step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
        train_time = time.perf_counter() - started
        metrics = {"epoch": epoch, "train_loss": loss_sum / seen, "pairs_per_s": seen / train_time,
                   "lr": optimizer.param_groups[0]["lr"],
                   **evaluate(model, tensors, val_t), **reference, "n_train": len(train_idx), "n_val": len(val_idx)}
        history.append(metrics)
        if on_epoch:
            on_epoch(metrics, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict() if scheduler is not None else None,
                               "shuffle": shuffle.get_state(), "epoch": epoch, "history": history,
                               "config": dataclasses.asdict(config)})
    return {"config": dataclasses.asdict(config), "history": history, "final": history[-1], "model": model}


def plot_history(history: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("val_rotation_err_deg", "identity_rotation_err_deg", None, "rotation error (deg)"),
              ("val_translation_err_m", "identity_translation_err_m", None, "translation error (m)"),
              ("val_photometric_l1", "identity_photometric_l1", "true_motion_photometric_l1", "photometric L1")]
    for ax, (key, identity, true, ylabel) in zip(axes, panels):
        ax.plot(epochs, [m[key] for m in history], marker="o", label="prediction")
        ax.axhline(history[-1][identity], color="grey", ls="--", lw=1, label="identity motion")
        if true:
            ax.axhline(history[-1][true], color="green", ls=":", lw=1, label="true motion")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path, close=True)


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m relpose.train", description=__doc__.splitlines()[0])
    p.add_argument("--fusion", default="early", choices=FUSIONS, help="early: 6-channel input; late: siamese features")
    p.add_argument("--loss", default="photometric", choices=LOSSES)
    p.add_argument("--weights", default="none",
                   help="'none' (from scratch), 'imagenet' (torchvision's file in the torch hub cache) or a ResNet-18 state_dict path")
    p.add_argument("--freeze-backbone", action="store_true", help="train only the pose head (tests the features as they are)")
    p.add_argument("--lr", type=positive_float, default=1e-4)
    p.add_argument("--lr-schedule", default="none", choices=LR_SCHEDULES,
                   help="cosine: decay the lr to 0 over the run, step by step (default: constant)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--epochs", type=positive_int, default=6)
    p.add_argument("--pairs", type=positive_int, default=PairConfig.n, help="number of rendered view pairs")
    p.add_argument("--size", type=positive_int, default=PairConfig.size, help="image width and height (px)")
    p.add_argument("--max-orbit", type=positive_float, default=PairConfig.max_orbit_deg, help="largest azimuth change between the views (deg)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache", type=Path, default=None, help="cache root (default $PIX3D_CACHE or ~/.cache/pix3d-pose)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/relpose-FUSION-LOSS-WEIGHTS-sSEED)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    for key in ("lr", "batch_size", "epochs"):
        if getattr(args, key) <= 0:
            raise UsageError(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    pairs = PairConfig(n=args.pairs, seed=args.seed, size=args.size, max_orbit_deg=args.max_orbit)
    pairs.check()
    config = RelPoseConfig(fusion=args.fusion, loss=args.loss, weights=None if args.weights == "none" else args.weights,
                           freeze_backbone=args.freeze_backbone, lr=args.lr,
                           lr_schedule=args.lr_schedule, batch_size=args.batch_size,
                           epochs=args.epochs, seed=args.seed, threads=args.threads, device=args.device)
    # Resolve the weights before rendering anything: a missing file is a one-line error at once.
    resolve_weights(config.weights)
    weights_tag = "scratch" if config.weights is None else ("imagenet" if config.weights == "imagenet" else "file")
    out = args.out or Path("runs") / f"relpose-{config.fusion}-{config.loss}-{weights_tag}-s{config.seed}"
    if (out / "model.pt").exists():
        raise UsageError(f"{out / 'model.pt'} exists; choose another --out (or remove that run)")
    ensure_writable_dir(out, "--out")  # now, not after training

    from pix3d.data.cache import default_cache_dir

    data = load_or_make_pairs(pairs, args.cache or default_cache_dir(), progress=not args.no_progress)
    n_train, n_val = (len(i) for i in data.split(config.val_fraction, config.seed))
    print(f"relative pose: {config.fusion} fusion, {config.loss} loss, weights {config.weights or 'none'}"
          f"{' (frozen)' if config.freeze_backbone else ''}, {n_train} training / {n_val} validation pairs "
          f"(held-out models), {pairs.size} px -> {out}", flush=True)

    def report(m: dict, _checkpoint: dict) -> None:
        print(f"epoch {m['epoch']:>3}/{config.epochs}  train_loss {m['train_loss']:.4f}  "
              f"rot {m['val_rotation_err_deg']:.2f} deg (identity {m['identity_rotation_err_deg']:.2f})  "
              f"trans {m['val_translation_err_m']:.3f} m (identity {m['identity_translation_err_m']:.3f})  "
              f"photo {m['val_photometric_l1']:.4f} (identity {m['identity_photometric_l1']:.4f}, "
              f"true {m['true_motion_photometric_l1']:.4f})  {m['pairs_per_s']:.0f} pairs/s", flush=True)

    result = fit(config, data, on_epoch=report)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"config": result["config"], "pairs": dataclasses.asdict(pairs),
                    "model": result["model"].state_dict()}, tmp)
    write_json(out / "history.json", {"config": result["config"], "pairs": dataclasses.asdict(pairs),
                                      "history": result["history"]})
    png = plot_history(result["history"], out / "curves.png",
                       f"{config.fusion} fusion, {config.loss} loss, weights {weights_tag}")
    final = result["final"]
    print(f"done: rotation error {final['val_rotation_err_deg']:.2f} deg vs {final['identity_rotation_err_deg']:.2f} "
          f"for the identity motion; wrote {out / 'model.pt'}, {out / 'history.json'}, {png}")
    return 0


if __name__ == "__main__":
    run_cli(main)
