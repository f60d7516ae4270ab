"""Where the boundaries and normals channels come from, and how the manifest says so.

Boundaries and normals come from `boundaries/` and `normals/` folders that mirror `img/`
(how a user brings maps from their own network): `find_map` / `find_maps` locate them.
Where boundaries are absent they are derived with a Canny edge detector on the cropped RGB
(`CANNY_SETTINGS`); where normals are absent they are marked unavailable, never silently
zero (rendering them from the CAD model at the true pose would leak the label).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

BOUNDARIES_FROM_FILES = "files"
BOUNDARIES_DERIVED = "canny-like edges from rgb"
NORMALS_UNAVAILABLE = "unavailable"
# Edge detector settings for derived boundaries (recorded in the manifest; changing them
# needs a pix3d.data.cache.PREPARE_VERSION bump so old caches miss).
CANNY_SETTINGS = {"sigma": 1.0, "high_quantile": 0.8, "low_ratio": 0.4, "min_high": 20.0}
MAP_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


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


def normals_all_or_none(imgs: list[str], normals: list[str | None], log: Callable[[str], None]) -> list[str | None]:
    """Each entry's normals file, or None for every entry where any of them lacks one."""
    # Normals are all-or-nothing: a partly filled channel would be silently wrong zeros.
    if all(n is not None for n in normals):
        return normals
    missing = sum(n is None for n in normals)
    if missing < len(normals):
        example = imgs[normals.index(None)]
        log(f"normals/ lacks maps for {missing} of {len(normals)} entries (e.g. {example}): normals marked unavailable")
    return [None] * len(normals)


def _describe_boundaries(sources: list[str]) -> str:
    """The manifest's word for where the boundaries of all entries came from."""
    n_files = sum(s == BOUNDARIES_FROM_FILES for s in sources)
    if n_files == len(sources):
        return BOUNDARIES_FROM_FILES
    if n_files == 0:
        return BOUNDARIES_DERIVED
    return f"{BOUNDARIES_FROM_FILES} for {n_files}, {BOUNDARIES_DERIVED} for {len(sources) - n_files}"


def describe_sources(boundary_sources: list[str], normals_available: bool) -> dict[str, str]:
    """The manifest's `sources`: where each modality's channels came from."""
    return {
        "rgb": "img files",
        "mask": "mask files",
        "boundaries": _describe_boundaries(boundary_sources),
        "normals": "files" if normals_available else NORMALS_UNAVAILABLE,
    }
