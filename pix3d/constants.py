"""Names and numbers every package shares: modalities, channels, heads, published results."""

from __future__ import annotations

# Channel layout of the prepared cache (uint8, N x 8 x S x S). Order is fixed: the
# published modality subsets are prefixes of it, so their channel slices are views.
MODALITIES: tuple[str, ...] = ("rgb", "mask", "boundaries", "normals")
MODALITY_CHANNELS: dict[str, tuple[int, int]] = {
    "rgb": (0, 3),
    "mask": (3, 4),
    "boundaries": (4, 5),
    "normals": (5, 8),
}
CACHE_CHANNELS = 8

HEADS: tuple[str, ...] = ("azimuth", "elevation", "inplane")
N_BINS = 8

# The four columns of the published ablation table, in order.
ABLATION_SUBSETS: tuple[tuple[str, ...], ...] = (
    ("rgb",),
    ("rgb", "mask"),
    ("rgb", "mask", "boundaries"),
    ("rgb", "mask", "boundaries", "normals"),
)
SUBSET_LABELS: dict[str, str] = {
    "rgb": "RGB",
    "rgb+mask": "RGB+Mask",
    "rgb+mask+boundaries": "RGB+Mask+Boundaries",
    "rgb+mask+boundaries+normals": "RGB+Mask+Boundaries+Normals",
}

# Published azimuth accuracy (%, 8 bins, random 10% validation), one value per subset above.
PUBLISHED_AZIMUTH_ACC: dict[str, dict[str, float]] = {
    "combined_net": {
        "rgb": 56.8862,
        "rgb+mask": 72.0559,
        "rgb+mask+boundaries": 64.3713,
        "rgb+mask+boundaries+normals": 65.5329,
    },
    "separate_net": {
        "rgb": 50.7984,
        "rgb+mask": 36.9261,
        "rgb+mask+boundaries": 38.1238,
        "rgb+mask+boundaries+normals": 41.1178,
    },
}

# Learning rates of the published README: each model at its own.
PUBLISHED_LR: dict[str, float] = {"combined_net": 1e-5, "separate_net": 1e-3}


def parse_modalities(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'rgb+mask' / 'rgb,mask' / ['mask', 'rgb'] -> ('rgb', 'mask') in canonical order.

    Raises ValueError naming the unknown or duplicated modality, or an empty list.
    """
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.replace(",", "+").split("+")]
    else:
        parts = [str(p).strip() for p in spec]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError(f"empty modality list; choose from {', '.join(MODALITIES)}")
    unknown = [p for p in parts if p not in MODALITY_CHANNELS]
    if unknown:
        raise ValueError(
            f"unknown modality {unknown[0]!r}; choose from {', '.join(MODALITIES)}"
        )
    if len(set(parts)) != len(parts):
        raise ValueError(f"modality listed twice in {spec!r}")
    return tuple(m for m in MODALITIES if m in parts)


def modalities_key(modalities: tuple[str, ...] | list[str] | str) -> str:
    """Canonical string form, e.g. 'rgb+mask' (used in Tune configs, MLflow tags, tables)."""
    return "+".join(parse_modalities(modalities))


def modality_channels(modalities: tuple[str, ...] | list[str] | str) -> list[int]:
    """Cache channel indices for a modality subset, in canonical order."""
    out: list[int] = []
    for m in parse_modalities(modalities):
        lo, hi = MODALITY_CHANNELS[m]
        out.extend(range(lo, hi))
    return out


# Pix3D's focal lengths are millimetres on a sensor this wide (f_px = f_mm / 32 * width).
# Here, not in pix3d.geometry whose camera frame it belongs to, because the render workers
# need it and must not import torch (seconds per process) as pix3d.geometry does.
SENSOR_WIDTH_MM = 32.0
