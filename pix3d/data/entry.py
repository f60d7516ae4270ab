"""One entry's channels in the cache: the work of a preparation worker process.

`prepare_entry(EntryTask)` crops every modality of one entry the same way (the task's
`crop`: the margin square around the bbox, or Pose-from-Shape's letterboxed mask rectangle,
`pix3d.data.images`) at the cache size, each the way `pix3d.data.maps.entry_plan` chose: decoded from its file,
derived by a fallback (`FALLBACKS`: Canny-like edges of the cropped RGB), predicted from the
photo's crop at 224 px (`pix3d.data.predict`, imported lazily, as published), or rendered from the CAD model at the
annotated pose straight into the crop (`pix3d.render.oracle`). Whenever the model can be
rendered it also measures the rendered silhouette against the annotated mask (IoU in the
crop window; silhouette only, cheap, unless an oracle map is wanted). numpy, PIL only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import UnidentifiedImageError

from pix3d.constants import CACHE_CHANNELS, MODALITY_CHANNELS, MODALITY_TABLE
from pix3d.data.edges import canny_edges
from pix3d.data.images import Letterbox, crop_box, crop_resize, letterbox_resize, mask_rect, pixel_box
from pix3d.data.maps import CANNY_SETTINGS, FILES, ORACLE, PREDICT
from pix3d.errors import one_line
from pix3d.render.oracle import OracleRender, RenderProblem, load_model, render_crop, silhouette_iou


def _canny_from_rgb(out: np.ndarray) -> np.ndarray:
    """The `canny` fallback: edges of the entry's already decoded RGB channels."""
    lo, hi = MODALITY_CHANNELS["rgb"]
    return canny_edges(out[lo:hi].transpose(1, 2, 0), **CANNY_SETTINGS)[None]


# How each fallback of the modality table derives a channel from what is decoded before it.
FALLBACKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"canny": _canny_from_rgb}


@dataclass(frozen=True)
class EntryTask:
    """What a worker needs for one entry (picklable); files and kinds follow MODALITY_TABLE."""

    position: int
    root: str
    files: tuple[str | None, ...]
    kinds: tuple[str, ...]
    frame: tuple[int, int]
    bbox: tuple[float, float, float, float]
    size: int
    margin: float
    model: str
    rot_mat: tuple
    trans_mat: tuple
    focal_length: float
    render_check: bool = True
    crop: str = "margin"  # pix3d.data.images.CROPS


class EntryCrop:
    """How every channel of one entry is cut (`crop(path, size, kind)`), the photo-plane
    window the whole square shows (the oracle renders into it) and which of its pixels the
    photo fills: the margin square around the bbox, or the letterboxed mask rectangle."""

    def __init__(self, task: EntryTask):
        self.task = task
        if task.crop == "published":
            mask_file = task.files[[m.name for m in MODALITY_TABLE].index("mask")]
            self.rect = mask_rect(Path(task.root) / mask_file, task.frame)
            self.window = Letterbox(self.rect, task.size).window()
        else:
            self.box = crop_box(task.bbox, task.margin)
            self.window = pixel_box(self.box)

    def crop(self, path: Path, size: int, kind: str) -> np.ndarray:
        """The file's channels (first) cut this way at `size` px."""
        if self.task.crop == "published":
            return letterbox_resize(path, self.rect, self.task.frame, size, kind)
        return crop_resize(path, self.box, self.task.frame, size, kind)

    def inside(self) -> np.ndarray:
        """bool S x S: the crop's pixels that show the photo (the rest is padding)."""
        if self.task.crop == "published":
            return Letterbox(self.rect, self.task.size).content()
        return inside_photo(self.window, self.task.frame, self.task.size)


@dataclass
class EntryResult:
    """A worker's answer: the channels (None on a decode error), the error, the silhouette
    IoU (None when not rendered) and why the model could not be rendered (None when it could)."""

    position: int
    array: np.ndarray | None
    error: str | None = None
    iou: float | None = None
    render_problem: str | None = None


def inside_photo(window, frame, size: int) -> np.ndarray:
    """bool S x S: the crop's pixels whose centres fall inside the photo (the rest is padding)."""
    left, top, right, bottom = window
    xs = left + (np.arange(size) + 0.5) * (right - left) / size
    ys = top + (np.arange(size) + 0.5) * (bottom - top) / size
    return ((ys >= 0) & (ys < frame[1]))[:, None] & ((xs >= 0) & (xs < frame[0]))[None, :]


