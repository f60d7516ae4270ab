"""Names and numbers every package shares: the table of modalities, the heads, the bins.

`MODALITY_TABLE` is the single source for modalities: the prepared cache's channel layout,
where `pix3d.prepare` gets each one, which rendered buffer the synthetic writer saves for it,
the label tables and plots show, and the ablation's columns (its prefixes) all come from it.
Adding a modality is one row here plus, when it needs new code, a loader or a render buffer
(docs/design.md, "Adding a modality"). What was published per model lives with the model's
registration (`pix3d.models`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Modality:
    """One input modality.

    name: its key in configs, tags and tables; channels: uint8 channels in the cache;
    label: how tables and plots name it; decode: how its image files are read ("rgb"|"gray");
    annotation: the pix3d.json key of its file, for modalities every entry has (img, mask);
    folder: the folder mirroring img/ that holds its maps, for maps users bring;
    fallback: what `prepare` does for an entry without a map ("canny": edges of the RGB;
    None: the modality is unavailable); render: the synthetic renderer's buffer it is saved from
    (and, for normals and boundaries, what an oracle render gives: `pix3d.render.oracle`);
    predict: the visualpriors feature `pix3d.data.predict` estimates it with from the RGB.
    """

    name: str
    channels: int
    label: str
    decode: str
    annotation: str | None = None
    folder: str | None = None
    fallback: str | None = None
    render: str = ""
    predict: str | None = None

    @property
    def directory(self) -> str:
        """The dataset folder its files live in (img/, mask/, boundaries/, normals/)."""
        return self.folder or self.annotation or self.name


# In cache order; the published modality subsets are prefixes of it, so their channel slices
# are views of the cache.
MODALITY_TABLE: tuple[Modality, ...] = (
    Modality("rgb", 3, "RGB", "rgb", annotation="img", render="rgb"),
    Modality("mask", 1, "Mask", "gray", annotation="mask", render="mask"),
    Modality("boundaries", 1, "Boundaries", "gray", folder="boundaries", fallback="canny", render="boundaries",
             predict="edge_texture"),
    Modality("normals", 3, "Normals", "rgb", folder="normals", render="normals", predict="normal"),
)
MODALITY: dict[str, Modality] = {m.name: m for m in MODALITY_TABLE}
MODALITIES: tuple[str, ...] = tuple(MODALITY)


def _channel_ranges() -> dict[str, tuple[int, int]]:
    ranges, start = {}, 0
    for m in MODALITY_TABLE:
        ranges[m.name] = (start, start + m.channels)
        start += m.channels
    return ranges


MODALITY_CHANNELS: dict[str, tuple[int, int]] = _channel_ranges()  # cache channels [lo, hi)
CACHE_CHANNELS = sum(m.channels for m in MODALITY_TABLE)

HEADS: tuple[str, ...] = ("azimuth", "elevation", "inplane")
N_BINS = 8

# The columns of the ablation table: every prefix of the modality table, in order.
ABLATION_SUBSETS: tuple[tuple[str, ...], ...] = tuple(MODALITIES[:k] for k in range(1, len(MODALITIES) + 1))


def subset_label(key: str) -> str:
    """'rgb+mask' -> 'RGB+Mask' (a key with an unknown modality is shown as it is)."""
    names = key.split("+")
    return "+".join(MODALITY[n].label for n in names) if all(n in MODALITY for n in names) else key


SUBSET_LABELS: dict[str, str] = {"+".join(s): subset_label("+".join(s)) for s in ABLATION_SUBSETS}


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
