"""Which arithmetic a run uses: 'auto' resolved per machine, and the autocast context for it.

Owns the precision choice (`resolve_precision`: `$PIX3D_PRECISION` when set, else bf16 only
where the hardware has bf16 units) and `autocast`, the one place bf16 autocast is switched on.
Where a run trains (`resolve_device`) lives in pix3d.devices.
"""

from __future__ import annotations

import os
import re

import torch

from pix3d.errors import UsageError

PRECISION_ENV = "PIX3D_PRECISION"


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix units (AMX or AVX512-BF16).

    Without them bf16 autocast is emulated and measured ~2.5x SLOWER than fp32 (this
    project's 2-core Xeon: 23 vs 82 GFLOP/s matmul); with AMX it is ~3x faster.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))


def forced_precision() -> str | None:
    """The precision that `$PIX3D_PRECISION` forces on 'auto' ('fp32' or 'bf16'), or None.

    Unset, empty or 'auto' force nothing. Lets a whole test suite (or a sweep) run in bf16 on a
    machine whose hardware check would pick fp32, and the other way round.
    """
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("fp32", "bf16"):
        raise UsageError(f"environment variable {PRECISION_ENV}: unknown value {value!r}; "
                         "choose from fp32, bf16, auto")
    return value


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> `$PIX3D_PRECISION` when set; else 'bf16' where the hardware runs it fast (CUDA
    with bf16, CPU with AMX or AVX512-BF16), else 'fp32'. Explicit 'fp32' / 'bf16' are kept."""
    if precision != "auto":
        return precision
    forced = forced_precision()
    if forced is not None:
        return forced
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast on `device` when `precision` is 'bf16'; a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
