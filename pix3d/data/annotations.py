"""Read a Pix3D `pix3d.json` into validated, typed records.

Every later stage (angles, crops, caches) trusts these records, so all checks happen here,
once, with messages that name the json file, the entry index, its `img` and the problem.
Real Pix3D carries fields we do not use (2d_keypoints, 3d_keypoints, voxel, img_source,
model_raw, ...), and so does the synthetic set; they are ignored, whatever they hold. Its numbers are rounded to ~5 decimals, so geometric
checks use tolerances that accept rounding but catch wrong data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pix3d.errors import Pix3DError

REQUIRED_FIELDS: tuple[str, ...] = (
    "img",
    "mask",
    "category",
    "img_size",
    "bbox",
    "model",
    "rot_mat",
    "trans_mat",
    "focal_length",
    "inplane_rotation",
    "truncated",
    "occluded",
    "slightly_occluded",
)

# rot_mat entries are rounded to 5 decimals in real Pix3D: R R^T deviates from I by ~1e-5.
ORTHONORMAL_TOL = 1e-3
# cam_position and -R^T t agree to ~1e-4 after rounding; a disagreement above this
# (about half a degree of viewing direction) means the entry is inconsistent.
CAM_POSITION_TOL = 1e-2

# Pix3D photos reach ~20 megapixels; PIL's decompression-bomb guard would refuse some.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class Annotation:
    """One validated pix3d.json entry (paths relative to the dataset root, as in the json)."""

    index: int
    img: str
    mask: str
    category: str
    img_size: tuple[int, int]  # (width, height)
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels
    model: str
    rot_mat: np.ndarray  # (3, 3) model -> camera rotation
    trans_mat: np.ndarray  # (3,) model -> camera translation
    focal_length: float  # mm, 32 mm sensor width
    cam_position: np.ndarray | None  # (3,) camera centre in the model frame
    inplane_rotation: float  # radians
    truncated: bool
    occluded: bool
    slightly_occluded: bool

    def where(self) -> str:
        """How messages name this entry: its index and its image path."""
        return f"entry {self.index} ({self.img})"


class _EntryError(Exception):
    """Internal: one entry's problem, turned into a Pix3DError or a skip message."""


def _number(entry: dict, key: str) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _EntryError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise _EntryError(f"{key} must be finite, got {value!r}")
    return float(value)


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _EntryError(f"{what} must be integers, got {value!r}")
    if not math.isfinite(value) or value != int(value):
        raise _EntryError(f"{what} must be integers, got {value!r}")
    return int(value)


def _flag(entry: dict, key: str) -> bool:
    value = entry[key]
    # JSON true/false; 0/1 is accepted because some tools write booleans as ints.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _EntryError(f"{key} must be true or false, got {value!r}")


