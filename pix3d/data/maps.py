"""Where each modality's channels come from, per entry, and how the manifest says so.

The sources follow `pix3d.constants.MODALITY_TABLE`: a modality with an `annotation` key is
read from the file every entry names (img, mask); one with a `folder` from the file of that
folder that mirrors `img/` (how a user brings maps from their own network: `find_map`).
Where an entry has no such file, the modality's `fallback` derives it (`canny`: a Canny-like
edge detector on the cropped RGB, `CANNY_SETTINGS`); a modality without a fallback is
all-or-nothing: if any entry lacks its file, it is unavailable for the whole cache, never
silently zero. Normals and boundaries may instead be predicted from the RGB
(`pix3d.data.predict`, where its weights are present) or rendered from the CAD model at the
annotated pose (`oracle`, only when asked: it leaks the label). What a preparation asks for is one `Sources`
mapping (modality -> choice; the `--<modality>` options of every command, `add_source_options`);
`entry_plan` resolves it into each entry's way (auto: files, else predict, else the fallback,
else unavailable).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from pix3d.constants import MODALITY_TABLE, Modality
from pix3d.errors import UsageError

FROM_FILES = "files"
UNAVAILABLE = "unavailable"
# What each fallback is called in the manifest and the MLflow params.
FALLBACK_SOURCES = {"canny": "canny-like edges from rgb"}
BOUNDARIES_DERIVED = FALLBACK_SOURCES["canny"]
# Edge detector settings for derived boundaries (recorded in the manifest; changing them
# needs a pix3d.data.cache.PREPARE_VERSION bump so old caches miss).
CANNY_SETTINGS = {"sigma": 1.0, "high_quantile": 0.8, "low_ratio": 0.4, "min_high": 20.0}
MAP_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAP_FOLDERS: tuple[str, ...] = tuple(m.folder for m in MODALITY_TABLE if m.folder)
ANNOTATION_KEYS: tuple[str, ...] = tuple(m.annotation for m in MODALITY_TABLE if m.annotation)


def find_map(root: Path, folder: str, img: str) -> str | None:
    """The `folder/` file that mirrors `img` (same relative path, any image extension)."""
    rel = Path(img)
    if rel.parts and rel.parts[0] == "img":
        rel = Path(*rel.parts[1:])
    for ext in (rel.suffix, *MAP_EXTENSIONS):
        if not ext:
            continue
        candidate = Path(folder) / rel.with_suffix(ext)
        if (root / candidate).is_file():
            return candidate.as_posix()
    return None


def find_maps(root: Path, folder: str, entries: list) -> dict[str, str]:
    """img path -> mirrored `folder/` file for every raw entry that has one.

    No file lookups at all when the folder is absent (the common case for real Pix3D).
    """
    if not (root / folder).is_dir():
        return {}
    found = {}
    for entry in entries:
        img = entry.get("img") if isinstance(entry, dict) else None
        if isinstance(img, str) and (rel := find_map(root, folder, img)) is not None:
            found[img] = rel
    return found


def _all_or_none(modality: Modality, imgs: list[str], files: list[str | None],
                 log: Callable[[str], None]) -> list[str | None]:
    """Each entry's file, or None for every entry where any of them lacks one."""
    if all(f is not None for f in files):
        return files
    missing = sum(f is None for f in files)
    if missing < len(files):
        example = imgs[files.index(None)]
        log(f"{modality.folder}/ lacks maps for {missing} of {len(files)} entries (e.g. {example}): "
            f"{modality.name} marked unavailable")
    return [None] * len(files)


# How an entry gets a modality's channels (the worker's switch), and the source options.
FILES, PREDICT, ORACLE, NONE, AUTO = "files", "predict", "oracle", "none", "auto"
ORACLE_RENDERS = ("normals", "boundaries")  # render buffers an oracle render gives


def predicted_source(modality: Modality) -> str:
    """The manifest's word for a modality predicted from the RGB."""
    return f"predicted from rgb (visualpriors '{modality.predict}')"


def selectable() -> tuple[Modality, ...]:
    """The modalities whose source `prepare` lets one choose (--normals, --boundaries)."""
    return tuple(m for m in MODALITY_TABLE if m.folder)


