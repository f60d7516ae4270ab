"""Training throughput of the two published models, and the wall time of one quick-budget trial.

Why: the quick budget (pix3d.train.BUDGETS) is sized from these numbers, so that the CPU
ablation (2 trials at once on 2 cores) finishes in minutes. Re-run it on new hardware.

    python -m benchmarks.bench_train                       # throughput table, then one trial per model
    python -m benchmarks.bench_train --no-trial --threads 1,2 --precisions fp32,bf16

Throughput: images/s of full training steps (forward, 3-head loss, backward, Adam) on random
inputs of the budget's size, per model x precision x channels_last x threads. Trial: one
`pix3d.train.fit` of the quick budget on the built-in synthetic set (prepared once).
"""

from __future__ import annotations

import itertools
import time
from typing import Callable, Sequence

import torch

from pix3d.cli import ArgumentParser, positive_float, positive_int, run_cli
from pix3d.constants import ABLATION_SUBSETS, modality_channels, parse_modalities
from pix3d.devices import resolve_device
from pix3d.models import get_model, list_models, published_lr
from pix3d.train import BUDGETS, TrainConfig, fit, pose_loss


def training_step(model_name: str, modalities, *, image_size: int, batch_size: int, precision: str,
                  channels_last: bool, device: torch.device) -> Callable[[], None]:
    """One full training step (forward, 3-head loss, backward, Adam) on a fixed random batch."""
    torch.manual_seed(0)
    model = get_model(model_name, modalities, image_size=image_size).to(device)
    x = torch.randn(batch_size, len(modality_channels(modalities)), image_size, image_size, device=device)
    y = torch.randint(0, 8, (batch_size, 3), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
        loss = pose_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def calls_per_second(call: Callable[[], object], *, seconds: float, device: torch.device,
                     min_calls: int = 1) -> float:
    """Calls of `call` per second over at least `seconds` (and `min_calls`), after one warm-up call."""
    call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    calls, started = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < seconds:
        call()
        calls += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return calls / (time.perf_counter() - started)


def images_per_second(model_name: str, modalities, *, image_size: int, batch_size: int, precision: str,
                      channels_last: bool, threads: int, device: torch.device, seconds: float = 3.0) -> float:
    """Training steps per second x batch size, after one warm-up step."""
    torch.set_num_threads(threads)
    step = training_step(model_name, modalities, image_size=image_size, batch_size=batch_size,
                         precision=precision, channels_last=channels_last, device=device)
    return batch_size * calls_per_second(step, seconds=seconds, device=device)


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="quick", choices=list(BUDGETS))
    p.add_argument("--modalities", default="rgb,mask", help="subset for the throughput table")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--seconds", type=positive_float, default=3.0, help="timed seconds per cell")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-trial", action="store_true", help="skip the quick-budget trial timing")
    p.add_argument("--trial-threads", type=positive_int, default=1, help="torch threads for the trial (1 = one Tune trial per core)")
    p.add_argument("--cache", default=None, help="cache root for the synthetic set")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    budget = BUDGETS[args.budget]
    modalities = parse_modalities(args.modalities)
    device = resolve_device(args.device)
    threads = [int(t) for t in args.threads.split(",")]
    precisions = args.precisions.split(",")
    size, batch = budget["image_size"], budget["batch_size"]
    print(f"training throughput, {args.budget} budget ({size} px, batch {batch}), {'+'.join(modalities)}, {device}")
    print(f"{'model':<14}{'precision':<10}{'ch_last':<9}{'threads':<9}{'images/s':>10}")
    for name, precision, channels_last, n_threads in itertools.product(list_models(), precisions, (False, True), threads):
        rate = images_per_second(name, modalities, image_size=size, batch_size=batch, precision=precision,
                                 channels_last=channels_last, threads=n_threads, device=device, seconds=args.seconds)
        print(f"{name:<14}{precision:<10}{str(channels_last):<9}{n_threads:<9}{rate:>10.1f}", flush=True)

    if args.no_trial:
        return 0
    from pathlib import Path

    from pix3d.data.prepare import prepare

    data = prepare("synthetic", size, cache_dir=Path(args.cache) if args.cache else None, progress=True)
    print(f"\none {args.budget}-budget trial per model on the built-in synthetic set ({len(data)} images), "
          f"{args.trial_threads} thread(s)")
    for name in list_models():
        for subset in (ABLATION_SUBSETS[0], ABLATION_SUBSETS[-1]):
            config = TrainConfig.from_dict({**budget, "model": name, "modalities": subset, "lr": published_lr(name),
                                            "threads": args.trial_threads, "device": args.device})
            started = time.perf_counter()
            final = fit(config, data)["final"]
            print(f"{name:<14}{'+'.join(subset):<30} wall {time.perf_counter() - started:6.1f}s  "
                  f"val az {final['val_azimuth_acc']:.3f} (majority {final['majority_azimuth_acc']:.3f}), "
                  f"{final['images_per_s']:.0f} img/s", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
