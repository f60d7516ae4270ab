"""Turn a Pix3D-format folder into one training-ready uint8 cache, once.

    python -m pix3d.prepare --data DIR|synthetic --size PX [--cache DIR] [--margin F]
                            [--workers N] [--skip-invalid]

Each entry is cropped to a square centred on its bbox (side = longest bbox side times
1 + 2*margin, padded with zeros outside the image), resized to PX (antialiased), and its
eight channels are stacked: rgb 0:3, mask 3, boundaries 4, normals 5:8
(`pix3d.constants.MODALITY_CHANNELS`). Boundaries and normals come from `boundaries/` and
`normals/` folders that mirror `img/` (how a user brings maps from their own network); where
boundaries are absent they are derived with a Canny edge detector on the cropped RGB; where
normals are absent they are marked unavailable, never silently zero (rendering them from the
CAD model at the true pose would leak the label). The manifest says where each came from.

Trials never decode images: they read `<cache>/prepared/<key>/images.npy` (memory-mapped).
The key hashes the json, the files' sizes and mtimes and the settings, so a second call
with the same inputs is a cache hit. The folder is built beside its final place and
renamed into it, so a crash or a bad entry never leaves a half-written cache.
"""

from __future__ import annotations

import argparse
import functools
import errno
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pix3d.annotations import Annotation, parse_entries, read_entries
from pix3d.cli import ArgumentParser, run_cli
from pix3d.constants import CACHE_CHANNELS, MODALITIES, MODALITY_CHANNELS
from pix3d.errors import Pix3DError, UsageError
from pix3d.fileio import atomic_dir, check_free_space, write_json
from pix3d.pose import angles

# Bump when the preprocessing changes what ends up in images.npy: old caches then miss.
PREPARE_VERSION = 1
MIN_SIZE = 16
BOUNDARIES_FROM_FILES = "files"
BOUNDARIES_DERIVED = "canny-like edges from rgb"
NORMALS_UNAVAILABLE = "unavailable"
# Edge detector settings for derived boundaries (recorded in the manifest; changing them
# needs a PREPARE_VERSION bump so old caches miss).
CANNY_SETTINGS = {"sigma": 1.0, "high_quantile": 0.8, "low_ratio": 0.4, "min_high": 20.0}
MAP_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

Image.MAX_IMAGE_PIXELS = None  # real Pix3D has ~20-megapixel photos


