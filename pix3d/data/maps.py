"""Where each modality's channels come from, per entry, and how the manifest says so.

The sources follow `pix3d.constants.MODALITY_TABLE`: a modality with an `annotation` key is
read from the file every entry names (img, mask); one with a `folder` from the file of that
folder that mirrors `img/` (how a user brings maps from their own network: `find_map`).
Where an entry has no such file, the modality's `fallback` derives it (`canny`: a Canny-like
edge detector on the cropped RGB, `CANNY_SETTINGS`); a modality without a fallback is
all-or-nothing: if any entry lacks its file, it is unavailable for the whole cache, never
silently zero (rendering normals from the CAD model at the true pose would leak the label).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from pix3d.constants import MODALITY_TABLE, Modality

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


def entry_files(annotations: Sequence, maps: dict[str, dict[str, str]],
                log: Callable[[str], None]) -> dict[str, list[str | None]]:
    """modality -> each entry's file (relative to the dataset root), None where there is none
    (then the modality's fallback derives it, or the modality is unavailable)."""
    imgs = [a.img for a in annotations]
    files: dict[str, list[str | None]] = {}
    for m in MODALITY_TABLE:
        if m.annotation:
            files[m.name] = [getattr(a, m.annotation) for a in annotations]
        else:
            found = [maps.get(m.folder, {}).get(img) for img in imgs]
            files[m.name] = found if m.fallback else _all_or_none(m, imgs, found, log)
    return files


def entry_sources(modality: Modality, files: list[str | None]) -> list[str]:
    """Per entry: FROM_FILES, the fallback's description, or UNAVAILABLE."""
    missing = FALLBACK_SOURCES[modality.fallback] if modality.fallback else UNAVAILABLE
    return [FROM_FILES if f else missing for f in files]


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