def _render(task: EntryTask, cut: EntryCrop, full: bool) -> OracleRender:
    """The entry's model rendered into its crop window at the cache size (RenderProblem if
    not), cut to the photo: outside it the crop is padding, as for every other channel."""
    vertices, faces = load_model(Path(task.root) / task.model, task.model)
    render = render_crop(vertices, faces, np.asarray(task.rot_mat), np.asarray(task.trans_mat),
                         task.focal_length, task.frame, cut.window, task.size, full=full)
    inside = cut.inside()
    if not inside.all():
        render.mask &= inside
        if render.normals is not None:
            render.normals[~inside] = 0
            render.boundaries &= inside
    return render


# The published networks saw the photo's crop with its shorter side at 224 px: the crop they
# predict from is decoded from the photo at no less than this, whatever the cache size.
PREDICT_SIZE = 224


def _predict_input(task: EntryTask, cut: EntryCrop) -> np.ndarray:
    """The entry's photo cut as the cache's crop at PREDICT_SIZE (or the cache size when
    larger), H x W x 3: what every predicted modality of the entry is computed from (with the
    published crop, Pose-from-Shape's 224 px crop: what the published networks were fed)."""
    side = max(task.size, PREDICT_SIZE)
    return np.ascontiguousarray(cut.crop(Path(task.root) / task.files[0], side, "rgb").transpose(1, 2, 0))


def _predict(task: EntryTask, rgb: np.ndarray, modality) -> np.ndarray:
    """The modality predicted from `rgb` (`_predict_input`), resized to the cache size (channels first)."""
    from PIL import Image

    from pix3d.data.predict import predict_crop  # lazy: a network, maybe absent

    side = rgb.shape[0]
    predicted = np.asarray(predict_crop(rgb, modality.predict))
    expected = (side, side, 3) if modality.channels == 3 else (side, side)
    if predicted.shape != expected or predicted.dtype != np.uint8:
        raise ValueError(f"pix3d.data.predict gave {predicted.dtype} {predicted.shape} for "
                         f"'{modality.predict}', expected uint8 {expected}")
    if side != task.size:
        predicted = np.asarray(Image.fromarray(predicted).resize((task.size, task.size), Image.Resampling.BILINEAR,
                                                                 reducing_gap=3.0), dtype=np.uint8)
    return predicted.transpose(2, 0, 1) if predicted.ndim == 3 else predicted[None]


def prepare_entry(task: EntryTask) -> EntryResult:
    """Worker: one entry's C x S x S uint8 channels, or the one-line reason it has none."""
    out = np.zeros((CACHE_CHANNELS, task.size, task.size), dtype=np.uint8)
    render: OracleRender | None = None
    predict_rgb: np.ndarray | None = None
    problem: str | None = None
    what = task.files[0]
    try:
        if task.crop == "published":
            what = task.files[[m.name for m in MODALITY_TABLE].index("mask")]
        cut = EntryCrop(task)
        for modality, rel, kind in zip(MODALITY_TABLE, task.files, task.kinds):
            lo, hi = MODALITY_CHANNELS[modality.name]
            if kind == FILES:
                what = rel
                out[lo:hi] = cut.crop(Path(task.root) / rel, task.size, modality.decode)
            elif kind == PREDICT:
                what = f"{modality.name} predicted from {task.files[0]}"
                if predict_rgb is None:  # decoded once for all the entry's predicted modalities
                    predict_rgb = _predict_input(task, cut)
                out[lo:hi] = _predict(task, predict_rgb, modality)
            elif kind == ORACLE:
                if render is None and problem is None:
                    try:
                        render = _render(task, cut, full=True)
                    except RenderProblem as exc:
                        problem = str(exc)
                if render is not None:  # else: unavailable for this entry, said by the caller
                    out[lo:hi] = (render.normals_rgb().transpose(2, 0, 1) if modality.render == "normals"
                                  else render.boundaries_u8()[None])
            elif kind in FALLBACKS:
                out[lo:hi] = FALLBACKS[kind](out)
        if task.crop == "published":  # derived edges see the bars' border as an edge: black, as in the rule
            out[:, ~cut.inside()] = 0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return EntryResult(task.position, None, f"cannot decode {what}: {one_line(exc)}")
    except Exception as exc:  # noqa: BLE001 - the prediction network is foreign code
        if not any(k == PREDICT for k in task.kinds):
            raise
        return EntryResult(task.position, None, f"cannot predict from {task.files[0]}: {one_line(exc)}")
    if render is None and problem is None and task.render_check:
        try:
            render = _render(task, cut, full=False)
        except RenderProblem as exc:
            problem = str(exc)
    iou = None
    if render is not None:
        lo, _ = MODALITY_CHANNELS["mask"]
        iou = silhouette_iou(render.mask, out[lo])
    return EntryResult(task.position, out, None, iou, problem)