def _vector(entry: dict, key: str, shape: tuple[int, ...]) -> np.ndarray:
    value = entry[key]
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _EntryError(f"{key} must be numbers of shape {shape}, got {value!r}") from None
    if array.shape != shape:
        raise _EntryError(f"{key} must have shape {shape}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise _EntryError(f"{key} has non-finite values")
    array.setflags(write=False)
    return array


def _path(entry: dict, key: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        raise _EntryError(f"{key} must be a non-empty path string, got {value!r}")
    return value


def _inside(root: Path, key: str, value: str) -> Path:
    """`root / value` with symlinks resolved, refused unless it stays inside the dataset folder:
    a pix3d.json from elsewhere must not make the data pipeline read (and cache) any file on
    the machine through an absolute path, `..` or a symlink out of the folder."""
    base = root.resolve()
    if Path(value).is_absolute():
        raise _EntryError(f"{key} {value!r} is an absolute path; paths must be relative to the dataset folder {base}")
    try:
        resolved = (base / value).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise _EntryError(f"{key} {value!r} cannot be resolved ({exc})") from None
    if not resolved.is_relative_to(base):
        raise _EntryError(f"{key} {value!r} resolves outside the dataset folder {base} (to {resolved})")
    return resolved


def _image_size(path: Path, what: str) -> tuple[int, int]:
    """Width, height from the file header only (fast even for 20-megapixel photos)."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _EntryError(f"{what} {path.name} is not a readable image ({exc})") from None


def _parse_entry(index: int, entry: Any, root: Path, check_files: bool) -> Annotation:
    if not isinstance(entry, dict):
        raise _EntryError(f"must be a JSON object, got {type(entry).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in entry]
    if missing:
        raise _EntryError(f"missing required field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")

    img = _path(entry, "img")
    mask = _path(entry, "mask")
    category = entry["category"]
    if not isinstance(category, str) or not category:
        raise _EntryError(f"category must be a non-empty string, got {category!r}")
    model = entry["model"]
    if not isinstance(model, str) or not model:
        raise _EntryError(f"model must be a non-empty string, got {model!r}")
    for key, value in (("img", img), ("mask", mask), ("model", model)):
        _inside(root, key, value)

    size = entry["img_size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise _EntryError(f"img_size must be [width, height], got {size!r}")
    width, height = (_integer(v, "img_size") for v in size)
    if width <= 0 or height <= 0:
        raise _EntryError(f"img_size must be positive, got {size!r}")

    box = entry["bbox"]
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise _EntryError(f"bbox must be [x0, y0, x1, y1], got {box!r}")
    x0, y0, x1, y1 = (_integer(v, "bbox") for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise _EntryError(f"bbox {list(box)} is empty or outside img_size {[width, height]}")

    rot_mat = _vector(entry, "rot_mat", (3, 3))
    deviation = float(np.abs(rot_mat @ rot_mat.T - np.eye(3)).max())
    if deviation > ORTHONORMAL_TOL:
        raise _EntryError(f"rot_mat is not orthonormal (|R R^T - I| = {deviation:.2g})")
    if np.linalg.det(rot_mat) <= 0:
        raise _EntryError("rot_mat is a reflection (determinant < 0), not a rotation")
    trans_mat = _vector(entry, "trans_mat", (3,))

    cam_position = None
    if entry.get("cam_position") is not None:
        cam_position = _vector(entry, "cam_position", (3,))
        from_pose = -rot_mat.T @ trans_mat
        gap = float(np.linalg.norm(cam_position - from_pose))
        if gap > CAM_POSITION_TOL * max(1.0, float(np.linalg.norm(from_pose))):
            raise _EntryError(
                f"cam_position {cam_position.round(5).tolist()} disagrees with "
                f"-rot_mat^T trans_mat {from_pose.round(5).tolist()}"
            )

    focal_length = _number(entry, "focal_length")
    if focal_length <= 0:
        raise _EntryError(f"focal_length must be positive, got {focal_length}")
    inplane = _number(entry, "inplane_rotation")

    if check_files:
        img_path, mask_path = root / img, root / mask
        if not img_path.is_file():
            raise _EntryError(f"image file {img_path} does not exist")
        if not mask_path.is_file():
            raise _EntryError(f"mask file {mask_path} does not exist")
        actual = _image_size(img_path, "image")
        if actual != (width, height):
            raise _EntryError(f"image is {actual[0]}x{actual[1]} but img_size says {width}x{height}")
        mask_size = _image_size(mask_path, "mask")
        if mask_size != actual:
            raise _EntryError(
                f"mask {mask} is {mask_size[0]}x{mask_size[1]} but the image is {actual[0]}x{actual[1]}"
            )

    return Annotation(
        index=index,
        img=img,
        mask=mask,
        category=category,
        img_size=(width, height),
        bbox=(x0, y0, x1, y1),
        model=model,
        rot_mat=rot_mat,
        trans_mat=trans_mat,
        focal_length=focal_length,
        cam_position=cam_position,
        inplane_rotation=inplane,
        truncated=_flag(entry, "truncated"),
        occluded=_flag(entry, "occluded"),
        slightly_occluded=_flag(entry, "slightly_occluded"),
    )


def read_entries(root: Path) -> tuple[Path, bytes, list]:
    """(json path, its raw bytes, the parsed list) with a clear error for each way it fails."""
    root = Path(root)
    if not root.exists():
        raise Pix3DError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise Pix3DError(f"dataset path {root} is not a folder")
    json_path = root / "pix3d.json"
    if not json_path.is_file():
        raise Pix3DError(f"{json_path} not found: a Pix3D folder holds pix3d.json, img/ and mask/")
    raw = json_path.read_bytes()
    try:
        entries = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise Pix3DError(f"{json_path}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise Pix3DError(
            f"{json_path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(entries, list):
        raise Pix3DError(f"{json_path}: expected a JSON list of entries, got {type(entries).__name__}")
    if not entries:
        raise Pix3DError(f"{json_path}: the dataset is empty (no entries)")
    return json_path, raw, entries


def load_annotations(
    root: Path, *, skip_invalid: bool = False, check_files: bool = True, progress: bool = False
) -> tuple[list[Annotation], list[str]]:
    """Validated entries of `root/pix3d.json` and one message per skipped entry.

    Without `skip_invalid` the first bad entry raises Pix3DError naming it. With
    `check_files`, image and mask files must exist and their sizes (read from the file
    headers only) must match img_size and each other. `progress` shows a bar while checking
    files of a large set (real Pix3D: ~20k headers).
    """
    root = Path(root)
    json_path, _, entries = read_entries(root)
    return parse_entries(
        root, json_path, entries, skip_invalid=skip_invalid, check_files=check_files, progress=progress
    )


def parse_entries(
    root: Path,
    json_path: Path,
    entries: list,
    *,
    skip_invalid: bool = False,
    check_files: bool = True,
    progress: bool = False,
) -> tuple[list[Annotation], list[str]]:
    """`load_annotations` for entries already read with `read_entries` (no second parse)."""
    valid: list[Annotation] = []
    skipped: list[str] = []
    seen: dict[Path, tuple[int, str]] = {}  # resolved photo -> (first entry, its labels)
    show = progress and check_files and len(entries) >= 500
    for index, entry in enumerate(tqdm(entries, desc="check entries", unit="entry", disable=not show)):
        try:
            annotation = _parse_entry(index, entry, root, check_files)
            # One photo is one sample: a duplicate entry would be split across train and
            # validation by a random split, and validate on a training image.
            photo = _inside(root, "img", annotation.img)
            labels = json.dumps({k: entry[k] for k in REQUIRED_FIELDS if k != "img"}, sort_keys=True, default=str)
            if photo in seen:
                first, first_labels = seen[photo]
                if labels != first_labels:
                    raise _EntryError(f"the same photo as entry {first} with different annotations "
                                      "(which one is right?)")
                skipped.append(f"entry {index} ({annotation.img}): a duplicate of entry {first}, collapsed into it")
                continue
            seen[photo] = (index, labels)
            valid.append(annotation)
        except _EntryError as exc:
            name = entry.get("img") if isinstance(entry, dict) else None
            message = f"entry {index}" + (f" ({name})" if isinstance(name, str) else "") + f": {exc}"
            if not skip_invalid:
                raise Pix3DError(f"{json_path}: {message} (use --skip-invalid to skip bad entries)") from None
            skipped.append(message)
    if not valid:
        raise Pix3DError(f"{json_path}: no valid entries ({len(skipped)} skipped: {skipped[0]})")
    return valid, skipped
