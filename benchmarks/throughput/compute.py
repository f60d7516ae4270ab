"""The machine and the bare compute: what it is, its matmul ceiling, the bare training step, the data path.

Owns `machine_info` (CPU model, cores, versions, load), `ceiling` (fp32 and bf16 matrix-multiply
GFLOP/s per thread count), `bare_steps` (images/s of full training steps on a fixed batch, the
step's FLOPs counted with `torch.utils.flop_counter`, achieved GFLOP/s and the share of the
ceiling) and `data_path` (batch assembly from a uint8 cache through `pix3d.train.BatchSource`:
row gather, channel selection, normalisation, channels_last, the transfer to the device).
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_train import calls_per_second, training_step
from pix3d.constants import modality_channels
from pix3d.data.dataset import ModalityView
from pix3d.devices import cpu_name
from pix3d.train.batches import BatchSource, channel_stats
from pix3d.train.precision import cpu_has_fast_bf16, resolve_precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    """What the figures were measured on: CPU, cores, bf16 units, library versions, date, load."""
    import ray

    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "bf16_units": cpu_has_fast_bf16(),
        "torch": torch.__version__, "ray": ray.__version__, "python": sys.version.split()[0],
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average_at_start": load_average(),
    }


def matmul_gflops(dtype: str, *, n: int, threads: int, seconds: float) -> float:
    """GFLOP/s of an n x n by n x n matrix multiply in `dtype` on `threads` CPU threads."""
    torch.set_num_threads(threads)
    a = torch.randn(n, n).to(DTYPES[dtype])
    b = torch.randn(n, n).to(DTYPES[dtype])
    rate = calls_per_second(lambda: torch.mm(a, b), seconds=seconds, device=torch.device("cpu"), min_calls=2)
    return rate * 2 * n ** 3 / 1e9


def ceiling(threads: Sequence[int], *, n: int, seconds: float) -> list[dict]:
    """fp32 and bf16 matmul GFLOP/s for each thread count."""
    return [{"dtype": dtype, "threads": t, "n": n, "gflops": matmul_gflops(dtype, n=n, threads=t, seconds=seconds)}
            for t in threads for dtype in DTYPES]


def ceiling_for(ceilings: list[dict], dtype: str, threads: int) -> float | None:
    """The measured ceiling of `dtype` at `threads`, or None."""
    return next((c["gflops"] for c in ceilings if c["dtype"] == dtype and c["threads"] == threads), None)


def step_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of `step` (forward and backward: convolutions and matmuls), counted by torch."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def bare_steps(models: Sequence[str], sizes: Sequence[int], precisions: Sequence[str], *, modalities,
               batch_size: int, threads: int, seconds: float, ceilings: list[dict],
               device: torch.device = torch.device("cpu")) -> list[dict]:
    """One row per model x size x precision: images/s, GFLOP per image, achieved GFLOP/s, share of
    the ceiling. `auto` is resolved as a trial resolves it; a precision that resolves to one
    already measured reuses that measurement (and says so in `ran`)."""
    torch.set_num_threads(threads)
    measured: dict[tuple, dict] = {}
    rows = []
    for model in models:
        for size in sizes:
            for asked in precisions:
                ran = resolve_precision(asked, device)
                key = (model, size, ran)
                if key not in measured:
                    measured[key] = _measure_step(model, modalities, size, ran, batch_size=batch_size,
                                                  seconds=seconds, device=device)
                m = measured[key]
                top = ceiling_for(ceilings, ran, threads)
                rows.append({"model": model, "image_size": size, "precision": asked, "ran": ran,
                             "threads": threads, "batch_size": batch_size, **m,
                             "ceiling_share": m["gflops"] / top if top else None})
    return rows


def _measure_step(model: str, modalities, size: int, precision: str, *, batch_size: int, seconds: float,
                  device: torch.device) -> dict:
    """images/s and FLOPs of one model's training step (channels_last) at `size` px."""
    step = training_step(model, modalities, image_size=size, batch_size=batch_size, precision=precision,
                         channels_last=True, device=device)
    flops = step_flops(step)  # also the warm-up
    images_per_s = batch_size * calls_per_second(step, seconds=seconds, device=device, min_calls=2)
    per_image = flops / batch_size
    return {"images_per_s": images_per_s, "gflop_per_image": per_image / 1e9,
            "gflops": per_image * images_per_s / 1e9}


def random_cache(n: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """A uint8 N x C x S x S array laid out as a prepared cache (for sizes with no prepared one)."""
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def data_path(images: np.ndarray, modalities, *, batch_size: int, seconds: float, threads: int,
              device: torch.device = torch.device("cpu"), seed: int = 0) -> float:
    """Images/s of batch assembly alone: cache rows -> normalised channels_last float batch and
    int64 targets on `device`, as `train_one_epoch` asks `BatchSource` for them (shuffled rows)."""
    torch.set_num_threads(threads)
    n = images.shape[0]
    rows = torch.arange(n, dtype=torch.int64)
    norm = channel_stats(ModalityView(images, modalities).images, rows, modality_channels(modalities))
    source = BatchSource(images, np.zeros((n, 3), dtype=np.int64), modalities, norm, device, channels_last=True)
    generator = torch.Generator().manual_seed(seed)
    batches = list(torch.randperm(n, generator=generator).split(batch_size)) or [rows]
    position = 0

    def assemble() -> None:
        nonlocal position
        idx = batches[position % len(batches)]
        position += 1
        source.inputs(idx)
        source.targets(idx)

    return batch_size * calls_per_second(assemble, seconds=seconds, device=device, min_calls=len(batches))