def source_choices(modality: Modality) -> tuple[str, ...]:
    """What --<modality> accepts: auto, files, predict, the fallback, oracle, or none."""
    choices = [AUTO, FILES]
    if modality.predict:
        choices.append(PREDICT)
    if modality.fallback:
        choices.append(modality.fallback)
    if modality.render in ORACLE_RENDERS:
        choices.append(ORACLE)
    if not modality.fallback:
        choices.append(NONE)
    return tuple(choices)


def check_sources(requested: Mapping[str, str | None] | None) -> dict[str, str]:
    """Every selectable modality's requested source ('auto' where not given or None); a
    UsageError names the option and its choices."""
    requested = dict(requested or {})
    out = {}
    for m in selectable():
        value = requested.pop(m.name, None) or AUTO
        if value not in source_choices(m):
            raise UsageError(f"--{m.name} must be one of {', '.join(source_choices(m))}, got {value!r}")
        out[m.name] = value
    if requested:
        raise UsageError(f"no source can be chosen for {', '.join(sorted(requested))}; "
                         f"only for {', '.join(m.name for m in selectable())}")
    return out


class Sources(Mapping[str, str]):
    """Where `prepare` takes each selectable modality from: modality -> auto | files | predict
    | oracle | none | <its fallback>, one entry per `selectable()` modality in table order
    (auto where not given), checked once when built. Built once per command from its options
    (`from_args`, the options `add_source_options` made) and passed whole, so a modality added
    to the table travels from the command line to the cache key with no edit on the way.
    `dict(sources)` is what the cache key hashes (`requested_sources`)."""

    def __init__(self, requested: Mapping[str, str | None] | None = None, **by_name: str | None):
        self._choices = check_sources({**(requested or {}), **by_name})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Sources":
        """The sources a command line asked for (its `--<modality>` options; absent ones: auto)."""
        return cls({m.name: getattr(args, m.name, None) for m in selectable()})

    def __getitem__(self, name: str) -> str:
        return self._choices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._choices)

    def __len__(self) -> int:
        return len(self._choices)

    def __hash__(self) -> int:
        return hash(tuple(self._choices.items()))

    def __repr__(self) -> str:
        return f"Sources({self._choices!r})"

    @property
    def oracle(self) -> list[str]:
        """The modalities asked to be rendered from the CAD model (table order)."""
        return [m for m, choice in self._choices.items() if choice == ORACLE]


def add_source_options(parser: argparse.ArgumentParser, help: Callable[[Modality], str]) -> None:
    """One `--<modality>` option per selectable modality (its choices, default auto): what
    `Sources.from_args` reads back."""
    for m in selectable():
        parser.add_argument(f"--{m.name}", dest=m.name, default=AUTO, choices=source_choices(m), help=help(m))


def missing_predict_weights(modality: Modality) -> str | None:
    """None when `pix3d.data.predict` is importable and has the weights of the modality's
    feature; else one line saying what is missing (an absent module counts as absent weights)."""
    try:
        from pix3d.data import predict  # lazy: its network is heavy and may not be installed
    except ImportError as exc:
        return f"the predict source needs the module pix3d/data/predict.py, which cannot be imported ({exc})"
    return predict.missing_weights(modality.predict)


def weights_status(requested: dict[str, str]) -> dict[str, bool]:
    """modality -> whether its prediction weights are present, for the modalities whose source
    may be `predict` (asked for, or auto): it enters the cache key."""
    return {m.name: missing_predict_weights(m) is None for m in selectable()
            if m.predict and requested[m.name] in (AUTO, PREDICT)}


