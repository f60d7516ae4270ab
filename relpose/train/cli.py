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
from pathlib import Path
from typing import Sequence

import torch

from pix3d.cli import ArgumentParser, nonnegative_float, positive_float, positive_int
from pix3d.errors import UsageError
from pix3d.fileio import atomic_path, ensure_writable_dir, write_json
from relpose.models import BACKBONES, FUSIONS, resolve_weights
from relpose.pairs import PairConfig, load_or_make_pairs
from relpose.train.config import LOSSES, LR_SCHEDULES, RelPoseConfig
from relpose.train.loop import fit
from relpose.train.plots import plot_history


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m relpose.train", description=__doc__.splitlines()[0])
    p.add_argument("--fusion", default="early", choices=FUSIONS, help="early: 6-channel input; late: siamese features")
    p.add_argument("--loss", default="photometric", choices=LOSSES)
    p.add_argument("--backbone", default="resnet18", choices=BACKBONES,
                   help="feature extractor (alexnet: the seed study's, its convolutions globally pooled)")
    p.add_argument("--weights", default="none",
                   help="'none' (from scratch), 'imagenet' (torchvision's file for --backbone in the torch hub "
                        "cache) or a state_dict path of the backbone")
    p.add_argument("--freeze-backbone", action="store_true", help="train only the pose head (tests the features as they are)")
    p.add_argument("--lr", type=positive_float, default=1e-4)
    p.add_argument("--lr-schedule", default="none", choices=LR_SCHEDULES,
                   help="cosine: decay the lr to 0 over the run, step by step (default: constant)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--epochs", type=positive_int, default=6)
    p.add_argument("--pairs", type=positive_int, default=PairConfig.n, help="number of rendered view pairs")
    p.add_argument("--size", type=positive_int, default=PairConfig.size, help="image width and height (px)")
    p.add_argument("--max-orbit", type=positive_float, default=PairConfig.max_orbit_deg, help="largest azimuth change between the views (deg)")
    p.add_argument("--test-fraction", type=nonnegative_float, default=RelPoseConfig.test_fraction,
                   help="share of the models held out as a test split, fixed by the pair set (0: none)")
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
    if not 0 <= args.test_fraction < 0.85:
        raise UsageError(f"--test-fraction must lie in [0, 0.85) (validation takes 0.15), got {args.test_fraction}")
    pairs = PairConfig(n=args.pairs, seed=args.seed, size=args.size, max_orbit_deg=args.max_orbit)
    pairs.check()
    config = RelPoseConfig(fusion=args.fusion, loss=args.loss, weights=None if args.weights == "none" else args.weights,
                           freeze_backbone=args.freeze_backbone, backbone=args.backbone,
                           test_fraction=args.test_fraction, lr=args.lr,
                           lr_schedule=args.lr_schedule, batch_size=args.batch_size,
                           epochs=args.epochs, seed=args.seed, threads=args.threads, device=args.device)
    # Resolve the weights before rendering anything: a missing file is a one-line error at once.
    resolve_weights(config.weights, config.backbone)
    weights_tag = "scratch" if config.weights is None else ("imagenet" if config.weights == "imagenet" else "file")
    out = args.out or Path("runs") / f"relpose-{config.fusion}-{config.loss}-{weights_tag}-s{config.seed}"
    if (out / "model.pt").exists():
        raise UsageError(f"{out / 'model.pt'} exists; choose another --out (or remove that run)")
    ensure_writable_dir(out, "--out")  # now, not after training

    from pix3d.data.cache import default_cache_dir

    data = load_or_make_pairs(pairs, args.cache or default_cache_dir(), progress=not args.no_progress)
    n_train, n_val, n_test = (len(i) for i in data.splits(config.val_fraction, config.seed, config.test_fraction))
    print(f"relative pose: {config.fusion} fusion, {config.loss} loss, weights {config.weights or 'none'}"
          f"{' (frozen)' if config.freeze_backbone else ''}, {config.backbone}, {n_train} training / {n_val} validation / "
          f"{n_test} test pairs "
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
    test = (f"; test {final['test_rotation_err_deg']:.2f} deg vs {final['test_identity_rotation_err_deg']:.2f}"
            if "test_rotation_err_deg" in final else "")
    print(f"done: rotation error {final['val_rotation_err_deg']:.2f} deg vs {final['identity_rotation_err_deg']:.2f} "
          f"for the identity motion{test}; wrote {out / 'model.pt'}, {out / 'history.json'}, {png}")
    return 0

