"""Two views of one synthetic scene, with the target's depth and the true relative motion.

The second study (docs/design.md) needs image pairs whose 6-DoF
motion is known and whose target depth lets the source be warped into the target. Each pair
here is one procedural furniture model of `pix3d.render`, seen from a target camera
(sampled like the dataset's) and from a source camera a small orbit away (azimuth, elevation
and roll perturbed, distance scaled, same focal length, so one K serves both). Both views are
rendered with the same random draws (light in the model frame, albedo, background, noise),
so the object's shading is the same surface seen twice: brightness constancy holds on it.
The background is a flat backdrop, not a 3D scene; its depth is unknown and it is masked
out of everything that uses depth.

Labels: X_c = R X_m + t for each view, so the target -> source transform is
R_ts = R_s R_t^T, t_ts = t_s - R_ts t_t, which is what `pix3d.geometry.inverse_warp` takes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from pix3d import geometry
from pix3d.errors import Pix3DError, UsageError
from pix3d.fileio import atomic_path
from pix3d.render.camera import Camera, camera_pose, sample_camera
from pix3d.render.shading import render_view
from pix3d.render.shapes import CATEGORIES
from pix3d.render.synthetic import build_model_pool

PAIRS_VERSION = 3  # 2: models from pix3d.render.synthetic.build_model_pool; 3: Pix3D's camera frame


@dataclass(frozen=True)
class PairConfig:
    """What defines a pair set; equal configs give identical arrays."""

    n: int = 1200
    seed: int = 0
    size: int = 64
    max_orbit_deg: float = 15.0    # azimuth change; elevation change is half of it
    max_roll_deg: float = 5.0      # change of in-plane rotation
    max_zoom: float = 0.1          # distance scaled by 1 +- this
    models_per_category: int = 6
    version: int = PAIRS_VERSION

    def check(self) -> None:
        if self.n < 2:
            raise UsageError(f"--pairs must be at least 2, got {self.n}")
        if self.size < 32:
            raise UsageError(f"--size must be at least 32 pixels (ResNet-18 downsamples 32x), got {self.size}")
        if not 0 <= self.max_orbit_deg <= 45:
            raise UsageError(f"--max-orbit must lie in [0, 45] degrees, got {self.max_orbit_deg}")
        if self.models_per_category < 1:
            raise UsageError(f"models per category must be positive, got {self.models_per_category}")

    def key(self) -> str:
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"pairs-n{self.n}-s{self.seed}-px{self.size}-{digest}"


@dataclass
class PairData:
    """N pairs: uint8 images N x 3 x S x S, float32 target depth N x S x S (0 off the object),
    bool target mask, float32 K N x 3 x 3 and target -> source transforms N x 4 x 4."""

    source: np.ndarray
    target: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    K: np.ndarray
    T: np.ndarray
    category: np.ndarray   # str N
    model_ids: np.ndarray  # str N, "category/model"
    config: dict

    def __len__(self) -> int:
        return len(self.source)

    @property
    def manifest(self) -> dict:
        """Provenance for MLflow (as PreparedData.manifest): which settings rendered this set."""
        return {"dataset": "relpose view pairs (built-in renderer)", "key": PairConfig(**self.config).key(),
                **self.config}

    def split(self, val_fraction: float, seed: int, test_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Train / validation pair indices, by model: a validation model is never trained on.
        With `test_fraction`, the test models (`test_split`) are in neither."""
        train, val, _ = self.splits(val_fraction, seed, test_fraction)
        return train, val

    def test_models(self, test_fraction: float) -> set[str]:
        """The models held out for testing: drawn from the pair set's own seed, so every
        training seed (and every run on this pair set) is tested on the same models, and none
        of them is ever trained on or used for validation (early stopping, sizing)."""
        if not 0 <= test_fraction < 1:
            raise Pix3DError(f"test_fraction must lie in [0, 1), got {test_fraction}")
        models = np.unique(self.model_ids)
        if test_fraction == 0:
            return set()
        rng = np.random.default_rng([int(self.config.get("seed", 0)), 29])
        n_test = max(1, int(round(len(models) * test_fraction)))
        return set(rng.choice(models, n_test, replace=False).tolist())

    def splits(self, val_fraction: float, seed: int, test_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Train / validation / test pair indices, by model. The test models are fixed by the
        pair set (`test_models`); validation models are drawn per `seed` from the rest."""
        if not 0 < val_fraction < 1:
            raise Pix3DError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        test = self.test_models(test_fraction)
        models = np.array(sorted(set(np.unique(self.model_ids).tolist()) - test))
        rng = np.random.default_rng(seed)
        # Without test models this draws exactly what the split drew before a test split existed.
        n_val = max(1, int(round(len(models) * val_fraction)))
        val_models = set(rng.choice(models, min(n_val, len(models)), replace=False).tolist())
        is_val = np.array([m in val_models for m in self.model_ids])
        is_test = np.array([m in test for m in self.model_ids])
        return np.flatnonzero(~is_val & ~is_test), np.flatnonzero(is_val), np.flatnonzero(is_test)


def relative_transform(R_t: np.ndarray, t_t: np.ndarray, R_s: np.ndarray, t_s: np.ndarray) -> np.ndarray:
    """4 x 4 transform taking target-camera points to source-camera points."""
    R = R_s @ R_t.T
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t_s - R @ t_t
    return T


def _source_camera(target: Camera, rng: np.random.Generator, config: PairConfig) -> Camera:
    orbit = config.max_orbit_deg
    elevation = float(np.clip(target.elevation + rng.uniform(-orbit / 2, orbit / 2), -10.0, 60.0))
    return Camera(
        azimuth=float((target.azimuth + rng.uniform(-orbit, orbit)) % 360.0),
        elevation=elevation,
        inplane=float(target.inplane + rng.uniform(-config.max_roll_deg, config.max_roll_deg)),
        distance=float(target.distance * (1 + rng.uniform(-config.max_zoom, config.max_zoom))),
        focal_mm=target.focal_mm,
    )


def make_pairs(config: PairConfig, *, progress: bool = True) -> PairData:
    """Render `config.n` pairs (deterministic for the config)."""
    config.check()
    names = list(CATEGORIES)
    pool = build_model_pool(config.seed, config.models_per_category)
    S, n = config.size, config.n
    out = {
        "source": np.zeros((n, 3, S, S), np.uint8), "target": np.zeros((n, 3, S, S), np.uint8),
        "depth": np.zeros((n, S, S), np.float32), "mask": np.zeros((n, S, S), bool),
        "K": np.zeros((n, 3, 3), np.float32), "T": np.zeros((n, 4, 4), np.float32),
    }
    categories, model_ids = [], []
    for i in tqdm(range(n), desc="rendering view pairs", unit="pair", disable=not progress):
        rng = np.random.default_rng([config.seed, 12, i])
        category = names[int(rng.integers(len(names)))]
        m = int(rng.integers(config.models_per_category))
        mesh, palette = pool[category][m]
        target_cam = sample_camera(rng, mesh.radius)
        source_cam = _source_camera(target_cam, rng, config)
        R_t, t_t = camera_pose(target_cam)
        R_s, t_s = camera_pose(source_cam)
        # The same stream for both renders: same light, albedo jitter, backdrop and noise.
        render_seed = [config.seed, 13, i]
        tgt = render_view(mesh, palette, R_t, t_t, target_cam.focal_mm, S, S, np.random.default_rng(render_seed))
        src = render_view(mesh, palette, R_s, t_s, source_cam.focal_mm, S, S, np.random.default_rng(render_seed))
        out["source"][i] = src.rgb.transpose(2, 0, 1)
        out["target"][i] = tgt.rgb.transpose(2, 0, 1)
        out["mask"][i] = tgt.mask
        out["depth"][i] = np.where(tgt.mask, tgt.depth, 0.0)
        out["K"][i] = geometry.intrinsics(target_cam.focal_mm, S, S).numpy()
        out["T"][i] = relative_transform(R_t, t_t, R_s, t_s)
        categories.append(category)
        model_ids.append(f"{category}/{m}")
    return PairData(**out, category=np.array(categories), model_ids=np.array(model_ids), config=asdict(config))


def _save(data: PairData, path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, source=data.source, target=data.target, depth=data.depth, mask=data.mask,
                     K=data.K, T=data.T, category=data.category, model_ids=data.model_ids,
                     config=np.array(json.dumps(data.config)))


def _load(path: Path) -> PairData:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = PairData(source=z["source"], target=z["target"], depth=z["depth"], mask=z["mask"],
                            K=z["K"], T=z["T"], category=z["category"], model_ids=z["model_ids"],
                            config=json.loads(str(z["config"])))
    except (OSError, KeyError, ValueError) as exc:
        raise Pix3DError(f"pair cache {path} is unreadable ({exc}); delete it to regenerate") from None
    return data


def load_or_make_pairs(config: PairConfig, cache_dir: Path, *, progress: bool = True,
                       log: Callable[[str], None] | None = print) -> PairData:
    """The pair set for `config` from <cache_dir>/relpose/<key>.npz, rendered once and reused."""
    config.check()
    path = Path(cache_dir) / "relpose" / f"{config.key()}.npz"
    if path.exists():
        if log:
            log(f"cache hit: {path}")
        return _load(path)
    if log:
        log(f"rendering {config.n} view pairs at {config.size} px -> {path}")
    data = make_pairs(config, progress=progress)
    _save(data, path)
    return data


def rotation_angle_deg(R: torch.Tensor) -> torch.Tensor:
    """Rotation angle of (..., 3, 3) rotation matrices, in degrees (numerically safe near 0 and 180)."""
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))