def entry_plan(annotations: Sequence, maps: dict[str, dict[str, str]], requested: dict[str, str],
               weights: dict[str, bool], log: Callable[[str], None]
               ) -> tuple[dict[str, list[str | None]], dict[str, list[str]]]:
    """(files, kinds): per modality, each entry's file (relative to the root, None where it has
    none) and how its channels are made: files | <fallback> | predict | oracle | none.

    auto: files where the folder has the entry's map, else predict where the weights are
    present, else the fallback, else none (all-or-nothing without a fallback, as before)."""
    imgs = [a.img for a in annotations]
    files: dict[str, list[str | None]] = {}
    kinds: dict[str, list[str]] = {}
    for m in MODALITY_TABLE:
        if m.annotation:
            files[m.name] = [getattr(a, m.annotation) for a in annotations]
            kinds[m.name] = [FILES] * len(imgs)
            continue
        found = [maps.get(m.folder, {}).get(img) for img in imgs]
        mode = requested[m.name]
        if mode == FILES:
            missing = [img for img, f in zip(imgs, found) if f is None]
            if missing:
                raise UsageError(f"--{m.name} files: {m.folder}/ lacks maps for {len(missing)} of "
                                 f"{len(imgs)} entries (e.g. {missing[0]})")
        elif mode == PREDICT and (problem := missing_predict_weights(m)):
            raise UsageError(f"--{m.name} predict: {problem}")
        if mode != AUTO:
            files[m.name] = found if mode == FILES else [None] * len(imgs)
            kinds[m.name] = [mode] * len(imgs)
            continue
        if not m.fallback and not weights.get(m.name):
            found = _all_or_none(m, imgs, found, log)
        other = PREDICT if weights.get(m.name) else (m.fallback or NONE)
        files[m.name] = found
        kinds[m.name] = [FILES if f else other for f in found]
    return files, kinds


# What a boundaries map shows depends on where it came from. An oracle render draws the CAD
# model's 3D edges (occluding contours and creases), and so do the built-in set's boundaries/
# files (the same `edge_map` of its render); the published network (visualpriors
# 'edge_texture', Taskonomy's "2D texture edges") and the Canny fallback find texture edges in
# the photo. Files a user brings are whatever their maker drew.
EDGES_3D, EDGES_TEXTURE, EDGES_FILES = "3D edges", "texture edges", "edges from files"
EDGE_KINDS = {ORACLE: f"{EDGES_3D} (oracle: the CAD model's occluding contours and creases)",
              PREDICT: f"{EDGES_TEXTURE} (predicted: visualpriors 'edge_texture')",
              "canny": f"{EDGES_TEXTURE} (Canny-like, from rgb)"}
BUILTIN_EDGES = f"{EDGES_3D} (the built-in set's render: occluding contours and creases)"


def edges_label(kinds: Sequence[str], builtin: bool) -> str:
    """The manifest's `edges`: what the boundaries channel shows (3D or texture edges, and
    from where), for the kinds of every entry ("A for n, B for m" when they differ)."""
    def one(kind: str) -> str:
        if kind == FILES:
            return BUILTIN_EDGES if builtin else f"{EDGES_FILES} (kind not known)"
        return EDGE_KINDS.get(kind, UNAVAILABLE)
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[one(kind)] = counts.get(one(kind), 0) + 1
    if len(counts) <= 1:
        return next(iter(counts), UNAVAILABLE)
    return ", ".join(f"{label} for {n}" for label, n in counts.items())


def kind_source(modality: Modality, kind: str) -> str:
    """The per-entry word (meta.json, manifest) for how an entry got a modality."""
    if kind == FILES:
        return FROM_FILES
    if kind == PREDICT:
        return predicted_source(modality)
    if kind == ORACLE:
        from pix3d.render.oracle import ORACLE_SOURCE
        return ORACLE_SOURCE
    if kind == NONE:
        return UNAVAILABLE
    return FALLBACK_SOURCES[kind]


def entry_sources(modality: Modality, files: list[str | None], kinds: list[str] | None = None) -> list[str]:
    """Per entry: FROM_FILES, the fallback's / prediction's / oracle's description, or UNAVAILABLE."""
    if kinds is None:
        missing = modality.fallback or NONE
        kinds = [FILES if f else missing for f in files]
    return [kind_source(modality, k) for k in kinds]


def describe_source(modality: Modality, sources: list[str]) -> str:
    """The manifest's word for where one modality's channels of all entries came from."""
    if modality.annotation:
        return f"{modality.annotation} files"
    if not sources:
        return UNAVAILABLE
    n_files = sum(s == FROM_FILES for s in sources)
    if n_files == len(sources) or n_files == 0:
        return sources[0]
    other = next(s for s in sources if s != FROM_FILES)
    return f"{FROM_FILES} for {n_files}, {other} for {len(sources) - n_files}"