def default_cache_dir() -> Path:
    """$PIX3D_CACHE if set, else ~/.cache/pix3d-pose."""
    env = os.environ.get("PIX3D_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pix3d-pose"


@dataclass
class PreparedData:
    """A prepared cache: images (uint8 N x 8 x S x S, possibly read-only) plus per-entry labels."""

    images: np.ndarray
    azimuth: np.ndarray
    elevation: np.ndarray
    inplane: np.ndarray
    categories: list[str]
    model_ids: list[str]
    img_paths: list[str]
    available: dict[str, bool]
    manifest: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ------------------------------------------------------------------------ edge detector


TAN_22_5 = math.tan(math.radians(22.5))
TAN_67_5 = math.tan(math.radians(67.5))


@functools.lru_cache(maxsize=8)
def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _convolve_rows_cols(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable convolution with reflected borders (same size out)."""
    radius = len(kernel) // 2
    padded = np.pad(image, radius, mode="reflect")
    height, width = image.shape
    rows = sum(np.float32(w) * padded[:, k : k + width] for k, w in enumerate(kernel))
    return sum(np.float32(w) * rows[k : k + height, :] for k, w in enumerate(kernel))


def canny_edges(
    rgb: np.ndarray, *, sigma: float = 1.0, high_quantile: float = 0.8, low_ratio: float = 0.4,
    min_high: float = 20.0,
) -> np.ndarray:
    """Canny edge map (uint8 H x W, 0 or 255) of an RGB uint8 H x W x 3 image.

    Gaussian blur, Sobel gradients, non-maximum suppression along the gradient direction
    and hysteresis. Thresholds adapt to the image: `high` is a quantile of the ridge
    magnitudes (at least `min_high`, so flat images give no edges), `low` = low_ratio * high.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        gray = rgb.astype(np.float32)
    else:
        rgb = rgb.astype(np.float32)
        gray = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    smooth = _convolve_rows_cols(gray, _gaussian_kernel(sigma))

    p = np.pad(smooth, 1, mode="edge")
    height, width = gray.shape
    s = lambda dy, dx: p[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]  # noqa: E731
    gx = (s(-1, 1) + 2 * s(0, 1) + s(1, 1)) - (s(-1, -1) + 2 * s(0, -1) + s(1, -1))
    gy = (s(1, -1) + 2 * s(1, 0) + s(1, 1)) - (s(-1, -1) + 2 * s(-1, 0) + s(-1, 1))
    magnitude = np.hypot(gx, gy)

    # Quantise the gradient direction to 0, 45, 90, 135 degrees (by slope comparisons, cheaper
    # than arctan2) and keep a pixel only if it is at least as strong as both neighbours
    # along that direction. Image rows grow downwards: gx>0, gy>0 points down-right.
    abs_gx, abs_gy = np.abs(gx), np.abs(gy)
    horizontal = abs_gy <= TAN_22_5 * abs_gx
    vertical = abs_gy >= TAN_67_5 * abs_gx
    diagonal = ~(horizontal | vertical)
    falling = diagonal & ((gx > 0) == (gy > 0))
    sectors = {0: horizontal, 1: falling, 2: vertical, 3: diagonal & ~falling}
    m = np.pad(magnitude, 1, mode="constant")
    n = lambda dy, dx: m[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]  # noqa: E731
    neighbours = {0: ((0, 1), (0, -1)), 1: ((1, 1), (-1, -1)), 2: ((1, 0), (-1, 0)), 3: ((1, -1), (-1, 1))}
    ridge = np.zeros_like(magnitude, dtype=bool)
    for k, (a, b) in neighbours.items():
        keep = sectors[k] & (magnitude >= n(*a)) & (magnitude >= n(*b))
        ridge |= keep
    ridge &= magnitude > 0

    values = magnitude[ridge]
    if values.size == 0:
        return np.zeros(gray.shape, dtype=np.uint8)
    high = max(float(np.quantile(values, high_quantile)), min_high)
    low = low_ratio * high
    strong = ridge & (magnitude >= high)
    weak = ridge & (magnitude >= low)

    # Hysteresis: grow the strong set through 8-connected weak pixels until nothing changes.
    edges = strong
    while True:
        e = np.pad(edges, 1)
        grown = np.zeros_like(edges)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= e[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        grown &= weak
        if np.array_equal(grown, edges):
            break
        edges = grown
    return edges.astype(np.uint8) * 255


# --------------------------------------------------------------------- per-entry work


def crop_box(bbox: Sequence[float], margin: float) -> tuple[float, float, float, float]:
    """Square (left, top, right, bottom) centred on the bbox, side = longest side * (1 + 2 margin)."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float images scaled to 0..255 greyscale (convert() would clip them)."""
    if image.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(image, dtype=np.float64) / 257.0).round().astype(np.uint8), "L")
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = max(float(values.max()), 1.0)
        scale = 255.0 / top if top > 255 else 1.0
        return Image.fromarray(np.clip(values * scale, 0, 255).round().astype(np.uint8), "L")
    return image


def _as_rgb(image: Image.Image) -> Image.Image:
    image = _to_8bit(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite over black, the same as the padding outside the image.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _as_gray(image: Image.Image) -> Image.Image:
    image = _to_8bit(image)
    return image if image.mode == "L" else image.convert("L")


def _crop_resize(
    path: Path, box: tuple[float, float, float, float], frame: tuple[int, int], size: int, kind: str
) -> np.ndarray:
    """Crop `box` (in the coordinates of an image of size `frame`) from the file and resize.

    The file may be smaller or larger than `frame` (a normals map predicted at another
    resolution): the box is scaled to it. JPEGs are decoded at a reduced scale (draft) when
    the crop would still have at least `size` pixels, which makes big photos fast.
    """
    with Image.open(path) as image:
        full_w, full_h = image.size
        if image.format in ("JPEG", "MPO"):  # MPO: multi-picture JPEG from some cameras
            side = max(box[2] - box[0], box[3] - box[1]) * full_w / frame[0]
            factor = max(size / max(side, 1.0), 1e-6)
            request = (max(1, math.ceil(full_w * factor)), max(1, math.ceil(full_h * factor)))
            image.draft(image.mode, request)
        sx, sy = image.size[0] / frame[0], image.size[1] / frame[1]
        left, top = round(box[0] * sx), round(box[1] * sy)
        right, bottom = max(round(box[2] * sx), left + 1), max(round(box[3] * sy), top + 1)
        image.load()
        converted = _as_rgb(image) if kind == "rgb" else _as_gray(image)
    # crop() fills outside the image with zeros: that is the square padding.
    cropped = converted.crop((left, top, right, bottom))
    resized = cropped.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    array = np.asarray(resized, dtype=np.uint8)
    return array.transpose(2, 0, 1) if array.ndim == 3 else array[None]


def _prepare_entry(task: tuple) -> tuple[int, np.ndarray | None, str | None]:
    """Worker: (position, 8 x S x S uint8 or None, error message or None) for one entry."""
    position, root, ann_img, ann_mask, normals, boundaries, frame, bbox, size, margin = task
    box = crop_box(bbox, margin)
    out = np.zeros((CACHE_CHANNELS, size, size), dtype=np.uint8)
    current = ann_img
    try:
        lo, hi = MODALITY_CHANNELS["rgb"]
        out[lo:hi] = _crop_resize(Path(root) / ann_img, box, frame, size, "rgb")
        current = ann_mask
        lo, hi = MODALITY_CHANNELS["mask"]
        out[lo:hi] = _crop_resize(Path(root) / ann_mask, box, frame, size, "gray")
        lo, hi = MODALITY_CHANNELS["boundaries"]
        if boundaries is not None:
            current = boundaries
            out[lo:hi] = _crop_resize(Path(root) / boundaries, box, frame, size, "gray")
        else:
            rgb_lo, rgb_hi = MODALITY_CHANNELS["rgb"]
            out[lo] = canny_edges(out[rgb_lo:rgb_hi].transpose(1, 2, 0), **CANNY_SETTINGS)
        if normals is not None:
            current = normals
            lo, hi = MODALITY_CHANNELS["normals"]
            out[lo:hi] = _crop_resize(Path(root) / normals, box, frame, size, "rgb")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return position, None, f"cannot decode {current}: {exc}"
    return position, out, None


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


# ------------------------------------------------------------------------------ cache


def _file_stamp(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def cache_key(root: Path, json_bytes: bytes, entries: list, maps: dict[str, dict[str, str]], settings: dict) -> str:
    """sha256 over the json bytes, every referenced file's size+mtime and the settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": PREPARE_VERSION, **settings}, sort_keys=True).encode())
    digest.update(hashlib.sha256(json_bytes).digest())
    for entry in entries:
        if isinstance(entry, dict):
            for key in ("img", "mask"):
                value = entry.get(key)
                if isinstance(value, str):
                    digest.update(f"{value}={_file_stamp(root / value)};".encode())
    for folder in sorted(maps):
        for img, rel in sorted(maps[folder].items()):
            digest.update(f"{folder}:{img}:{rel}={_file_stamp(root / rel)};".encode())
    return digest.hexdigest()[:20]


STALE_TEMP_S = 3600


def _remove_stale_temp_dirs(prepared_root: Path, log) -> None:
    """Delete `.*.tmp-*` folders (`fileio.atomic_dir`) left by a killed preparation (untouched for an hour).

    A live preparation keeps writing into its folder, so an hour without a change means its
    process is gone; younger folders may belong to a concurrent run and are left alone.
    """
    now = time.time()
    for tmp in prepared_root.glob(".*.tmp-*"):
        try:
            newest = max([tmp.stat().st_mtime, *(f.stat().st_mtime for f in tmp.iterdir())])
        except OSError:
            continue
        if now - newest > STALE_TEMP_S:
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"removed {tmp}, left by an interrupted preparation")


def load_prepared(path: Path) -> PreparedData:
    """Open a prepared cache folder (images memory-mapped read-only)."""
    path = Path(path)
    manifest_path, meta_path, images_path = (path / n for n in ("manifest.json", "meta.json", "images.npy"))
    for p in (manifest_path, meta_path, images_path):
        if not p.is_file():
            raise Pix3DError(f"{path} is not a prepared cache: {p.name} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        meta = json.loads(meta_path.read_text())
        images = np.load(images_path, mmap_mode="r")
    except (json.JSONDecodeError, ValueError, OSError) as exc:
        raise Pix3DError(f"{path}: prepared cache is corrupt ({exc})") from None
    n = images.shape[0]
    if images.ndim != 4 or images.shape[1] != CACHE_CHANNELS or len(meta.get("img", [])) != n:
        raise Pix3DError(f"{path}: prepared cache is inconsistent (images {images.shape}, {len(meta.get('img', []))} entries)")
    return PreparedData(
        images=images,
        azimuth=np.asarray(meta["azimuth"], dtype=np.float64),
        elevation=np.asarray(meta["elevation"], dtype=np.float64),
        inplane=np.asarray(meta["inplane"], dtype=np.float64),
        categories=list(meta["category"]),
        model_ids=list(meta["model"]),
        img_paths=list(meta["img"]),
        available={m: bool(manifest["available"].get(m, False)) for m in MODALITIES},
        manifest={**manifest, "cache_path": str(path)},
    )


def _resolve_dataset(data: str | Path, cache_dir: Path, log: Callable) -> tuple[Path, str]:
    if str(data) == "synthetic":
        try:
            from pix3d.render.synthetic import ensure_builtin  # lazy: generating is its own module's job
        except ImportError as exc:
            raise Pix3DError(f"the built-in synthetic set is not available ({exc})") from None
        return Path(ensure_builtin(cache_dir, log=log)), "synthetic"
    root = Path(data).expanduser()
    return root, root.resolve().name if root.exists() else root.name


def _describe_boundaries(sources: list[str]) -> str:
    n_files = sum(s == BOUNDARIES_FROM_FILES for s in sources)
    if n_files == len(sources):
        return BOUNDARIES_FROM_FILES
    if n_files == 0:
        return BOUNDARIES_DERIVED
    return f"{BOUNDARIES_FROM_FILES} for {n_files}, {BOUNDARIES_DERIVED} for {len(sources) - n_files}"


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
    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_SIZE:
        raise UsageError(f"--size must be an integer of at least {MIN_SIZE} pixels, got {size!r}")
    if not (isinstance(margin, (int, float)) and 0.0 <= margin <= 2.0):
        raise UsageError(f"--margin must be between 0 and 2 (fraction of the bbox side), got {margin!r}")
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if not isinstance(workers, int) or workers < 1:
        raise UsageError(f"--workers must be a positive integer, got {workers!r}")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    root, name = _resolve_dataset(data, cache_dir, log)
    json_path, json_bytes, raw_entries = read_entries(root)
    # The key needs only the raw json and file stamps, so a cache hit skips validation.
    maps = {folder: find_maps(root, folder, raw_entries) for folder in ("boundaries", "normals")}
    settings = {"size": size, "margin": float(margin), "skip_invalid": bool(skip_invalid)}
    key = cache_key(root, json_bytes, raw_entries, maps, settings)
    prepared_root = cache_dir / "prepared"
    final = prepared_root / key
    if (final / "manifest.json").is_file():
        data = load_prepared(final)
        skipped_before = len(data.manifest.get("skipped", []))
        log(
            f"cache hit: {final} ({len(data)} entries of {name} at {size} px"
            + (f", {skipped_before} invalid entries skipped when it was built)" if skipped_before else ")")
        )
        return data

    annotations, skipped = parse_entries(root, json_path, raw_entries, skip_invalid=skip_invalid, progress=progress)
    for message in skipped:
        log(f"skipped {message}")
    boundaries = [maps["boundaries"].get(a.img) for a in annotations]
    normals = [maps["normals"].get(a.img) for a in annotations]

    # Normals are all-or-nothing: a partly filled channel would be silently wrong zeros.
    normals_available = all(n is not None for n in normals)
    if not normals_available:
        missing = sum(n is None for n in normals)
        if missing < len(normals):
            example = annotations[normals.index(None)].img
            log(f"normals/ lacks maps for {missing} of {len(normals)} entries (e.g. {example}): normals marked unavailable")
        normals = [None] * len(normals)

    log(f"preparing {len(annotations)} entries of {name} ({root}) at {size} px, margin {margin}, {workers} workers -> {final}")
    prepared_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(prepared_root, log)
    # The images go through a memmap, which dies of SIGBUS (no error, no clean-up) when the
    # disk fills up under it: check the space first, and reserve it (_reserve) once created.
    needed = cache_bytes(len(annotations), size)
    check_free_space(prepared_root, needed)
    with atomic_dir(final, needed=needed, keep_existing=True) as tmp:
        kept, decode_skipped = _build(
            tmp, root, annotations, boundaries, normals, size, margin, workers, progress, skip_invalid
        )
        for message in decode_skipped:
            log(f"skipped {message}")
        skipped = skipped + decode_skipped
        if not kept:
            raise Pix3DError(f"{json_path}: no entry could be decoded ({len(decode_skipped)} skipped)")
        annotations = [annotations[i] for i in kept]
        boundaries = [boundaries[i] for i in kept]
        pose = np.array([angles(a) for a in annotations], dtype=np.float64).reshape(-1, 3)
        boundary_sources = [BOUNDARIES_FROM_FILES if b else BOUNDARIES_DERIVED for b in boundaries]
        meta = {
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
            "boundaries_source": boundary_sources,
        }
        categories: dict[str, int] = {}
        for a in annotations:
            categories[a.category] = categories.get(a.category, 0) + 1
        manifest = {
            "key": key,
            "version": PREPARE_VERSION,
            "dataset": {
                "name": name,
                "path": str(root.resolve()),
                "json_sha256": hashlib.sha256(json_bytes).hexdigest(),
            },
            "n": len(annotations),
            "size": size,
            "margin": float(margin),
            "skip_invalid": bool(skip_invalid),
            "skipped": skipped,
            "categories": dict(sorted(categories.items())),
            "channels": {m: list(MODALITY_CHANNELS[m]) for m in MODALITIES},
            "sources": {
                "rgb": "img files",
                "mask": "mask files",
                "boundaries": _describe_boundaries(boundary_sources),
                "normals": "files" if normals_available else NORMALS_UNAVAILABLE,
            },
            "available": {"rgb": True, "mask": True, "boundaries": True, "normals": normals_available},
            "canny": CANNY_SETTINGS if BOUNDARIES_DERIVED in boundary_sources else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(tmp / "meta.json", meta)
        write_json(tmp / "manifest.json", manifest)  # written last: marks completeness
        if (final / "manifest.json").is_file():
            log(f"another process prepared {final} meanwhile; using it")
    log(f"prepared {final}: {len(annotations)} entries, boundaries from {manifest['sources']['boundaries']}, normals {manifest['sources']['normals']}")
    return load_prepared(final)


def cache_bytes(n: int, size: int) -> int:
    """Disk space a cache of `n` entries at `size` px needs: images, plus meta/manifest."""
    return n * CACHE_CHANNELS * size * size + 4096 * n + (1 << 20)


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
    boundaries: list[str | None],
    normals: list[str | None],
    size: int,
    margin: float,
    workers: int,
    progress: bool,
    skip_invalid: bool,
) -> tuple[list[int], list[str]]:
    """Decode every entry into tmp/images.npy; (positions kept, messages for skipped)."""
    n = len(annotations)
    tasks = [
        (i, str(root), a.img, a.mask, normals[i], boundaries[i], a.img_size, a.bbox, size, margin)
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


# -------------------------------------------------------------------------------- CLI


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m pix3d.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, default=argparse.SUPPRESS, help="Pix3D-format folder, or 'synthetic' for the built-in set")
    parser.add_argument("--size", required=True, type=int, default=argparse.SUPPRESS, help="side of the square crops in pixels (224 as published)")
    parser.add_argument("--cache", type=Path, default=default_cache_dir(), help="cache root ($PIX3D_CACHE or ~/.cache/pix3d-pose)")
    parser.add_argument("--margin", type=float, default=0.1, help="context around the bbox on each side, as a fraction of its longest side")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="decoding processes")
    parser.add_argument("--skip-invalid", action="store_true", help="skip bad entries (listed) instead of failing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    data = prepare(
        args.data,
        args.size,
        cache_dir=args.cache,
        skip_invalid=args.skip_invalid,
        margin=args.margin,
        workers=args.workers,
        progress=not args.no_progress,
        log=lambda message: print(message, flush=True),
    )
    print(f"cache {data.manifest['cache_path']}: {len(data)} entries x {CACHE_CHANNELS} channels x {data.image_size} px")
    return 0


if __name__ == "__main__":
    run_cli(main)
