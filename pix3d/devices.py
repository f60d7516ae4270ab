"""Where a run trains, and how much GPU memory it will need: pure PyTorch, no Ray.

Two concerns a GPU sweep must settle before it spends hours:

- A trial given GPUs must really train on one. `require_cuda` fails at once, in one line
  naming the node, the `CUDA_VISIBLE_DEVICES` it got and what torch reports, instead of
  letting `device="auto"` quietly fall back to the CPU (a CUDA driver that does not match
  torch looks exactly like that). `placement` is what every run records about where it ran;
  `resolve_device` turns a config's device name ('auto', 'cpu', 'cuda[:N]') into a torch device.
- Trials that share a GPU must fit in it together. `estimate_train_memory` adds up what one
  run of `pix3d.train.fit` keeps on the device: its channels of the uint8 cache
  (`BatchSource` copies them to the GPU), weights + gradients + Adam's two moments,
  activations saved for backward at the training batch, or the evaluation batch's peak,
  whichever is larger, plus the CUDA context and cuDNN workspace. It is an estimate from
  layer shapes (a forward pass on the `meta` device: no memory, no compute), meant to refuse
  packings that cannot fit, not to predict the allocator to the megabyte.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pix3d.constants import Modalities
from pix3d.errors import Pix3DError

GIB = 1024**3
# Per process, before any tensor: the CUDA context plus cuBLAS/cuDNN handles (300-600 MB
# measured on recent drivers; the upper end, since each packed trial is its own process).
CUDA_CONTEXT_BYTES = 600 * 1024**2
# cuDNN may pick convolution algorithms with a scratch workspace (cudnn.benchmark is on).
CUDNN_WORKSPACE_BYTES = 256 * 1024**2
# `pix3d.train.evaluation.evaluate` validates in batches of this many images (no gradients kept).
EVAL_BATCH = 128
# Caching-allocator slack: freed blocks are kept and reused, not returned, so peaks fragment.
ALLOCATOR_SLACK = 1.10


class NoCudaDeviceError(Pix3DError):
    """A run that was given GPUs sees no CUDA device. Not worth retrying on the same node."""


# ----------------------------------------------------------------------------- placement

def torch_cuda_report() -> str:
    """What this process's torch says about CUDA, in one phrase."""
    built = torch.version.cuda or "none (a CPU-only build)"
    try:
        available = torch.cuda.is_available()
        count = torch.cuda.device_count()
    except Exception as exc:  # noqa: BLE001 - a broken driver raises here; report it
        return f"torch {torch.__version__} (built for CUDA {built}) fails to query CUDA: {exc}"
    return (f"torch {torch.__version__} (built for CUDA {built}) reports "
            f"cuda.is_available()={available}, device_count()={count}")


