"""Decoding one image file into a square uint8 crop: the pixels of every cache channel.

Two crops (a preparation option, `CROPS`; part of the cache key):

  margin     `crop_box` is the square around the json bbox grown by a margin on each side,
             `pixel_box` the whole-pixel window cut for it; `crop_resize` crops it from a file
             (photo, mask or map, at any resolution and bit depth) and resizes it, with the
             photo around the object and zeros only outside the photo.
  published  Pose-from-Shape's crop, which the published notebook read (its
             crop/<category>/<number>: data/Pix3D/clean_dataset.py of YoungXIAO13/PoseFromShape):
             the photo cut to the mask's bounding rectangle (`mask_rect`, OpenCV's
             boundingRect: no margin), resized with Lanczos so that its longer side is the
             crop size (each side truncated: int(side * size / longer)) and pasted at
             ((size - w') // 2, (size - h') // 2) on black (`Letterbox`, `letterbox_resize`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = None  # real Pix3D has ~20-megapixel photos


def crop_box(bbox: Sequence[float], margin: float) -> tuple[float, float, float, float]:
    """Square (left, top, right, bottom) centred on the bbox, side = longest side * (1 + 2 margin)."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0


def pixel_box(box: Sequence[float], sx: float = 1.0, sy: float = 1.0) -> tuple[int, int, int, int]:
    """The whole-pixel window `crop_resize` cuts for `box` from an image scaled by (sx, sy)
    relative to the annotated frame; the oracle renders into exactly this window."""
    left, top = round(box[0] * sx), round(box[1] * sy)
    return left, top, max(round(box[2] * sx), left + 1), max(round(box[3] * sy), top + 1)


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
    """8-bit RGB; transparent pixels composited over black."""
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
    """8-bit greyscale (mode L)."""
    image = _to_8bit(image)
    return image if image.mode == "L" else image.convert("L")


def crop_resize(
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
        left, top, right, bottom = pixel_box(box, sx, sy)
        image.load()
        converted = _as_rgb(image) if kind == "rgb" else _as_gray(image)
    # crop() fills outside the image with zeros: that is the square padding.
    cropped = converted.crop((left, top, right, bottom))
    resized = cropped.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    array = np.asarray(resized, dtype=np.uint8)
    return array.transpose(2, 0, 1) if array.ndim == 3 else array[None]


CROPS = ("margin", "published")


def mask_rect(path: Path, frame: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the mask's non-zero pixels in the photo's frame, as OpenCV's
    boundingRect gives it (x..x+w-1 inclusive); a ValueError for an empty mask."""
    with Image.open(path) as image:
        mask = np.asarray(_as_gray(image))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        raise ValueError("the mask is empty: no bounding rectangle to crop to")
    x, y, w, h = int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
    if mask.shape[1] != frame[0] or mask.shape[0] != frame[1]:  # a mask at another resolution
        sx, sy = frame[0] / mask.shape[1], frame[1] / mask.shape[0]
        x, y, w, h = round(x * sx), round(y * sy), max(1, round(w * sx)), max(1, round(h * sy))
    return x, y, w, h


@dataclass(frozen=True)
class Letterbox:
    """Pose-from-Shape's crop geometry: the rectangle `rect` (x, y, w, h) of the photo resized
    to fit a `size` square (longer side = size) and centred on black."""

    rect: tuple[int, int, int, int]
    size: int

    @property
    def resized(self) -> tuple[int, int]:
        """(w', h') of the pasted crop: int(side * size / longer side), as the rule truncates."""
        _, _, w, h = self.rect
        ratio = float(self.size) / max(w, h)
        return max(1, int(w * ratio)), max(1, int(h * ratio))

    @property
    def offset(self) -> tuple[int, int]:
        """Where the crop is pasted: ((size - w') // 2, (size - h') // 2)."""
        w, h = self.resized
        return (self.size - w) // 2, (self.size - h) // 2

    def window(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the photo plane the whole square shows (the oracle
        renders into it): the crop's own scale per axis, extended over the black bars."""
        x, y, w, h = self.rect
        (nw, nh), (ox, oy) = self.resized, self.offset
        kx, ky = w / nw, h / nh
        return x - ox * kx, y - oy * ky, x + (self.size - ox) * kx, y + (self.size - oy) * ky

    def content(self) -> np.ndarray:
        """bool size x size: the pixels the photo fills (the bars stay zero in every channel)."""
        (nw, nh), (ox, oy) = self.resized, self.offset
        inside = np.zeros((self.size, self.size), dtype=bool)
        inside[oy:oy + nh, ox:ox + nw] = True
        return inside


def letterbox_resize(path: Path, rect: tuple[int, int, int, int], frame: tuple[int, int], size: int,
                     kind: str) -> np.ndarray:
    """Pose-from-Shape's crop of one file at `size` (channels first, uint8): `rect` cut from
    the fully decoded image (no JPEG draft: the rule decodes every pixel), Lanczos-resized
    and centred on black. A file at another resolution than `frame` has `rect` scaled to it."""
    with Image.open(path) as image:
        image.load()
        sx, sy = image.size[0] / frame[0], image.size[1] / frame[1]
        # The rule's convert('RGB') (alpha dropped, not composited) after 16-bit scaling.
        converted = _to_8bit(image).convert("RGB") if kind == "rgb" else _as_gray(image)
    x, y, w, h = rect
    if (sx, sy) != (1.0, 1.0):
        x, y, w, h = round(x * sx), round(y * sy), max(1, round(w * sx)), max(1, round(h * sy))
    box = Letterbox((x, y, w, h), size)
    cropped = converted.crop((x, y, x + w, y + h)).resize(box.resized, Image.Resampling.LANCZOS)
    canvas = Image.new(converted.mode, (size, size))
    canvas.paste(cropped, box.offset)
    array = np.asarray(canvas, dtype=np.uint8)
    return array.transpose(2, 0, 1) if array.ndim == 3 else array[None]
