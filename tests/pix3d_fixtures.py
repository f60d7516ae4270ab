"""Write small Pix3D-format folders with real image files, for tests across the project.

`write_pix3d_folder(root, 12)` makes a folder exactly like real Pix3D (pix3d.json, img/,
mask/, optional normals/ and boundaries/ mirroring img/) with real PNG / JPEG / TIFF files in
the modes real Pix3D has (RGB, greyscale, palette, RGBA), entries carrying the extra real
fields (2d_keypoints, 3d_keypoints, voxel, ...) and geometry in the real format: a rounded
orthonormal rot_mat, trans_mat and a cam_position equal to -rot_mat^T trans_mat.
`write_pix3d_folder(root, [REAL_ENTRY, ...])` writes hand-made entries and draws images of
their img_size at their paths.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# A real Pix3D entry (docs/design.md, "Data"). Expected angles: azimuth 321.39, elevation 11.81,
# in-plane -4.50 degrees.
REAL_ENTRY: dict = {
    "img": "img/bed/0001.png",
    "category": "bed",
    "img_size": [395, 244],
    "2d_keypoints": [[[-1.0, -1.0]]],
    "mask": "mask/bed/0001.png",
    "img_source": "ikea",
    "model": "model/bed/IKEA_BEDDINGE/model.obj",
    "model_raw": "model/bed/IKEA_BEDDINGE/3d_keypoints.txt",
    "model_source": "ikea",
    "3d_keypoints": "model/bed/IKEA_BEDDINGE/3d_keypoints.txt",
    "voxel": "model/bed/IKEA_BEDDINGE/voxel.mat",
    "rot_mat": [[0.78139, 0.00096, -0.62404], [0.17457, 0.95974, 0.22005], [0.59912, -0.28089, 0.74977]],
    "trans_mat": [-0.000243, 0.090683, 1.152649],
    "focal_length": 35.2704,
    "cam_position": [-0.70622, 0.23673, -0.88433],
    "inplane_rotation": -0.0785172,
    "truncated": False,
    "occluded": False,
    "slightly_occluded": False,
    "bbox": [4, 22, 362, 228],
}
REAL_ENTRY_ANGLES = (321.39, 11.81, -4.50)

# Image kinds cycled through by generated folders: (extension, PIL mode).
IMAGE_KINDS: tuple[tuple[str, str], ...] = (
    ("png", "RGB"),
    ("jpg", "RGB"),
    ("tiff", "RGB"),
    ("png", "L"),
    ("png", "P"),
    ("png", "RGBA"),
    ("jpg", "L"),
)


def rotation_from_angles(azimuth_deg: float, elevation_deg: float, inplane_rad: float) -> np.ndarray:
    """A model->camera rotation whose camera centre has the given azimuth/elevation.

    Builds the look-at camera in Pix3D's frame (x left, y up, z forward) for a camera centre in direction
    (sin az cos el, sin el, -cos az cos el), then rolls it by the in-plane angle.
    """
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    centre = np.array([math.sin(az) * math.cos(el), math.sin(el), -math.cos(az) * math.cos(el)])
    forward = -centre / np.linalg.norm(centre)
    up = np.array([0.0, 1.0, 0.0])
    right = np.cross(up, forward)
    if np.linalg.norm(right) < 1e-6:
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([-right, -down, forward])  # rows: camera axes (left, up, forward) in model coordinates
    c, s = math.cos(inplane_rad), math.sin(inplane_rad)
    roll = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return roll @ rot


def make_entry(
    index: int,
    *,
    category: str,
    model: str,
    img_size: tuple[int, int],
    ext: str,
    azimuth: float,
    elevation: float,
    inplane_rad: float,
    distance: float,
    rng: np.random.Generator,
) -> dict:
    """One entry in the real format with consistent geometry, rounded like real Pix3D."""
    width, height = img_size
    rot = rotation_from_angles(azimuth, elevation, inplane_rad)
    # Camera at `distance` along the centre direction: t = -R c.
    az, el = math.radians(azimuth), math.radians(elevation)
    centre = distance * np.array([math.sin(az) * math.cos(el), math.sin(el), -math.cos(az) * math.cos(el)])
    trans = -rot @ centre
    bw = int(rng.integers(width // 3, width - 4))
    bh = int(rng.integers(height // 3, height - 4))
    x0 = int(rng.integers(0, width - bw))
    y0 = int(rng.integers(0, height - bh))
    stem = f"{index:04d}"
    entry = copy.deepcopy(REAL_ENTRY)
    entry.update(
        img=f"img/{category}/{stem}.{ext}",
        mask=f"mask/{category}/{stem}.png",
        category=category,
        img_size=[width, height],
        model=f"model/{category}/{model}/model.obj",
        rot_mat=np.round(rot, 5).tolist(),
        trans_mat=np.round(trans, 6).tolist(),
        cam_position=np.round(centre, 5).tolist(),
        inplane_rotation=round(inplane_rad, 7),
        focal_length=35.0,
        bbox=[x0, y0, x0 + bw, y0 + bh],
        truncated=bool(rng.random() < 0.2),
        occluded=False,
        slightly_occluded=bool(rng.random() < 0.2),
    )
    return entry


def draw_object(img_size, bbox, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 H x W x 3 with textured clutter and an ellipse filling the bbox; its mask."""
    width, height = img_size
    x0, y0, x1, y1 = bbox
    # Background clutter: random blobs (low-frequency noise), dark so the object stands out.
    # Per-pixel noise would make every PNG/JPEG pathologically slow to write and decode.
    coarse = rng.integers(0, 90, size=(max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    rgb = np.asarray(Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BILINEAR)).copy()
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
    rx, ry = max((x1 - x0) / 2, 1), max((y1 - y0) / 2, 1)
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    colour = rng.integers(120, 256, size=3, dtype=np.uint8)
    rgb[inside] = colour
    # A stripe so the object has internal edges for the edge detector.
    rgb[inside & ((xx - x0) % 12 < 3)] //= 2
    return rgb, inside.astype(np.uint8) * 255


def save_image(path: Path, rgb: np.ndarray, mode: str, alpha: np.ndarray | None = None) -> None:
    """Write an H x W x 3 array as `mode` (RGB, L, P, RGBA) in the format of the extension.

    RGBA images get `alpha` (H x W uint8; default opaque), like product shots with a
    transparent background.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb, "RGB")
    if mode == "L":
        image = image.convert("L")
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray(alpha if alpha is not None else np.full(rgb.shape[:2], 255, np.uint8), "L"))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=92)
    else:
        image.save(path)


def write_entry_files(
    root: Path,
    entry: dict,
    rng: np.random.Generator,
    *,
    mode: str = "RGB",
    normals: bool = False,
    boundaries: bool = False,
) -> None:
    """Draw an entry's image and mask (and normals/boundaries maps) at its paths."""
    rgb, mask = draw_object(entry["img_size"], entry["bbox"], rng)
    save_image(root / entry["img"], rgb, mode, alpha=mask)
    mask_path = root / entry["mask"]
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask, "L").save(mask_path)
    rel = Path(entry["img"]).relative_to("img").with_suffix(".png")
    if normals:
        height, width = mask.shape
        # A smooth, recognisable normal map (unit vectors encoded to 0..255).
        nx = np.linspace(-1, 1, width)[None, :].repeat(height, 0)
        ny = np.linspace(-1, 1, height)[:, None].repeat(width, 1)
        nz = np.sqrt(np.clip(1 - (nx**2 + ny**2) / 2, 0, 1))
        normal = np.stack([nx / math.sqrt(2), ny / math.sqrt(2), nz], axis=-1)
        save_image(root / "normals" / rel, ((normal + 1) * 127.5).astype(np.uint8), "RGB")
    if boundaries:
        edge = np.zeros_like(mask)
        edge[:, ::7] = 255
        path = root / "boundaries" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(edge, "L").save(path)


