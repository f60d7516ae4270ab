"""The `python -m pix3d.train` command: options -> TrainConfig -> `fit` -> checkpoint.pt and history.json.

Owns the parser, `config_from_args` (CLI options over the budget's overrides over the
defaults) and `main`, which guards --out and --resume before any work and writes both files
after every epoch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from pix3d.cli import ArgumentParser, nonnegative_int, positive_float, positive_int
from pix3d.constants import Modalities
from pix3d.devices import resolve_device
from pix3d.errors import Pix3DError, UsageError
from pix3d.fileio import ensure_writable_dir, write_json
from pix3d.models import list_models, published_lr
from pix3d.data.maps import Sources, add_source_options
from pix3d.data.pose import BIN_SCHEMES
from pix3d.train.checkpoints import load_checkpoint, save_checkpoint
from pix3d.train.config import BUDGETS, LR_SCHEDULES, PRECISIONS, TrainConfig, resolve_budget
from pix3d.train.loop import fit
from pix3d.data.images import CROPS
from pix3d.train.precision import resolve_precision


def get_args_parser() -> ArgumentParser:
    """The command's options (defaults: the budget's, then the model's published lr)."""
    p = ArgumentParser(prog="python -m pix3d.train", description="Train one pose classifier on a prepared Pix3D cache.")
    p.add_argument("--model", default="combined_net", help=f"one of {', '.join(list_models())}")
    p.add_argument("--modalities", default="rgb", help="comma- or plus-separated, e.g. rgb,mask")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: the model's published lr)")
    p.add_argument("--data", default="synthetic", help="Pix3D folder (with pix3d.json) or 'synthetic'")
    p.add_argument("--cache", type=Path, default=None, help="cache root (default $PIX3D_CACHE or ~/.cache/pix3d-pose)")
    add_source_options(p, lambda m: f"where the cache's {m.name} come from (pix3d.prepare; oracle: rendered from "
                                    "the CAD model)")
    p.add_argument("--crop", default="margin", choices=CROPS,
                   help="margin: the bbox square with context; published: Pose-from-Shape's crop, the notebook's input")
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
    p.add_argument("--seed-quirks", nargs="?", const=True, default=False, metavar="QUIRK[+QUIRK]",
                   help="reproduce the published code's quirks: alone, all four; or some of relu_logits, "
                        "batch_mixing, raw_input, val_batching joined by +")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="step")
    p.add_argument("--bins", default="published", help=f"one of {', '.join(BIN_SCHEMES)}")
    p.add_argument("--split", default="published", help="published | random | by_model")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<model>-<modalities>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args) -> tuple[TrainConfig, str]:
    """CLI options over the budget's overrides over the defaults -> (TrainConfig, budget message)."""
    _, overrides, message = resolve_budget(args.budget)
    try:
        modalities = Modalities(args.modalities)
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


def resume_or_refuse(out: Path, resume: bool) -> dict | None:
    """With --resume the checkpoint in `out` (which must exist); without it, `out` must not hold one."""
    checkpoint_path = out / "checkpoint.pt"
    if resume:
        if not checkpoint_path.is_file():
            raise UsageError(f"--resume: no checkpoint at {checkpoint_path}")
        return load_checkpoint(checkpoint_path)
    if checkpoint_path.exists():
        raise UsageError(f"{checkpoint_path} exists; pass --resume to continue it or choose another --out")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Train one run from the command line, writing checkpoint.pt and history.json each epoch."""
    args = get_args_parser().parse_args(argv)
    config, message = config_from_args(args)
    out = args.out or Path("runs") / f"{config.model}-{config.modalities.key}-s{config.seed}"
    checkpoint_path, history_path = out / "checkpoint.pt", out / "history.json"
    resume_from = resume_or_refuse(out, args.resume)
    from pix3d.data.prepare import prepare, published_split_plan

    if config.split == "published":  # a folder the membership disagrees with: refused before anything is written
        print(published_split_plan(args.data).message, flush=True)
    ensure_writable_dir(out, "--out")  # now, not after the first epoch
    print(message, flush=True)
    data = prepare(args.data, config.image_size, cache_dir=args.cache, progress=not args.no_progress,
                   sources=Sources.from_args(args), crop=args.crop)
    if data.manifest.get("oracle"):
        print(f"note: {' and '.join(data.manifest['oracle'])} are oracle renders of the CAD model at the true "
              "pose: not comparable with the published numbers", flush=True)
    print(f"training {config.model} on {config.modalities.key} (lr {config.lr:g}, "
          f"{config.epochs} epochs, batch {config.batch_size}, {config.image_size} px, "
          f"{resolve_precision(config.precision, resolve_device(config.device))} (precision {config.precision}), "
          f"device {resolve_device(config.device)}) -> {out}", flush=True)

    def save(metrics: dict, checkpoint: dict) -> None:
        """fit's on_epoch: both files rewritten (atomically) after every epoch."""
        save_checkpoint(checkpoint_path, checkpoint)
        write_json(history_path, {"config": config.to_dict(), "data": data.manifest, "history": checkpoint["history"]})

    started = time.perf_counter()
    result = fit(config, data, on_epoch=save, resume_from=resume_from, progress=not args.no_progress,
                 log=lambda line: print(line, flush=True))
    final = result["final"]
    print(
        f"done in {time.perf_counter() - started:.1f}s: val azimuth acc {final['val_azimuth_acc']:.3f} "
        f"(best {final['best_val_azimuth_acc']:.3f}, majority baseline {final['majority_azimuth_acc']:.3f}, "
        f"+-1 bin {final['val_azimuth_acc_within1']:.3f}; rotation MedErr "
        f"{final.get('val_rotation_mederr', float('nan')):.1f} deg); wrote {checkpoint_path} and {history_path}"
    )
    return 0
