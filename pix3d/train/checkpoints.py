"""Seeding, RNG state and checkpoint files: what makes a resumed run reproduce an uninterrupted one.

Owns `seed_everything` (python, numpy, torch and the batch-shuffle generator), the RNG state a
checkpoint carries (`rng_state` / `set_rng_state`, as types `torch.load(weights_only=True)`
accepts), checkpoint files (`save_checkpoint` writes atomically through pix3d.fileio,
`load_checkpoint` refuses what is not a pix3d.train checkpoint) and `checkpoint_to_resume`,
which refuses a checkpoint of another config.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from pix3d.errors import Pix3DError, one_line
from pix3d.fileio import atomic_path, check_free_space
from pix3d.train.config import TrainConfig, config_differences

# What every checkpoint holds (save_checkpoint's callers add bins, norm, history and best).
REQUIRED_KEYS = frozenset({"model", "optimizer", "scheduler", "epoch", "rng", "config"})


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (CPU and CUDA); return the seeded batch-shuffle generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def rng_state(shuffle: torch.Generator) -> dict:
    """All RNG states, as types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "random": random.getstate(),
        "shuffle": shuffle.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, shuffle: torch.Generator) -> None:
    """Restore what `rng_state` saved: the global generators and the batch-shuffle one."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_cpu(obj):
    """`obj` with every tensor in it (through dicts and lists) moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    return obj


def save_checkpoint(path: str | Path, checkpoint: dict) -> Path:
    """torch.save `checkpoint` to `path` through fileio.atomic_path: never a half-written file.

    Serialised in memory first: torch's zip writer turns a full disk into an opaque
    RuntimeError, a plain write gives ENOSPC, which atomic_path reports naming the path."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    check_free_space(path, buffer.getbuffer().nbytes)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by save_checkpoint (tensors and plain types only)."""
    path = Path(path)
    if not path.is_file():
        raise Pix3DError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or not a torch file
        raise Pix3DError(f"checkpoint {path} cannot be read: {exc.__class__.__name__}: {one_line(exc)}") from None
    missing = REQUIRED_KEYS - set(checkpoint if isinstance(checkpoint, dict) else {})
    if missing:
        raise Pix3DError(f"checkpoint {path} is not a pix3d.train checkpoint (missing {', '.join(sorted(missing))})")
    return checkpoint


def checkpoint_to_resume(resume_from: dict | str | Path | None, config: TrainConfig) -> dict | None:
    """The checkpoint (a dict, or loaded from a path) that `config` continues, or None.

    A checkpoint of another config raises naming the differing keys (those in
    RESUME_FREE_KEYS, such as epochs, may differ).
    """
    if resume_from is None:
        return None
    checkpoint = load_checkpoint(resume_from) if isinstance(resume_from, (str, Path)) else resume_from
    differing = config_differences(checkpoint["config"], config.to_dict())
    if differing:
        shown = ", ".join(f"{k} ({checkpoint['config'].get(k)!r} vs {getattr(config, k, None)!r})" for k in differing)
        raise Pix3DError(f"checkpoint is from another config; differing keys: {shown}")
    return checkpoint
