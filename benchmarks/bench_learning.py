"""How many training images a model needs to learn azimuth: accuracy against image passes and wall time.

Why: a budget is only useful if the task is learned within it. This trains one model on the
built-in synthetic set (or `--data DIR`) for each `--runs` entry (N training images x E epochs, the rest of the
config from `--budget`) and prints, per epoch, the image passes so far, the wall time, the
validation azimuth accuracy and its ratio to the majority baseline; it also draws the curves
(with the baseline and 2x the baseline) into a PNG. Re-run it on new hardware before you size
a budget: the passes needed do not change, the seconds they cost do.

    python -m benchmarks.bench_learning                                  # combined_net rgb+mask, lr 1e-3
    python -m benchmarks.bench_learning --model separate_net --modalities rgb,mask,boundaries,normals
    python -m benchmarks.bench_learning --runs 300x3,1620x5 --lr 1e-5 --png curves.png
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Sequence

from pix3d.cli import ArgumentParser, positive_float, positive_int, run_cli
from pix3d.constants import parse_modalities
from pix3d.errors import UsageError
from pix3d.fileio import save_figure
from pix3d.models import list_models
from pix3d.train import BUDGETS, TrainConfig, fit


def parse_runs(text: str) -> list[tuple[int | None, int]]:
    """'300x3,allx5' -> [(300, 3), (None, 5)]: training images (None = the whole split) x epochs."""
    runs = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+|all)\s*x\s*(\d+)\s*", part)
        if not match or match[1] == "0" or match[2] == "0":
            raise UsageError(f"--runs: {part.strip()!r} is not IMAGESxEPOCHS with positive numbers "
                             "(e.g. 300x3 or allx5)")
        runs.append((None if match[1] == "all" else int(match[1]), int(match[2])))
    return runs


def plot_curves(curves: dict[str, list[dict]], majority: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for label, points in curves.items():
        axes[0].plot([p["passes"] for p in points], [p["val_az"] for p in points], marker="o", label=label)
        axes[1].plot([p["wall_s"] for p in points], [p["val_az"] for p in points], marker="o", label=label)
    for ax, xlabel in zip(axes, ("training image passes", "wall time (s)")):
        ax.axhline(majority, color="grey", ls="--", lw=1, label="majority baseline")
        ax.axhline(2 * majority, color="grey", ls=":", lw=1, label="2x majority")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val azimuth accuracy")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path, close=True)


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.bench_learning", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic", help="a Pix3D folder, or 'synthetic' (the built-in set)")
    p.add_argument("--model", default="combined_net", choices=list_models())
    p.add_argument("--modalities", default="rgb,mask")
    p.add_argument("--lr", type=positive_float, default=1e-3,
                   help="learning rate (combined_net's published 1e-5 needs far more steps than a CPU minute)")
    p.add_argument("--budget", default="quick", choices=list(BUDGETS),
                   help="image size, batch size, precision and channels_last come from this budget")
    p.add_argument("--runs", default="300x3,allx4",
                   help="comma-separated IMAGESxEPOCHS (IMAGES a number or 'all' = the whole training split)")
    p.add_argument("--image-size", type=positive_int, default=None, help="instead of the budget's image size (px)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="instead of the budget's batch size")
    p.add_argument("--lr-schedule", choices=("step", "none"), default=None,
                   help="instead of the budget's schedule (step: StepLR, x gamma every --step-size epochs)")
    p.add_argument("--step-size", type=positive_int, default=None, help="instead of the budget's StepLR step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto")
    p.add_argument("--png", type=Path, default=Path("learning_curves.png"), help="where to draw the curves")
    p.add_argument("--cache", default=None, help="cache root for the synthetic set")
    return p


def learning_curves(data, *, model: str, modalities, lr: float, runs, overrides: dict, seed: int = 0,
                    threads: int | None = None, device: str = "auto",
                    report: Callable[[str], None] = print) -> tuple[dict[str, list[dict]], float]:
    """Fit `model` once per (images, epochs) run; per epoch record passes, wall seconds, val azimuth.

    Returns ({run label: points}, the majority azimuth accuracy of the last run's validation split).
    """
    report(f"{'run':<10}{'epoch':>6}{'passes':>9}{'wall s':>9}{'val az':>9}{'majority':>10}{'ratio':>8}")
    curves: dict[str, list[dict]] = {}
    majority = 0.0
    for n_images, epochs in runs:
        label = f"{n_images or 'all'}x{epochs}"
        config = TrainConfig.from_dict({**overrides, "model": model, "modalities": modalities, "lr": lr,
                                        "epochs": epochs, "max_train_images": n_images, "seed": seed,
                                        "threads": threads, "device": device})
        points: list[dict] = []
        started = time.perf_counter()

        def on_epoch(metrics: dict, _checkpoint: dict, points=points, label=label, started=started) -> None:
            nonlocal majority
            majority = metrics["majority_azimuth_acc"]
            point = {"epoch": metrics["epoch"], "passes": metrics["epoch"] * metrics["n_train"],
                     "wall_s": time.perf_counter() - started, "val_az": metrics["val_azimuth_acc"],
                     "majority": majority}
            points.append(point)
            report(f"{label:<10}{point['epoch']:>6}{point['passes']:>9}{point['wall_s']:>9.1f}"
                   f"{point['val_az']:>9.3f}{majority:>10.3f}{point['val_az'] / max(majority, 1e-9):>8.2f}")

        fit(config, data, on_epoch=on_epoch)
        curves[label] = points
    return curves, majority


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    runs = parse_runs(args.runs)
    try:
        modalities = parse_modalities(args.modalities)
    except ValueError as exc:
        raise UsageError(f"--modalities: {exc}") from None
    if args.lr <= 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    overrides = {k: v for k, v in BUDGETS[args.budget].items() if k not in ("epochs", "max_train_images")}
    for key in ("image_size", "batch_size", "lr_schedule", "step_size"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)

    from pix3d.data.prepare import prepare

    data = prepare(args.data, overrides["image_size"], cache_dir=Path(args.cache) if args.cache else None)
    schedule = overrides.get("lr_schedule", "step")
    if schedule == "none":
        schedule = "constant"
    elif schedule == "step":
        schedule = f"StepLR({overrides.get('step_size', TrainConfig.step_size)}, {overrides.get('gamma', TrainConfig.gamma):g})"
    title = (f"{args.model} {'+'.join(modalities)} lr {args.lr:g} {schedule}, {overrides['image_size']} px, "
             f"batch {overrides['batch_size']}, data {args.data}")
    print(title)
    curves, majority = learning_curves(data, model=args.model, modalities=modalities, lr=args.lr, runs=runs,
                                       overrides=overrides, seed=args.seed, threads=args.threads,
                                       device=args.device, report=lambda line: print(line, flush=True))
    print(f"curves -> {plot_curves(curves, majority, args.png, title)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
