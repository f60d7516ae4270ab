"""GPU checks of a sweep, on the driver: before the trials start, and while they run.

- `probe_gpu_nodes`: one tiny Ray task on every node that offers GPUs, holding the GPU share a
  trial would get, asks torch what it sees. A node whose CUDA is broken (driver/torch
  mismatch, no device behind `CUDA_VISIBLE_DEVICES`) stops the sweep before anything trains,
  in one line naming the node; the probes also tell how much memory the GPUs have.
- `plan_gpu_packing`: refuses a `--gpus-per-trial` whose trials cannot fit in one GPU's
  memory together, with the numbers (`pix3d.devices.estimate_train_memory`).
- `NoRetryOnDeviceError`: a Tune callback that stops retrying a trial that failed with
  `NoCudaDeviceError` (Ray 2.60's FailureConfig retries every error class alike).

`--device cpu` (simulating GPUs on the CPU, e.g. on a loopback cluster that advertises GPUs
it does not have) skips the probe: the trials then record `simulated_gpu`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping

from pix3d.devices import GIB, MemoryEstimate, NoCudaDeviceError, estimate_train_memory
from pix3d.errors import Pix3DError, UsageError

PROBE_TIMEOUT_S = float(os.environ.get("PIX3D_GPU_PROBE_TIMEOUT_S", "120"))
GPU_MEMORY_ENV = "PIX3D_GPU_MEMORY_GIB"


# ----------------------------------------------------------------------------- probe

def cuda_probe() -> dict:
    """What a process given a GPU share sees (runs as a Ray task on a GPU node)."""
    import socket

    import ray
    import torch

    from pix3d.devices import torch_cuda_report

    info = {
        "node": f"{socket.gethostname()} ({ray.util.get_node_ip_address()})",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "torch": torch_cuda_report(),
        "available": False,
        "devices": [],
    }
    try:
        info["available"] = torch.cuda.is_available()
        for i in range(torch.cuda.device_count() if info["available"] else 0):
            props = torch.cuda.get_device_properties(i)
            info["devices"].append({"name": props.name, "total_memory": int(props.total_memory)})
    except Exception:  # noqa: BLE001 - a broken driver: reported as unavailable
        info["available"] = False
    return info


def probe_gpu_nodes(gpus_per_trial: float, *, timeout_s: float = PROBE_TIMEOUT_S, log=print) -> list[dict]:
    """Probe every alive node with GPUs; raise NoCudaDeviceError naming the first broken one.

    Returns the probes. A probe that gets no GPU within `timeout_s` (the GPUs are busy with
    other work) is skipped with a note: the trials' own check still guards them.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU", 0) > 0]
    task = ray.remote(cuda_probe)
    pending = {
        task.options(num_cpus=0, num_gpus=min(1.0, gpus_per_trial),
                     scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(): n
        for n in nodes
    }
    ready, not_ready = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    for ref in not_ready:
        ray.cancel(ref, force=True)
        log(f"note: GPU probe of node {pending[ref]['NodeManagerAddress']} got no GPU within {timeout_s:g}s; "
            "its trials check CUDA themselves")
    probes = ray.get(ready)
    for probe in probes:
        if not probe["available"]:
            raise NoCudaDeviceError(
                f"node {probe['node']} offers GPUs to Ray but a task given {min(1.0, gpus_per_trial):g} GPU "
                f"there sees no CUDA device: CUDA_VISIBLE_DEVICES={probe['cuda_visible_devices']!r}, "
                f"{probe['torch']}; fix the node's CUDA driver, or pass --device cpu to simulate "
                "the GPUs on the CPU deliberately"
            )
    for probe in probes:
        names = ", ".join(f"{d['name']} {d['total_memory'] / GIB:.0f} GiB" for d in probe["devices"])
        log(f"GPU check: node {probe['node']}: {names}")
    return probes


# ----------------------------------------------------------------------------- memory plan

def gpu_memory_to_plan(option_gib: float | None, probes: Iterable[dict] = ()) -> tuple[int | None, str]:
    """(bytes, where from): --gpu-memory-gib, else $PIX3D_GPU_MEMORY_GIB, else the smallest
    probed GPU, else this machine's first GPU; (None, ...) when none of them is known."""
    if option_gib is not None:
        return int(option_gib * GIB), "--gpu-memory-gib"
    env = os.environ.get(GPU_MEMORY_ENV)
    if env:
        try:
            value = float(env)
        except ValueError:
            raise UsageError(f"${GPU_MEMORY_ENV} must be a number of GiB, got {env!r}") from None
        if not value > 0:
            raise UsageError(f"${GPU_MEMORY_ENV} must be > 0, got {env!r}")
        return int(value * GIB), f"${GPU_MEMORY_ENV}"
    sizes = [d["total_memory"] for p in probes for d in p.get("devices", [])]
    if sizes:
        return min(sizes), "the smallest GPU of the cluster"
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory), "this machine's GPU"
    return None, "unknown"


