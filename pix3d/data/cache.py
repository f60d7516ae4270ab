"""The prepared cache on disk: where it lives, its key, its size, opening it, clean-up.

A cache is `<cache>/prepared/<key>/` holding `images.npy` (uint8 N x C x S x S, C =
`CACHE_CHANNELS`: 8 for the built-in table; opened memory-mapped: trials never decode images), `meta.json` (per-entry arrays) and
`manifest.json` (written last: its presence marks a complete cache). The key hashes the
json, the files' sizes and mtimes (photos, masks, maps, models) and the settings (sources included), so a second preparation with the same
inputs is a cache hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pix3d.constants import CACHE_CHANNELS, MODALITIES
from pix3d.errors import Pix3DError
from pix3d.data.maps import ANNOTATION_KEYS

# Bump when the preprocessing changes what ends up in images.npy: old caches then miss.
PREPARE_VERSION = 4  # 2: model files in the key, sources chosen, render check in meta; 3: crop, published split;
                     # 4: oracle normals in the predicted ones' encoding, the boundaries' kind of edges in the manifest
STALE_TEMP_S = 3600


def default_cache_dir() -> Path:
    """$PIX3D_CACHE if set, else ~/.cache/pix3d-pose."""
    env = os.environ.get("PIX3D_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pix3d-pose"


@dataclass
class PreparedData:
    """A prepared cache: images (uint8 N x CACHE_CHANNELS x S x S, possibly read-only) plus per-entry labels."""

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
        """Side of the square crops in pixels."""
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getstate__(self) -> dict:
        """Pickled with the arrays as plain ndarrays (views, no copy): numpy pickles a subclass
        such as the memmap `load_prepared` opens inside the pickle bytes, so every Ray trial
        would unpickle its own private copy of the cache; a plain ndarray travels out of band
        (pickle protocol 5) and trials read the object store's one copy in place."""
        return {k: np.asarray(v) if isinstance(v, np.ndarray) else v for k, v in self.__dict__.items()}


def _file_stamp(path: Path) -> str:
    """"size:mtime_ns" of a file, or "missing": what the cache key hashes per file."""
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
            for key in (*ANNOTATION_KEYS, "model"):  # the model: render check, oracle maps
                value = entry.get(key)
                if isinstance(value, str):
                    digest.update(f"{value}={_file_stamp(root / value)};".encode())
    for folder in sorted(maps):
        for img, rel in sorted(maps[folder].items()):
            digest.update(f"{folder}:{img}:{rel}={_file_stamp(root / rel)};".encode())
    return digest.hexdigest()[:20]


def cache_bytes(n: int, size: int) -> int:
    """Disk space a cache of `n` entries at `size` px needs: images, plus meta/manifest."""
    return n * CACHE_CHANNELS * size * size + 4096 * n + (1 << 20)


def remove_stale_temp_dirs(prepared_root: Path, log: Callable[[str], None]) -> None:
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
