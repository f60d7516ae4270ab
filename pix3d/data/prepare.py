"""Building a prepared cache: `prepare()`, its per-entry worker processes and the manifest.

Each entry is cropped (`crop`, part of the cache key: `margin`, a square centred on its bbox, side =
longest bbox side times 1 + 2*margin, padded with zeros outside the image; or `published`,
Pose-from-Shape's letterboxed mask rectangle, `pix3d.data.images`), resized to the size asked for
(antialiased), and its channels are stacked in the order of `pix3d.constants.MODALITY_TABLE` (rgb 0:3,
mask 3, boundaries 4, normals 5:8). Where each modality comes from is `pix3d.data.maps` (files, a
fallback, a prediction or an oracle render: `prepare(sources=)`, a `Sources` mapping), one entry's work
`pix3d.data.entry`; the cache's layout and key are `pix3d.data.cache`. The manifest says where each
channel came from (an oracle says so), and meta.json records per entry the IoU of the model's rendered
silhouette with the mask. The folder is built beside its final place and renamed into it, so a crash
or a bad entry never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from tqdm import tqdm

from pix3d.constants import CACHE_CHANNELS, MODALITIES, MODALITY_CHANNELS, MODALITY_TABLE
from pix3d.data.annotations import Annotation, parse_entries, read_entries
from pix3d.data.cache import (PREPARE_VERSION, PreparedData, cache_bytes, cache_key, default_cache_dir, load_prepared,
                              remove_stale_temp_dirs)
from pix3d.data.entry import EntryResult, EntryTask, prepare_entry
from pix3d.data.images import CROPS
from pix3d.data.maps import (CANNY_SETTINGS, FALLBACK_SOURCES, FROM_FILES, MAP_FOLDERS, NONE, ORACLE, UNAVAILABLE,
                             Sources, describe_source, edges_label, entry_plan, entry_sources, find_maps, selectable,
                             weights_status)
from pix3d.data.pose import angles
from pix3d.data.render_check import render_summary
from pix3d.data.splits import MembershipMatch, match_published
from pix3d.errors import Pix3DError, UsageError, one_line
from pix3d.fileio import atomic_dir, check_free_space, reserve_blocks, write_json
from pix3d.render.oracle import EDGE_SETTINGS
from pix3d.render.synthetic import STAMP_NAME

MIN_SIZE = 16


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


def plan_sources(data: str | Path, sources: Mapping[str, str | None] | None = None, *, skip_invalid: bool = False,
                 **by_name: str) -> tuple[int, dict[str, str]]:
    """(entries, {modality: where prepare would take it from, or UNAVAILABLE}) of a dataset
    folder for `sources` (as `prepare`'s), without building anything: what `search.run
    --dry-run` checks a grid against. The built-in set is never generated here (it has files
    of every modality the renderer draws, `render=`)."""
    requested = Sources(sources, **by_name)
    if str(data) == "synthetic":
        return 0, {m.name: FROM_FILES if m.render else UNAVAILABLE for m in MODALITY_TABLE}
    root = Path(data).expanduser()
    json_path, _, raw_entries = read_entries(root)
    annotations, _ = parse_entries(root, json_path, raw_entries, skip_invalid=skip_invalid, progress=False)
    maps = {folder: find_maps(root, folder, raw_entries) for folder in MAP_FOLDERS}
    files, kinds = entry_plan(annotations, maps, requested, weights_status(requested), log=lambda _: None)
    return len(annotations), {m.name: describe_source(m, entry_sources(m, files[m.name], kinds[m.name]))
                              for m in MODALITY_TABLE}


def published_split_plan(data: str | Path) -> MembershipMatch:
    """How `--split published` applies to a dataset folder (or "synthetic"), from its json's
    img paths only (nothing built or validated): what a command says, or refuses with one
    line (`pix3d.data.splits.match_published`), before anything is written."""
    if str(data) == "synthetic":
        return match_published([], "synthetic", builtin=True)
    root = Path(data).expanduser()
    _, _, raw_entries = read_entries(root)
    imgs = [e["img"] for e in raw_entries if isinstance(e, dict) and isinstance(e.get("img"), str)]
    return match_published(imgs, root.resolve().name, builtin=(root / STAMP_NAME).is_file())


def _membership_record(annotations: list[Annotation], name: str, builtin: bool) -> dict:
    """The manifest's record of how the published split applies to the cache's entries."""
    try:  # a disagreement is recorded: the cache serves the other splits, a published run refuses
        return match_published([a.img for a in annotations], name, builtin=builtin).record()
    except Pix3DError as exc:
        return {"membership": "disagrees", "error": str(exc)}


def _check_settings(size: int, margin: float, workers: int | None, crop: str = "margin") -> int:
    """Refuse a bad size, margin, crop or worker count; the number of workers to use."""
    if crop not in CROPS:
        raise UsageError(f"--crop must be one of {', '.join(CROPS)}, got {crop!r}")
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
    sources: Mapping[str, str | None] | None = None,
    crop: str = "margin",
    progress: bool = True,
    log: Callable[[str], None] = print,
    **by_name: str,
) -> PreparedData:
    """Prepare (or reuse) the cache of a dataset folder or of "synthetic" at `size` pixels.

    `sources` (a `pix3d.data.maps.Sources`, or one keyword per modality: `normals="oracle"`):
    auto | files | predict | oracle | none | the modality's fallback (canny); see
    `pix3d.data.maps.entry_plan`. `crop`: margin | published (`pix3d.data.images`; `margin` is
    unused by `published`). All enter the cache key, so a cache of another crop is never
    reused: a new one is built beside it."""
    workers = _check_settings(size, margin, workers, crop)
    requested = Sources(sources, **by_name)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    root, name = _resolve_dataset(data, cache_dir, log)
    json_path, json_bytes, raw_entries = read_entries(root)
    # The key needs only the raw json and file stamps, so a cache hit skips validation.
    maps = {folder: find_maps(root, folder, raw_entries) for folder in MAP_FOLDERS}
    weights = weights_status(requested)
    oracle = requested.oracle
    settings = {"size": size, "crop": crop, "margin": float(margin), "skip_invalid": bool(skip_invalid),
                "requested_sources": dict(requested), "predict_weights": weights,
                "oracle_edges": EDGE_SETTINGS if oracle else None}
    key = cache_key(root, json_bytes, raw_entries, maps, settings)
    prepared_root = cache_dir / "prepared"
    final = prepared_root / key
    if (final / "manifest.json").is_file():
        return _reuse(final, name, size, log)

    annotations, skipped = parse_entries(root, json_path, raw_entries, skip_invalid=skip_invalid, progress=progress)
    for message in skipped:
        log(f"skipped {message}")
    files, kinds = entry_plan(annotations, maps, requested, weights, log)

    how = "Pose-from-Shape's crop (mask rectangle, letterboxed)" if crop == "published" else f"margin {margin}"
    log(f"preparing {len(annotations)} entries of {name} ({root}) at {size} px, {how}, {workers} workers -> {final}")
    prepared_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(prepared_root, log)
    # The images go through a memmap, which dies of SIGBUS (no error, no clean-up) when the
    # disk fills up under it: check the space first, and reserve it (reserve_blocks) once created.
    needed = cache_bytes(len(annotations), size)
    check_free_space(prepared_root, needed)
    with atomic_dir(final, needed=needed, keep_existing=True) as tmp:
        kept, decode_skipped, checks = _build(tmp, root, annotations, files, kinds, size, margin, workers,
                                              progress, skip_invalid, oracle, crop)
        for message in decode_skipped:
            log(f"skipped {message}")
        skipped = skipped + decode_skipped
        if not kept:
            raise Pix3DError(f"{json_path}: no entry could be decoded ({len(decode_skipped)} skipped)")
        annotations = [annotations[i] for i in kept]
        kinds = {m: [k[i] for i in kept] for m, k in kinds.items()}
        ious = [checks[i][0] for i in kept]
        problems = [checks[i][1] for i in kept]
        notes = _render_notes(annotations, problems, oracle, kinds, log)
        sources = {m.name: entry_sources(m, [files[m.name][i] for i in kept], kinds[m.name]) for m in MODALITY_TABLE}
        meta = _entry_meta(annotations, sources, ious, problems)
        builtin = (root / STAMP_NAME).is_file()  # the built-in set, by its generator's stamp
        dataset = {"name": name, "path": str(root.resolve()), "json_sha256": hashlib.sha256(json_bytes).hexdigest(),
                   "builtin": builtin}
        manifest = _manifest(key, dataset, settings, annotations, skipped, sources)
        manifest["published_split"] = _membership_record(annotations, name, builtin)
        manifest["oracle"] = oracle
        # What the boundaries channel shows; the built-in set (its stamp, pix3d.render.synthetic's
        # STAMP_NAME, beside pix3d.json) draws its boundaries/ files from its render.
        manifest["edges"] = edges_label(kinds["boundaries"], builtin=(root / "synthetic.json").is_file())
        manifest["sources"].update(notes)
        manifest["render_check"] = render_summary(ious, problems)
        write_json(tmp / "meta.json", meta)
        write_json(tmp / "manifest.json", manifest)  # written last: marks completeness
        if (final / "manifest.json").is_file():
            log(f"another process prepared {final} meanwhile; using it")
    log(f"prepared {final}: {len(annotations)} entries, " + ", ".join(
        f"{m.name} from {manifest['sources'][m.name]}" for m in MODALITY_TABLE if m.folder))
    return load_prepared(final)


def _render_notes(annotations: list[Annotation], problems: list[str | None], oracle: list[str],
                  kinds: dict[str, list[str]], log: Callable[[str], None]) -> dict[str, str]:
    """Say which entries' models could not be rendered. With an oracle source that makes the
    oracle modalities unavailable (never a blank map; `--skip-invalid` skips those entries
    instead): `kinds` is updated, and the manifest's words for them are returned."""
    failed = [(a, p) for a, p in zip(annotations, problems) if p]
    if not failed:
        return {}
    if not oracle:
        a, p = failed[0]
        log(f"render check: {len(failed)} of {len(annotations)} entries' models cannot be rendered "
            f"(e.g. {a.where()}: {p}); `python -m pix3d.inspect DIR --render-check` lists them")
        return {}
    for a, p in failed:
        log(f"{a.where()}: {p}: its oracle {' and '.join(oracle)} are unavailable")
    for m in oracle:
        kinds[m] = [NONE] * len(kinds[m])
    log(f"oracle {' and '.join(oracle)} marked unavailable: {len(failed)} of {len(annotations)} entries "
        "cannot be rendered (listed above); --skip-invalid skips those entries instead")
    return {m: f"{UNAVAILABLE}: {ORACLE} render failed for {len(failed)} of {len(annotations)} entries"
            for m in oracle}


def _entry_meta(annotations: list[Annotation], sources: dict[str, list[str]],
                ious: list[float | None], problems: list[str | None]) -> dict:
    """meta.json: per-entry arrays (paths, category, model, angles in degrees, bbox, flags,
    `<modality>_source` for modalities whose source may differ per entry, and the render
    check: `render_iou` of the model's silhouette with the mask, `render_problem`)."""
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
        **{f"{m.name}_source": sources[m.name] for m in selectable()},
        "render_iou": [None if v is None else round(float(v), 5) for v in ious],
        "render_problem": problems,
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
        **settings,  # size, crop, margin, skip_invalid, requested_sources, predict_weights, oracle_edges
        "skipped": skipped,
        "categories": dict(sorted(categories.items())),
        "channels": {m: list(MODALITY_CHANNELS[m]) for m in MODALITIES},
        "sources": {m.name: describe_source(m, sources[m.name]) for m in MODALITY_TABLE},
        "available": {m.name: UNAVAILABLE not in sources[m.name] for m in MODALITY_TABLE},
        "canny": CANNY_SETTINGS if any(FALLBACK_SOURCES["canny"] in v for v in sources.values()) else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _worker_context():
    """Fork when the caller runs one thread (the safe case; an unguarded script keeps working),
    else forkserver: workers forked from a clean server, not from a caller holding threads that
    fork does not survive (a Ray driver; a CI run once hung in a forked pool). Like spawn, it
    imports the caller's main module in each worker (our commands guard theirs)."""
    if all(t is threading.main_thread() or t is tqdm.monitor for t in threading.enumerate()):
        return multiprocessing.get_context("fork")  # tqdm's monitor sleeps, and workers never touch tqdm
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pix3d.data.entry"])  # imported once, by the server
    return context


def _main_guard_hint(context) -> str:
    main = sys.modules.get("__main__")
    if context is None or context.get_start_method() != "forkserver" or not getattr(main, "__file__", None) \
            or getattr(getattr(main, "__spec__", None), "name", None):
        return ""
    return f"; a script calling prepare() with threads running needs `if __name__ == \"__main__\":` ({main.__file__})"


def _build(
    tmp: Path,
    root: Path,
    annotations: list[Annotation],
    files: dict[str, list[str | None]],
    kinds: dict[str, list[str]],
    size: int,
    margin: float,
    workers: int,
    progress: bool,
    skip_invalid: bool,
    oracle: list[str],
    crop: str = "margin",
) -> tuple[list[int], list[str], dict[int, tuple[float | None, str | None]]]:
    """Decode every entry into tmp/images.npy; (positions kept, messages for skipped, position
    -> (silhouette IoU, render problem)). With an oracle source and --skip-invalid, an entry
    whose model cannot be rendered is skipped like one whose file cannot be decoded."""
    n = len(annotations)
    tasks = [
        EntryTask(i, str(root), tuple(files[m.name][i] for m in MODALITY_TABLE),
                  tuple(kinds[m.name][i] for m in MODALITY_TABLE), a.img_size, a.bbox, size, margin,
                  a.model, tuple(map(tuple, a.rot_mat.tolist())), tuple(a.trans_mat.tolist()),
                  float(a.focal_length), crop=crop)
        for i, a in enumerate(annotations)
    ]
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, CACHE_CHANNELS, size, size))
    reserve_blocks(tmp / "images.npy")
    failed: dict[int, str] = {}
    checks: dict[int, tuple[float | None, str | None]] = {}
    started = time.perf_counter()
    # The pool first: forked before the progress bar starts tqdm's monitor thread.
    context = _worker_context() if workers > 1 and n > 1 else None
    pool = ProcessPoolExecutor(min(workers, n), mp_context=context) if context else None
    bar = tqdm(total=n, desc="prepare", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        results = (pool.map(prepare_entry, tasks, chunksize=max(1, min(32, n // (workers * 8)))) if pool
                   else map(prepare_entry, tasks))
        for result in results:
            result: EntryResult
            position = result.position
            error = result.error
            if error is None and oracle and result.render_problem and skip_invalid:
                error = f"{result.render_problem}: cannot render its oracle {' and '.join(oracle)}"
            if error is not None:
                ann = annotations[position]
                message = f"{ann.where()}: {error}"
                if not skip_invalid:
                    raise Pix3DError(f"{message} (use --skip-invalid to skip bad entries)")
                failed[position] = message
            else:
                images[position] = result.array
                checks[position] = (result.iou, result.render_problem)
            bar.update(1)
    except (BrokenProcessPool, EOFError) as exc:  # a worker (or their server) killed: said, never waited on
        raise Pix3DError(f"a worker preparing {root} died ({one_line(exc)}); run again, or with --workers 1 "
                         f"to see which entry it was{_main_guard_hint(context)}") from None
    finally:
        bar.close()
        if pool is not None:  # after an error: the queued chunks are dropped, running ones finish
            pool.shutdown(wait=True, cancel_futures=True)
    elapsed = time.perf_counter() - started
    kept = [i for i in range(n) if i not in failed]
    if failed:
        # Rare path (a file whose header reads but whose pixels do not): compact the rows.
        compact = np.lib.format.open_memmap(
            tmp / "images.compact.npy", mode="w+", dtype=np.uint8, shape=(len(kept), CACHE_CHANNELS, size, size)
        )
        reserve_blocks(tmp / "images.compact.npy")
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
    return kept, [failed[i] for i in sorted(failed)], checks
