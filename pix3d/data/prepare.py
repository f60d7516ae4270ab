"""Building a prepared cache: `prepare()`, its per-entry worker processes and the manifest.

Each entry is cropped to a square centred on its bbox (side = longest bbox side times
1 + 2*margin, padded with zeros outside the image), resized to the size asked for
(antialiased), and its channels are stacked in the order of `pix3d.constants.MODALITY_TABLE`
(rgb 0:3, mask 3, boundaries 4, normals 5:8). Where each modality comes from is
`pix3d.data.maps`, a fallback's derivation `FALLBACKS` here; the cache's layout and key are `pix3d.data.cache`. The manifest says
where each channel came from. The folder is built beside its final place and renamed into
it, so a crash or a bad entry never leaves a half-written cache.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import UnidentifiedImageError
from tqdm import tqdm

from pix3d.constants import CACHE_CHANNELS, MODALITIES, MODALITY_CHANNELS, MODALITY_TABLE
from pix3d.data.annotations import Annotation, parse_entries, read_entries
from pix3d.data.cache import (
    PREPARE_VERSION,
    PreparedData,
    cache_bytes,
    cache_key,
    default_cache_dir,
    load_prepared,
    remove_stale_temp_dirs,
)
from pix3d.data.edges import canny_edges
from pix3d.data.images import crop_box, crop_resize
from pix3d.data.maps import (
    CANNY_SETTINGS,
    FALLBACK_SOURCES,
    MAP_FOLDERS,
    UNAVAILABLE,
    describe_source,
    entry_files,
    entry_sources,
    find_maps,
)
from pix3d.data.pose import angles
from pix3d.errors import Pix3DError, UsageError
from pix3d.fileio import atomic_dir, check_free_space, write_json

MIN_SIZE = 16


def _canny_from_rgb(out: np.ndarray) -> np.ndarray:
    """The `canny` fallback: edges of the entry's already decoded RGB channels."""
    lo, hi = MODALITY_CHANNELS["rgb"]
    return canny_edges(out[lo:hi].transpose(1, 2, 0), **CANNY_SETTINGS)[None]


# How each fallback of the modality table derives a channel from what is decoded before it.
FALLBACKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"canny": _canny_from_rgb}


def _prepare_entry(task: tuple) -> tuple[int, np.ndarray | None, str | None]:
    """Worker: (position, C x S x S uint8 or None, error message or None) for one entry.

    `files` holds one path (or None) per row of the modality table, in its order, so a
    fallback may use the modalities decoded before it."""
    position, root, files, frame, bbox, size, margin = task
    box = crop_box(bbox, margin)
    out = np.zeros((CACHE_CHANNELS, size, size), dtype=np.uint8)
    current = files[0]
    try:
        for modality, rel in zip(MODALITY_TABLE, files):
            lo, hi = MODALITY_CHANNELS[modality.name]
            if rel is not None:
                current = rel
                out[lo:hi] = crop_resize(Path(root) / rel, box, frame, size, modality.decode)
            elif modality.fallback:
                out[lo:hi] = FALLBACKS[modality.fallback](out)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return position, None, f"cannot decode {current}: {exc}"
    return position, out, None


def _resolve_dataset(data: str | Path, cache_dir: Path, log: Callable) -> tuple[Path, str]:
    """(dataset root, its name): "synthetic" is the built-in set, generated when missing."""
    if str(data) == "synthetic":
        try:
            from pix3d.render.synthetic import ensure_builtin  # lazy: generating is its own module's job
        except ImportError as exc:
            raise Pix3DError(f"the built-in synthetic set is not available ({exc})") from None
        return Path(ensure_builtin(cache_dir, log=log)), "synthetic"
    root = Path(data).expanduser()
    return root, root.resolve().name if root.exists() else root.name


def _check_settings(size: int, margin: float, workers: int | None) -> int:
    """Refuse a bad size, margin or worker count; the number of workers to use."""
    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_SIZE:
        raise UsageError(f"--size must be an integer of at least {MIN_SIZE} pixels, got {size!r}")
    if not (isinstance(margin, (int, float)) and 0.0 <= margin <= 2.0):
        raise UsageError(f"--margin must be between 0 and 2 (fraction of the bbox side), got {margin!r}")
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if not isinstance(workers, int) or workers < 1:
        raise UsageError(f"--workers must be a positive integer, got {workers!r}")
    return workers


