"""Names and numbers every package shares: the table of modalities, the heads, the bins.

`MODALITY_TABLE` is the single source for modalities: the prepared cache's channel layout,
where `pix3d.prepare` gets each one, which rendered buffer the synthetic writer saves for it,
the label tables and plots show, and the ablation's columns (its prefixes) all come from it.
Adding a modality is one row here (or in a module named by `PIX3D_MODALITIES`) plus, when it
needs new code, a fallback or a render buffer (docs/design.md, "How to add ... A modality").
A modality subset is parsed once into `Modalities` (a typed tuple that knows its key and its
cache channels). What was published per model lives with the model's registration
(`pix3d.models`).
"""

from __future__ import annotations

import functools
import importlib
import os
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


# Modules that add rows to the table (comma-separated), each with a `MODALITY_ROWS` tuple of
# `Modality`: how a modality is added without editing the project. Read when this module is
# first imported (everything below derives from the table), so it must be set before that, in
# every process: search.run forwards it to Ray's workers (search.cluster.FORWARDED_ENV).
PLUGINS_ENV = "PIX3D_MODALITIES"


def _plugin_rows(builtin: tuple[Modality, ...]) -> tuple[Modality, ...]:
    """The rows the modules named in PIX3D_MODALITIES add, after the built-in ones. A module
    that cannot be imported or gives no valid rows stops the process with one `error:` line
    (it is read at import time, before any command can catch an error)."""
    rows: list[Modality] = []
    for name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            added = tuple(importlib.import_module(name).MODALITY_ROWS)
        except Exception as exc:  # noqa: BLE001 - any failure is the user's module
            raise SystemExit(f"error: {PLUGINS_ENV}: cannot read MODALITY_ROWS of {name!r} "
                             f"({type(exc).__name__}: {exc}); a modality module is imported by "
                             "pix3d.constants, never before it") from None
        taken = {m.name for m in (*builtin, *rows)}
        for row in added:
            if not isinstance(row, Modality) or row.name in taken or "+" in row.name or row.channels < 1:
                raise SystemExit(f"error: {PLUGINS_ENV}: {name}.MODALITY_ROWS: {row!r} is not a new Modality "
                                 f"(a name not in {', '.join(sorted(taken))}, no '+', at least one channel)")
            rows.append(row)
            taken.add(row.name)
    return tuple(rows)


# In cache order; the published modality subsets are prefixes of it, so their channel slices
# are views of the cache. Rows added through PIX3D_MODALITIES come last: the first four
# channels' layout, and so every existing cache and table, stay as they are.
BUILTIN_MODALITIES: tuple[Modality, ...] = (
    Modality("rgb", 3, "RGB", "rgb", annotation="img", render="rgb"),
    Modality("mask", 1, "Mask", "gray", annotation="mask", render="mask"),
    Modality("boundaries", 1, "Boundaries", "gray", folder="boundaries", fallback="canny", render="boundaries",
             predict="edge_texture"),
    Modality("normals", 3, "Normals", "rgb", folder="normals", render="normals", predict="normal"),
)
MODALITY_TABLE: tuple[Modality, ...] = BUILTIN_MODALITIES + _plugin_rows(BUILTIN_MODALITIES)
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


def _parse(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'rgb+mask' / 'rgb,mask' / ['mask', 'rgb'] -> ('rgb', 'mask'); ValueError if not a subset."""
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


@functools.lru_cache(maxsize=None)
def _layout(names: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """(cache channel indices, each modality's [lo, hi) in the stacked input) of a canonical
    subset: computed once per subset in a process."""
    channels: list[int] = []
    spans: list[tuple[int, int]] = []
    for m in names:
        lo, hi = MODALITY_CHANNELS[m]
        spans.append((len(channels), len(channels) + hi - lo))
        channels.extend(range(lo, hi))
    return tuple(channels), tuple(spans)


class Modalities(tuple):
    """A modality subset in canonical (table) order, parsed once where it enters (a config, a
    command line) and passed on typed: `Modalities(x)` of a `Modalities` is x itself, so
    nothing below the boundary parses it again. A tuple of names (equal to one), with its
    `key` ('rgb+mask'), its cache `channels` and per modality its `spans` in the stacked input.

    Raises ValueError naming the unknown or duplicated modality, or an empty list.
    """

    __slots__ = ()

    def __new__(cls, spec: "str | list[str] | tuple[str, ...] | Modalities") -> "Modalities":
        if isinstance(spec, Modalities):
            return spec
        return super().__new__(cls, _parse(spec))

    @property
    def key(self) -> str:
        """Canonical string form, e.g. 'rgb+mask' (Tune configs, MLflow tags, tables)."""
        return "+".join(self)

    @property
    def channels(self) -> tuple[int, ...]:
        """Cache channel indices of the subset, in canonical order."""
        return _layout(tuple(self))[0]

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """Per modality, its channels [lo, hi) in the stacked input (`channels` gathered)."""
        return _layout(tuple(self))[1]


def parse_modalities(spec: str | list[str] | tuple[str, ...]) -> Modalities:
    """'rgb+mask' / 'rgb,mask' / ['mask', 'rgb'] -> ('rgb', 'mask') in canonical order."""
    return Modalities(spec)


def modalities_key(modalities: tuple[str, ...] | list[str] | str) -> str:
    """Canonical string form, e.g. 'rgb+mask' (used in Tune configs, MLflow tags, tables)."""
    return Modalities(modalities).key


def modality_channels(modalities: tuple[str, ...] | list[str] | str) -> list[int]:
    """Cache channel indices for a modality subset, in canonical order."""
    return list(Modalities(modalities).channels)


# Pix3D's focal lengths are millimetres on a sensor this wide (f_px = f_mm / 32 * width).
# Here, not in pix3d.geometry whose camera frame it belongs to, because the render workers
# need it and must not import torch (seconds per process) as pix3d.geometry does.
SENSOR_WIDTH_MM = 32.0