def _values(value: Any) -> list:
    """A Tune domain's possible values (choice -> its categories), a constant as [value]."""
    categories = getattr(value, "categories", None)
    return list(categories) if categories is not None else [value]


def trial_shapes(configs: Iterable[Mapping[str, Any]]) -> list[dict]:
    """The distinct (model, modalities, image size, batch size, precision) of the trials;
    Tune choice domains (search grids) expand to every choice."""
    shapes = {}
    for config in configs:
        for model in _values(config.get("model", "combined_net")):
            for batch in _values(config.get("batch_size", 10)):
                shape = {"model": model, "modalities": config.get("modalities", "rgb"),
                         "image_size": int(config.get("image_size", 224)), "batch_size": int(batch),
                         "precision": str(config.get("precision", "fp32"))}
                shapes[tuple(shape.values())] = shape
    return list(shapes.values())


def estimate_trials(configs: Iterable[Mapping[str, Any]], n_images: int) -> list[MemoryEstimate]:
    from pix3d.constants import parse_modalities

    return [estimate_train_memory(s["model"], parse_modalities(s["modalities"]), image_size=s["image_size"],
                                  batch_size=s["batch_size"], n_images=n_images, precision=s["precision"])
            for s in trial_shapes(configs)]


def trials_per_gpu(gpus_per_trial: float) -> int:
    """How many trials Ray may place on one GPU (a fraction f packs floor(1/f))."""
    return max(1, math.floor(1.0 / gpus_per_trial + 1e-9)) if gpus_per_trial < 1 else 1


def plan_gpu_packing(estimates: list[MemoryEstimate], gpus_per_trial: float, gpu_memory: int | None,
                     source: str = "") -> str:
    """One line on how the trials fill a GPU; Pix3DError with the numbers when they cannot fit."""
    worst = max(estimates, key=lambda e: e.total)
    per_gpu = trials_per_gpu(gpus_per_trial)
    need = per_gpu * worst.total
    if gpu_memory is None:
        return (f"GPU memory plan: up to {per_gpu} trial(s) per GPU x {worst.total / GIB:.2f} GiB = "
                f"{need / GIB:.2f} GiB; GPU size unknown here, not checked (--gpu-memory-gib to check): "
                f"largest trial {worst.describe()}")
    if need > gpu_memory:
        fits = gpu_memory // worst.total
        advice = (f"at most {fits} such trials fit: use --gpus-per-trial {1 / fits:.3g} or more"
                  if fits >= 1 else "one trial alone does not fit: use a smaller --budget or a larger GPU")
        raise Pix3DError(
            f"--gpus-per-trial {gpus_per_trial:g} packs {per_gpu} trial(s) on each GPU, needing "
            f"{per_gpu} x {worst.total / GIB:.2f} = {need / GIB:.2f} GiB, more than the "
            f"{gpu_memory / GIB:.2f} GiB GPU ({source}); {advice}. Largest trial: {worst.describe()}"
        )
    return (f"GPU memory plan: {per_gpu} trial(s) per GPU x up to {worst.total / GIB:.2f} GiB = "
            f"{need / GIB:.2f} GiB of {gpu_memory / GIB:.2f} GiB ({source}); largest trial {worst.describe()}")


# ----------------------------------------------------------------------------- Tune callback

try:
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - ray is a project dependency
    _TuneCallback = object


def _last_failure(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except (OSError, TypeError):
        return ""
    return text.rsplit("Failure #", 1)[-1]


class NoRetryOnDeviceError(_TuneCallback):
    """Stop retrying a trial whose failure was `NoCudaDeviceError`.

    Ray 2.60's FailureConfig has no per-exception filter: it retries every error up to
    max_failures. Tune has already re-queued the trial when `on_trial_recover` runs, so the
    callback lowers that trial's own max_failures to 0: the re-queued attempt (which may land
    on a healthy node) is its last, and a second NoCudaDeviceError ends it as ERROR.
    """

    def on_trial_recover(self, iteration, trials, trial, **info):
        if NoCudaDeviceError.__name__ in _last_failure(trial):
            trial.max_failures = 0