def require_cuda(node: str, gpus: float) -> None:
    """Raise NoCudaDeviceError (one line) when this process was given GPUs but torch sees none."""
    if torch.cuda.is_available():
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise NoCudaDeviceError(
        f"trial was given {gpus:g} GPU on node {node} but sees no CUDA device: "
        f"CUDA_VISIBLE_DEVICES={visible!r}, {torch_cuda_report()}; fix the node's CUDA driver, "
        "or pass --device cpu to simulate the GPUs on the CPU deliberately"
    )


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present else CPU; an explicit 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Pix3DError(f"config key 'device' is {name!r} but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise Pix3DError(f"config key 'device': unknown value {name!r}") from None


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def placement(device: torch.device | str, *, gpus: float, gpu_ids: list | tuple = (),
              node: str | None = None, simulated: bool = False) -> dict:
    """Where a run trains, as report keys: device kind and name, GPU ids, node, simulation flag."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
    else:
        name = cpu_name()
    return {
        "device_kind": device.type,
        "device_name": name,
        "gpu_ids": ",".join(str(i) for i in gpu_ids),
        "gpus_given": float(gpus),
        "node": node or socket.gethostname(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "simulated_gpu": bool(simulated),
    }


def device_label(report: dict) -> str:
    """Short text for a summary column: `cuda:0 NVIDIA H200`, `cpu (sim 0.5 GPU)`, `cpu`."""
    kind = report.get("device_kind")
    if not kind:
        return "-"
    if kind == "cuda":
        name = str(report.get("device_name", "")).replace("NVIDIA ", "")
        return f"cuda:{report.get('gpu_ids') or '?'} {name}".strip()
    if report.get("simulated_gpu"):
        return f"cpu (sim {float(report.get('gpus_given', 0)):g} GPU)"
    return kind


# ----------------------------------------------------------------------------- memory

@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training run keeps on its GPU, by component."""

    model: str
    modalities: str
    image_size: int
    batch_size: int
    n_images: int
    cache: int          # the run's channels of the uint8 cache + labels
    model_state: int    # weights, gradients, Adam exp_avg and exp_avg_sq (fp32)
    activations: int    # max(training batch saved for backward, evaluation batch peak)
    overhead: int       # CUDA context + cuDNN workspace
    total: int          # (sum) x allocator slack

    def describe(self) -> str:
        def gb(n: int) -> str:
            return f"{n / GIB:.2f}"
        return (f"{self.model} {self.modalities} at {self.image_size} px, batch {self.batch_size}: "
                f"{gb(self.total)} GiB (cache {gb(self.cache)} for {self.n_images} images, "
                f"model+grads+Adam {gb(self.model_state)}, activations {gb(self.activations)}, "
                f"CUDA context+workspace {gb(self.overhead)}, x{ALLOCATOR_SLACK:g} allocator slack)")

    def to_dict(self) -> dict:
        return asdict(self)


def _activation_bytes(model: nn.Module, in_channels: int, image_size: int, batch: int,
                      element_bytes: int) -> tuple[int, int]:
    """(saved-for-backward bytes at `batch`, largest single-layer in+out bytes at `batch`).

    Runs the model on the meta device: shapes only. Every leaf module's output is kept for
    backward, except an in-place ReLU's (it is its input's storage); max-pool also keeps
    int64 indices of its output.
    """
    saved = [batch * in_channels * image_size * image_size * element_bytes]  # the float input
    peak = [0]

    def hook(module, inputs, output):
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        out = sum(t.numel() for t in outputs if isinstance(t, torch.Tensor)) * element_bytes
        inp = sum(t.numel() for t in inputs if isinstance(t, torch.Tensor)) * element_bytes
        if not (isinstance(module, nn.ReLU) and module.inplace):
            saved.append(out)
        if isinstance(module, nn.MaxPool2d):
            saved.append(out // element_bytes * 8)
        peak[0] = max(peak[0], inp + out)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.empty(batch, in_channels, image_size, image_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return sum(saved), peak[0]


def estimate_train_memory(model: str, modalities, *, image_size: int, batch_size: int,
                          n_images: int, precision: str = "fp32") -> MemoryEstimate:
    """GPU bytes of one `pix3d.train.fit` run (see the module docstring for what counts).

    precision "bf16" halves activations; "auto"/"fp32" are estimated in fp32 (the upper bound:
    'auto' resolves per GPU).
    """
    from pix3d.models import get_model

    channels = len(Modalities(modalities).channels)
    net = get_model(model, modalities, image_size=image_size)
    n_params = sum(p.numel() for p in net.parameters())
    element_bytes = 2 if precision == "bf16" else 4
    net = net.to("meta")
    # Backward holds the saved activations plus gradients of about the largest layer pair.
    train_saved, train_peak = _activation_bytes(net, channels, image_size, batch_size, element_bytes)
    _, eval_peak = _activation_bytes(net, channels, image_size, EVAL_BATCH, element_bytes)
    cache = n_images * channels * image_size * image_size + n_images * 3 * 8
    model_state = n_params * 4 * 4 + (n_params * 2 if precision == "bf16" else 0)
    activations = max(train_saved + train_peak, eval_peak)
    overhead = CUDA_CONTEXT_BYTES + CUDNN_WORKSPACE_BYTES
    total = int((cache + model_state + activations + overhead) * ALLOCATOR_SLACK)
    key = "+".join(modalities) if isinstance(modalities, (list, tuple)) else str(modalities)
    return MemoryEstimate(model, key, image_size, batch_size, n_images, cache, model_state,
                          activations, overhead, total)