def write_pix3d_folder(
    root: Path | str,
    entries_or_n: int | list[dict],
    *,
    categories: tuple[str, ...] = ("bed", "chair", "table"),
    models_per_category: int = 3,
    img_size: tuple[int, int] = (96, 72),
    kinds: tuple[tuple[str, str], ...] = IMAGE_KINDS,
    normals: bool = False,
    boundaries: bool = False,
    seed: int = 0,
) -> Path:
    """Write a Pix3D-format folder at `root` and return it.

    `entries_or_n`: a number of generated entries (categories and models cycled, image
    kinds cycled through `kinds`, angles uniform: azimuth [0, 360), elevation [-20, 45],
    in-plane [-0.3, 0.3] rad), or a list of entry dicts written as given (images drawn at
    their img_size; the image mode follows the list of kinds).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if isinstance(entries_or_n, int):
        entries = []
        for i in range(entries_or_n):
            category = categories[i % len(categories)]
            model = f"IKEA_{category.upper()}_{(i // len(categories)) % models_per_category}"
            ext, _ = kinds[i % len(kinds)]
            entries.append(
                make_entry(
                    i,
                    category=category,
                    model=model,
                    img_size=img_size,
                    ext=ext,
                    azimuth=float(rng.uniform(0, 360)),
                    elevation=float(rng.uniform(-20, 45)),
                    inplane_rad=float(rng.uniform(-0.3, 0.3)),
                    distance=float(rng.uniform(1.5, 4.0)),
                    rng=rng,
                )
            )
    else:
        entries = [copy.deepcopy(e) for e in entries_or_n]
    for i, entry in enumerate(entries):
        _, mode = kinds[i % len(kinds)]
        write_entry_files(root, entry, rng, mode=mode, normals=normals, boundaries=boundaries)
    (root / "pix3d.json").write_text(json.dumps(entries))
    return root


def read_json(root: Path) -> list[dict]:
    return json.loads((Path(root) / "pix3d.json").read_text())


def write_json(root: Path, entries) -> None:
    (Path(root) / "pix3d.json").write_text(json.dumps(entries))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system (the cache on a different disk than /tmp): copy
        shutil.copy2(src, dst)


def seed_builtin_set(builtin: Path, cache_dir: Path) -> Path:
    """Put the rendered built-in set (`builtin`, from the session fixture `builtin_set`) into
    `cache_dir` where `prepare("synthetic", cache_dir=...)` finds it, hard-linked where the file
    system allows: rendering its 1,800 images is minutes of a 2-core machine, preparing it is not.
    The files are shared: a test must not change them."""
    out = Path(cache_dir) / "synthetic" / Path(builtin).name
    if not out.exists():
        shutil.copytree(builtin, out, copy_function=_link_or_copy)
    return out