def _reuse(final: Path, name: str, size: int, log: Callable[[str], None]) -> PreparedData:
    """Open an existing cache, saying so (and how many entries its build skipped)."""
    data = load_prepared(final)
    skipped_before = len(data.manifest.get("skipped", []))
    log(
        f"cache hit: {final} ({len(data)} entries of {name} at {size} px"
        + (f", {skipped_before} invalid entries skipped when it was built)" if skipped_before else ")")
    )
    return data


def prepare(
    data: str | Path,
    size: int,
    *,
    cache_dir: Path | None = None,
    skip_invalid: bool = False,
    margin: float = 0.1,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> PreparedData:
    """Prepare (or reuse) the cache of a dataset folder or of "synthetic" at `size` pixels."""
    workers = _check_settings(size, margin, workers)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    root, name = _resolve_dataset(data, cache_dir, log)
    json_path, json_bytes, raw_entries = read_entries(root)
    # The key needs only the raw json and file stamps, so a cache hit skips validation.
    maps = {folder: find_maps(root, folder, raw_entries) for folder in MAP_FOLDERS}
    settings = {"size": size, "margin": float(margin), "skip_invalid": bool(skip_invalid)}
    key = cache_key(root, json_bytes, raw_entries, maps, settings)
    prepared_root = cache_dir / "prepared"
    final = prepared_root / key
    if (final / "manifest.json").is_file():
        return _reuse(final, name, size, log)

    annotations, skipped = parse_entries(root, json_path, raw_entries, skip_invalid=skip_invalid, progress=progress)
    for message in skipped:
        log(f"skipped {message}")
    files = entry_files(annotations, maps, log)

    log(f"preparing {len(annotations)} entries of {name} ({root}) at {size} px, margin {margin}, {workers} workers -> {final}")
    prepared_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(prepared_root, log)
    # The images go through a memmap, which dies of SIGBUS (no error, no clean-up) when the
    # disk fills up under it: check the space first, and reserve it (_reserve) once created.
    needed = cache_bytes(len(annotations), size)
    check_free_space(prepared_root, needed)
    with atomic_dir(final, needed=needed, keep_existing=True) as tmp:
        kept, decode_skipped = _build(tmp, root, annotations, files, size, margin, workers, progress, skip_invalid)
        for message in decode_skipped:
            log(f"skipped {message}")
        skipped = skipped + decode_skipped
        if not kept:
            raise Pix3DError(f"{json_path}: no entry could be decoded ({len(decode_skipped)} skipped)")
        annotations = [annotations[i] for i in kept]
        sources = {m.name: entry_sources(m, [files[m.name][i] for i in kept]) for m in MODALITY_TABLE}
        meta = _entry_meta(annotations, sources)
        dataset = {"name": name, "path": str(root.resolve()), "json_sha256": hashlib.sha256(json_bytes).hexdigest()}
        manifest = _manifest(key, dataset, settings, annotations, skipped, sources)
        write_json(tmp / "meta.json", meta)
        write_json(tmp / "manifest.json", manifest)  # written last: marks completeness
        if (final / "manifest.json").is_file():
            log(f"another process prepared {final} meanwhile; using it")
    log(f"prepared {final}: {len(annotations)} entries, " + ", ".join(
        f"{m.name} from {manifest['sources'][m.name]}" for m in MODALITY_TABLE if m.folder))
    return load_prepared(final)


def _entry_meta(annotations: list[Annotation], sources: dict[str, list[str]]) -> dict:
    """meta.json: per-entry arrays (paths, category, model, angles in degrees, bbox, flags,
    and `<modality>_source` for modalities whose source may differ per entry)."""
    pose = np.array([angles(a) for a in annotations], dtype=np.float64).reshape(-1, 3)
    return {
        "index": [a.index for a in annotations],
        "img": [a.img for a in annotations],
        "mask": [a.mask for a in annotations],
        "category": [a.category for a in annotations],
        "model": [a.model for a in annotations],
        "azimuth": pose[:, 0].tolist(),
        "elevation": pose[:, 1].tolist(),
        "inplane": pose[:, 2].tolist(),
        "bbox": [list(a.bbox) for a in annotations],
        "img_size": [list(a.img_size) for a in annotations],
        "truncated": [a.truncated for a in annotations],
        "occluded": [a.occluded for a in annotations],
        "slightly_occluded": [a.slightly_occluded for a in annotations],
        **{f"{m.name}_source": sources[m.name] for m in MODALITY_TABLE if m.fallback},
    }


def _manifest(
    key: str,
    dataset: dict,
    settings: dict,
    annotations: list[Annotation],
    skipped: list[str],
    sources: dict[str, list[str]],
) -> dict:
    """manifest.json: what the cache holds, from which dataset and settings, and each channel's source."""
    categories: dict[str, int] = {}
    for a in annotations:
        categories[a.category] = categories.get(a.category, 0) + 1
    return {
        "key": key,
        "version": PREPARE_VERSION,
        "dataset": dataset,
        "n": len(annotations),
        **settings,  # size, margin, skip_invalid
        "skipped": skipped,
        "categories": dict(sorted(categories.items())),
        "channels": {m: list(MODALITY_CHANNELS[m]) for m in MODALITIES},
        "sources": {m.name: describe_source(m, sources[m.name]) for m in MODALITY_TABLE},
        "available": {m.name: UNAVAILABLE not in sources[m.name] for m in MODALITY_TABLE},
        "canny": CANNY_SETTINGS if any(FALLBACK_SOURCES["canny"] in v for v in sources.values()) else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _reserve(path: Path) -> None:
    """Allocate every block of a fresh (sparse) memmap file now, so a full disk is an
    ENOSPC OSError here instead of a SIGBUS while writing pixels through the map."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return  # file system without fallocate: the free-space check must do
            raise


def _build(
    tmp: Path,
    root: Path,
    annotations: list[Annotation],
    files: dict[str, list[str | None]],
    size: int,
    margin: float,
    workers: int,
    progress: bool,
    skip_invalid: bool,
) -> tuple[list[int], list[str]]:
    """Decode every entry into tmp/images.npy; (positions kept, messages for skipped)."""
    n = len(annotations)
    tasks = [
        (i, str(root), tuple(files[m.name][i] for m in MODALITY_TABLE), a.img_size, a.bbox, size, margin)
        for i, a in enumerate(annotations)
    ]
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, CACHE_CHANNELS, size, size))
    _reserve(tmp / "images.npy")
    failed: dict[int, str] = {}
    started = time.perf_counter()
    bar = tqdm(total=n, desc="prepare", unit="img", disable=not progress, dynamic_ncols=True)
    pool = None
    try:
        if workers > 1 and n > 1:
            pool = multiprocessing.get_context().Pool(min(workers, n))
            chunksize = max(1, min(32, n // (workers * 8)))
            results = pool.imap_unordered(_prepare_entry, tasks, chunksize=chunksize)
        else:
            results = map(_prepare_entry, tasks)
        for position, array, error in results:
            if error is not None:
                ann = annotations[position]
                message = f"{ann.where()}: {error}"
                if not skip_invalid:
                    raise Pix3DError(f"{message} (use --skip-invalid to skip bad entries)")
                failed[position] = message
            else:
                images[position] = array
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    elapsed = time.perf_counter() - started
    kept = [i for i in range(n) if i not in failed]
    if failed:
        # Rare path (a file whose header reads but whose pixels do not): compact the rows.
        compact = np.lib.format.open_memmap(
            tmp / "images.compact.npy", mode="w+", dtype=np.uint8, shape=(len(kept), CACHE_CHANNELS, size, size)
        )
        _reserve(tmp / "images.compact.npy")
        for j, i in enumerate(kept):
            compact[j] = images[i]
        compact.flush()
        del compact
        del images
        os.replace(tmp / "images.compact.npy", tmp / "images.npy")
    else:
        images.flush()
        del images
    if progress and n:
        tqdm.write(f"decoded {n} entries in {elapsed:.1f}s ({n / max(elapsed, 1e-9):.0f} img/s)")
    return kept, [failed[i] for i in sorted(failed)]
