"""The built-in synthetic Pix3D: procedural furniture rendered in the exact Pix3D layout.

Real Pix3D (3.6 GB) cannot be fetched everywhere, yet every command should run offline and
go through the same loader, cache and training path. So this module writes a folder that is
indistinguishable in layout from Pix3D:

    pix3d.json                      list of entries with every field real Pix3D has
    img/<category>/NNNN.png         RGB photo: shaded furniture over a cluttered background
    mask/<category>/NNNN.png        0/255 silhouette
    normals/<category>/NNNN.png     unit normals encoded as the published network's readout
                                    (Taskonomy's axes: x right, y down, z to the camera;
                                    pred / 2 + 0.5), background 128 (`normals_to_rgb`)
    boundaries/<category>/NNNN.png  occlusion and crease edges, 0/255
    model/<category>/<name>/model.obj
    model/<category>/<name>/3d_keypoints.txt   the model's corner vertices, one "x y z" a line
    synthetic.json                  stamp: generator version, n, seed, size (reuse / overwrite)

Every entry carries every key of a real Pix3D entry, with the same types: 2d_keypoints are
the 3d keypoints projected into the image (one annotator; [-1, -1] where a point falls outside
it, as real Pix3D marks a missing point), model_raw is the model itself, img_source and
model_source name the generator, and voxel is "" (no voxel grid is generated: an empty path,
never a file that is not there).

Owns `SyntheticConfig` and `BUILTIN`, the model pools, the per-image `Plan`s, the writer
`generate` (parallel, atomic), the stamps, `ensure_builtin` and the contact sheet
`write_preview`. Labels are those of `pix3d.render.camera`, in real Pix3D's camera frame
(`pix3d.geometry`): rot_mat and trans_mat map the model into the camera (X_c = R X_m + t),
pixels are u = cx - f X/Z, v = cy - f Y/Z, and cam_position is the camera centre -R^T t.

Everything is seeded: each image draws from numpy generators keyed by (seed, index), so the
output does not depend on the number of worker processes.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from pix3d.constants import MODALITY_TABLE, SENSOR_WIDTH_MM
from pix3d.errors import UsageError
from pix3d.fileio import atomic_dir, atomic_path
from pix3d.render.camera import Camera, camera_pose, sample_camera
from pix3d.render.mesh import Mesh, boxes_to_mesh, write_obj
from pix3d.render.shading import Rendering, encode_buffer, model_palette, render_view
from pix3d.render.shapes import CATEGORIES

# The modalities the set has files of: those drawn from a render buffer (`render=`); one
# without (a modality users bring, PIX3D_MODALITIES) is unavailable in the built-in set.
RENDERED = tuple(m for m in MODALITY_TABLE if m.render)

# Bump when the output changes for the same (n, seed, size): stamps with another version are
# regenerated, so caches never mix renderer versions.
# 2: rot_mat / trans_mat / normals in Pix3D's camera frame (x left, y up)
# 3: every real Pix3D key (2d / 3d keypoints, model_raw, voxel), 3d_keypoints.txt per model
# 4: normals/ in the predicted normals' encoding (Taskonomy's axes, background 128)
GENERATOR_VERSION = 4
SOURCE = "pix3d.synthetic"  # img_source and model_source of every entry
MISSING_POINT = [-1.0, -1.0]  # real Pix3D's 2d keypoint that is not in the image
STAMP_NAME = "synthetic.json"


@dataclass(frozen=True)
class SyntheticConfig:
    """What defines a synthetic set; equal configs give byte-identical folders."""

    n: int = 1800
    seed: int = 0
    size: int = 224
    version: int = GENERATOR_VERSION

    def name(self) -> str:
        """Folder name of the set, unique per config."""
        return f"pix3d-synth-n{self.n}-s{self.seed}-px{self.size}-v{self.version}"

    def check(self) -> None:
        """Raise UsageError naming the option when n or size is out of range."""
        if self.n <= 0:
            raise UsageError(f"--n must be a positive number of images, got {self.n}")
        if self.size < 16:
            raise UsageError(f"--size must be at least 16 pixels, got {self.size}")


# The embedded default (`--data synthetic`). 1,800 images at 224 px take about a minute on
# 2 cores; the quick budget crops to the bbox and resizes to ~64 px, the paper budget to 224.
BUILTIN = SyntheticConfig(n=1800, seed=0, size=224)
# Images per procedural model, on average: it sets how many models a set of n images has.
IMAGES_PER_MODEL = 20


@dataclass(frozen=True)
class Plan:
    """What image `index` shows; drawn in the parent so file numbering is deterministic."""

    index: int
    category: str
    model: int
    number: int  # 1-based within the category, as Pix3D's file names
    camera: Camera
    rot_mat: np.ndarray    # 3 x 3, model -> camera
    trans_mat: np.ndarray  # 3
    cam_position: np.ndarray  # 3, the camera centre in the model frame


def _rng(seed: int, *key: int) -> np.random.Generator:
    """The numpy generator of one (seed, key...) stream."""
    # SeedSequence mixes the tuple, so (seed, index) streams are independent of each other.
    return np.random.default_rng([seed, *key])


def models_per_category(n: int) -> int:
    """Enough distinct models that a by-model split has some, ~IMAGES_PER_MODEL images each."""
    return max(2, round(n / len(CATEGORIES) / IMAGES_PER_MODEL))


def build_models(config: SyntheticConfig) -> dict[str, list[tuple[Mesh, np.ndarray]]]:
    """The model pool of a synthetic set: per category, (mesh, palette) of each model."""
    return build_model_pool(config.seed, models_per_category(config.n))


def build_model_pool(seed: int, per_category: int) -> dict[str, list[tuple[Mesh, np.ndarray]]]:
    """`per_category` procedural models of every category, (mesh, palette) each, seeded."""
    pool = {}
    for c, (name, builder) in enumerate(CATEGORIES.items()):
        pool[name] = []
        for m in range(per_category):
            rng = _rng(seed, 1, c, m)
            pool[name].append((boxes_to_mesh(builder(rng)), model_palette(rng)))
    return pool


def model_name(category: str, model: int) -> str:
    """Folder name of a model under model/<category>/, e.g. SYNTH_CHAIR_001."""
    return f"SYNTH_{category.upper()}_{model + 1:03d}"


def model_keypoints(mesh: Mesh) -> np.ndarray:
    """A model's 3d keypoints (K x 3, model frame, rounded as written): its outermost vertex
    towards each of the 8 diagonal directions (+-x, +-y, +-z), duplicates dropped."""
    points = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            for sz in (-1, 1):
                vertex = mesh.vertices[int(np.argmax(mesh.vertices @ np.array([sx, sy, sz])))]
                rounded = tuple(round(float(c), 6) for c in vertex)
                if rounded not in points:
                    points.append(rounded)
    return np.array(points, dtype=np.float64)


def write_keypoints(points: np.ndarray, path: Path) -> None:
    """Pix3D's 3d_keypoints.txt: one "x y z" line per keypoint."""
    path.write_text("".join(f"{x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in points))


def project_keypoints(points: np.ndarray, R: np.ndarray, t: np.ndarray, focal_mm: float,
                      width: int, height: int) -> list[list[float]]:
    """[u, v] of each keypoint in Pix3D's frame (u = cx - f X/Z, v = cy - f Y/Z), rounded to
    0.01 px; MISSING_POINT for one outside the image or behind the camera."""
    cam = points @ R.T + t
    f = focal_mm * width / SENSOR_WIDTH_MM
    out = []
    for x, y, z in cam:
        if z <= 0:
            out.append(list(MISSING_POINT))
            continue
        u, v = round(width / 2 - f * x / z, 2), round(height / 2 - f * y / z, 2)
        out.append([u, v] if 0 <= u < width and 0 <= v < height else list(MISSING_POINT))
    return out


def plan_images(config: SyntheticConfig, pool) -> list[Plan]:
    """One plan per image: category, model, camera and pose, all drawn from (seed, index)."""
    # Lazy, as in camera_pose: plans are made in the parent; the render workers stay torch-free.
    import torch

    from pix3d import geometry

    names = list(CATEGORIES)
    counters = dict.fromkeys(names, 0)
    plans = []
    for i in range(config.n):
        rng = _rng(config.seed, 2, i)
        category = names[int(rng.integers(len(names)))]
        model = int(rng.integers(len(pool[category])))
        counters[category] += 1
        camera = sample_camera(rng, pool[category][model][0].radius)
        R, t = camera_pose(camera)
        centre = geometry.camera_centre(torch.from_numpy(R), torch.from_numpy(t)).numpy()
        plans.append(Plan(i, category, model, counters[category], camera, R, t, centre))
    return plans


_WORKER_POOL: dict | None = None


def _init_worker(pool) -> None:
    """Give a render process the model pool once, not with every job."""
    global _WORKER_POOL
    _WORKER_POOL = pool


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write one image of the set (inside the temp folder of `generate`)."""
    # compress_level 1: ~3x faster than the default with files ~20% larger; still lossless.
    Image.fromarray(array).save(path, compress_level=1)


def render_plan(config: SyntheticConfig, plan: Plan, pool) -> tuple[Rendering, np.ndarray, np.ndarray]:
    """Render the view a plan describes; returns (rendering, R, t)."""
    mesh, palette = pool[plan.category][plan.model]
    R, t = plan.rot_mat, plan.trans_mat
    rng = _rng(config.seed, 3, plan.index)
    rendering = render_view(mesh, palette, R, t, plan.camera.focal_mm, config.size, config.size, rng)
    return rendering, R, t


def _write_one(args) -> dict:
    """Worker: render one plan, write one PNG per modality, return its pix3d.json entry."""
    config, plan, root = args
    rendering, R, t = render_plan(config, plan, _WORKER_POOL)
    stem = f"{plan.category}/{plan.number:04d}.png"
    for modality in RENDERED:
        _save_png(encode_buffer(rendering, modality.render), root / modality.directory / stem)
    ys, xs = np.nonzero(rendering.mask)
    size = config.size
    if len(xs):
        bbox = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    else:  # cannot happen with the sampled distances; keep the entry well-formed anyway
        bbox = [0, 0, size - 1, size - 1]
    # Truncated: the silhouette touches the image border.
    truncated = bool(rendering.mask[0].any() or rendering.mask[-1].any()
                     or rendering.mask[:, 0].any() or rendering.mask[:, -1].any())
    name = model_name(plan.category, plan.model)
    folder = f"model/{plan.category}/{name}"
    keypoints = model_keypoints(_WORKER_POOL[plan.category][plan.model][0])
    focal = float(plan.camera.focal_mm)
    return {
        "img": f"img/{stem}",
        "category": plan.category,
        "img_size": [size, size],
        "2d_keypoints": [project_keypoints(keypoints, R, t, focal, size, size)],
        "mask": f"mask/{stem}",
        "img_source": SOURCE,
        "model": f"{folder}/model.obj",
        "model_raw": f"{folder}/model.obj",
        "model_source": SOURCE,
        "3d_keypoints": f"{folder}/3d_keypoints.txt",
        "voxel": "",
        "rot_mat": R.tolist(),
        "trans_mat": t.tolist(),
        "focal_length": focal,
        "cam_position": plan.cam_position.tolist(),
        "inplane_rotation": float(math.radians(plan.camera.inplane)),
        "truncated": truncated,
        "occluded": False,
        "slightly_occluded": False,
        "bbox": bbox,
    }


def read_stamp(folder: Path) -> dict | None:
    """The stamp of a synthetic set, or None when `folder` is not one."""
    try:
        return json.loads((Path(folder) / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def _stamp(config: SyntheticConfig) -> dict:
    """The stamp a set of `config` carries in its STAMP_NAME file."""
    return {"generator": "pix3d.synthetic", **asdict(config),
            "categories": list(CATEGORIES), "name": config.name()}


def holds_set(folder: Path, config: SyntheticConfig) -> bool:
    """Whether `folder` holds the synthetic set of `config` (its stamp is that config's)."""
    return read_stamp(folder) == _stamp(config)


def _check_out(out: Path) -> None:
    """Refuse to replace anything that is not a previous synthetic set (or an empty folder)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a folder; nothing was written")
    if read_stamp(out) is None and any(out.iterdir()):
        raise UsageError(
            f"output folder {out} exists and is not a synthetic Pix3D set (no {STAMP_NAME} "
            "stamp); nothing was overwritten: choose another folder or remove it")


def generate(out: Path, config: SyntheticConfig, *, workers: int | None = None,
             progress: bool = True, log: Callable[[str], None] | None = print) -> dict:
    """Write the synthetic set for `config` at `out`, atomically; returns its stamp.

    Rendering goes into a temp folder beside `out`, which then replaces `out` in one rename:
    a reader sees the old set or the new one, never half of it. An existing `out` must be a
    previous synthetic set (it is replaced) or an empty folder.
    """
    config.check()
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, config.n))
    started = time.perf_counter()
    with atomic_dir(out) as tmp:  # a worker's or this process's full disk leaves the old set untouched
        pool = build_models(config)
        for category, models in pool.items():
            for m, (mesh, _) in enumerate(models):
                folder = tmp / "model" / category / model_name(category, m)
                write_obj(mesh, folder / "model.obj")
                write_keypoints(model_keypoints(mesh), folder / "3d_keypoints.txt")
        plans = plan_images(config, pool)
        for modality in RENDERED:
            for category in CATEGORIES:
                (tmp / modality.directory / category).mkdir(parents=True, exist_ok=True)
        jobs = [(config, plan, tmp) for plan in plans]
        bar = tqdm(total=len(jobs), desc="rendering synthetic Pix3D", unit="img",
                   disable=not progress, file=sys.stderr)
        if workers == 1:
            _init_worker(pool)
            entries = []
            for job in jobs:
                entries.append(_write_one(job))
                bar.update()
        else:
            # spawn, not fork: callers (a Ray driver, a notebook) may hold threads, which fork
            # does not survive; workers import numpy and PIL only, so they start fast.
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(pool,)) as procs:
                entries = []
                for entry in procs.imap(_write_one, jobs, chunksize=8):
                    entries.append(entry)
                    bar.update()
        bar.close()
        (tmp / "pix3d.json").write_text(json.dumps(entries, indent=1) + "\n")
        stamp = _stamp(config)
        (tmp / STAMP_NAME).write_text(json.dumps(stamp, indent=1) + "\n")
    elapsed = time.perf_counter() - started
    if log:
        log(f"wrote {config.n} synthetic Pix3D images ({config.size} px) to {out} in "
            f"{elapsed:.1f} s: {config.n / elapsed:.1f} images/s with {workers} worker(s)")
    return stamp


def ensure_builtin(cache_dir: Path, *, log=print, config: SyntheticConfig = BUILTIN,
                   workers: int | None = None, progress: bool = True) -> Path:
    """The built-in set at <cache_dir>/synthetic/<name>/: generated once, reused after."""
    out = Path(cache_dir) / "synthetic" / config.name()
    if holds_set(out, config):
        return out
    if log:
        log(f"generating the built-in synthetic Pix3D set ({config.n} images, "
            f"{config.size} px) at {out}")
    try:
        generate(out, config, workers=workers, progress=progress, log=log)
    except OSError:
        # Another process may have finished the same set first; theirs is as good as ours.
        if not holds_set(out, config):
            raise
    return out


def write_preview(folder: Path, png: Path, *, rows: int = 8) -> Path:
    """Contact sheet of `rows` entries of a set: one tile per modality (RGB, mask, boundaries,
    normals) per row."""
    folder = Path(folder)
    entries = json.loads((folder / "pix3d.json").read_text())
    picks = np.linspace(0, len(entries) - 1, min(rows, len(entries))).round().astype(int)
    tiles = []
    for i in picks:
        e = entries[i]
        rel = e["img"].split("/", 1)[1]
        row = []
        for modality in RENDERED:
            im = Image.open(folder / modality.directory / rel).convert("RGB")
            row.append(np.asarray(im))
        tiles.append(np.concatenate(row, axis=1))
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0))) for t in tiles]
    sheet = np.concatenate(tiles, axis=0)
    with atomic_path(png) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return Path(png)
