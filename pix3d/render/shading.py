"""Appearance of a synthetic view: palettes, cluttered backgrounds, shading and the buffers.

Owns `model_palette`, `render_background`, `Rendering` (RGB, mask, normals, boundaries,
depth of one view), `render_view` (rasterise, shade, add noise) and the 8-bit encoding of
camera-frame normals (`normals_to_rgb`, `normals_from_rgb`): the one encoding of the normals
modality, the published network's (docs/metrics.md, "Encodings"). numpy and PIL only: it runs in
the render workers, which do not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pix3d.constants import SENSOR_WIDTH_MM
from pix3d.render.camera import view_direction
from pix3d.render.mesh import Mesh
from pix3d.render.raster import edge_map, rasterize

# Palettes: wood, painted, fabric and book colours (linear-ish RGB in 0..1).
_WOODS = np.array([[0.55, 0.38, 0.22], [0.72, 0.55, 0.36], [0.35, 0.22, 0.13],
                   [0.85, 0.75, 0.58], [0.20, 0.20, 0.20], [0.92, 0.92, 0.90]])


def model_palette(rng: np.random.Generator) -> np.ndarray:
    """Colours for the material slots (0 frame, 1 main surface, 2.. accents) of one model."""
    frame = _WOODS[rng.integers(len(_WOODS))] * rng.uniform(0.85, 1.1)
    main = frame if rng.random() < 0.4 else rng.uniform(0.1, 0.95, 3)
    accents = rng.uniform(0.1, 0.95, (4, 3))
    return np.clip(np.vstack([frame, main, accents]), 0, 1)


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Cluttered room-like backdrop (uint8 H x W x 3): wall/floor gradient and shapes.

    The clutter has edges and colours like furniture so that the mask and boundaries
    carry information the RGB alone does not.
    """
    horizon = rng.uniform(0.3, 0.8) * height
    wall, floor = rng.uniform(0.2, 0.95, 3), rng.uniform(0.1, 0.8, 3)
    ys = np.arange(height)[:, None, None]
    shade = 1 - 0.25 * ys / height
    base = np.where(ys < horizon, wall, floor) * shade
    img = Image.fromarray((np.broadcast_to(base, (height, width, 3)) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * (width, height)
        w, h = rng.uniform(0.05, 0.5, 2) * (width, height)
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.line([x0, y0, x0 + w, y0 + h * rng.choice([-1, 1])], fill=colour,
                      width=int(rng.integers(1, max(2, width // 40))))
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    return np.asarray(img)


@dataclass
class Rendering:
    """All buffers of one view: what the dataset writes, plus depth for the pose study."""

    rgb: np.ndarray         # uint8 H x W x 3
    mask: np.ndarray        # bool H x W
    normals: np.ndarray     # float32 H x W x 3, camera frame, 0 outside the mask
    boundaries: np.ndarray  # bool H x W
    depth: np.ndarray       # float64 H x W, camera z; inf outside the mask


def render_view(mesh: Mesh, palette: np.ndarray, R: np.ndarray, t: np.ndarray, focal_mm: float,
                width: int, height: int, rng: np.random.Generator) -> Rendering:
    """Render one model: Lambertian shading under a random overhead light, over clutter."""
    verts_cam = mesh.vertices @ R.T + t
    normals_cam = mesh.face_normals @ R.T
    focal_px = focal_mm / SENSOR_WIDTH_MM * width
    face_id, depth = rasterize(verts_cam, mesh.faces, focal_px, width, height,
                               face_normals_cam=normals_cam)
    mask = face_id >= 0
    # One gather per buffer: row F of the padded tables is the background value.
    fid = np.where(mask, face_id, len(mesh.faces))
    normals = np.vstack([normals_cam, np.zeros((1, 3))]).astype(np.float32)[fid]

    # The light lives in the model frame (above, random side), so shading is a pose cue.
    light_az = rng.uniform(0, 2 * math.pi)
    light_el = rng.uniform(math.radians(25), math.radians(75))
    light = np.array(view_direction(light_az, light_el)) @ R.T
    ambient = rng.uniform(0.25, 0.45)
    # Shade per face (a few hundred), then look up per pixel: flat faces shade uniformly.
    face_albedo = palette[mesh.face_material] * rng.uniform(0.9, 1.1, 3)
    face_light = np.clip(normals_cam @ light, 0, None)
    face_rgb = (face_albedo * (ambient + (1 - ambient) * face_light)[:, None] * 255)

    rgb = render_background(rng, width, height).astype(np.float32)
    rgb[mask] = face_rgb[face_id[mask]]
    sigma = rng.uniform(0.5, 6.0)  # sensor noise, in 8-bit levels
    rgb += sigma * rng.standard_normal(rgb.shape, dtype=np.float32)
    rgb_u8 = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    boundaries = edge_map(mask, depth, normals)
    return Rendering(rgb=rgb_u8, mask=mask, normals=normals, boundaries=boundaries, depth=depth)


# Normals are stored as the published network's readout is (visualpriors' Taskonomy `normal`,
# a tanh readout saved as pred / 2 + 0.5): in Taskonomy's axes, which are NYU's and 2D3DS's
# colouring (red = x to the right, green = y down, blue = z towards the camera), that is the
# camera-frame normal of this project (x left, y up, z forward) negated in all three axes.
# Where no surface is seen (background, the crop's padding of a render) the vector is zero:
# the readout's tanh 0, stored as 128 grey, which decodes to no direction at all (black would
# decode to a false normal, (-1, -1, -1)).
NORMALS_BACKGROUND = 128


def normals_to_taskonomy(normals: np.ndarray) -> np.ndarray:
    """Camera-frame normals (x left, y up, z forward) -> Taskonomy's axes (x right, y down, z to the camera)."""
    return -np.asarray(normals)


def readout_to_uint8(readout: np.ndarray) -> np.ndarray:
    """A readout in [-1, 1] (channels last) as the published PNGs stored it: pred / 2 + 0.5 in 0..255."""
    scaled = np.clip(np.asarray(readout, dtype=np.float32) / 2 + 0.5, 0.0, 1.0) * 255
    return np.round(scaled).astype(np.uint8)


def normals_to_rgb(normals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unit camera-frame normals -> uint8 RGB exactly as a predicted normals map is stored
    (Taskonomy's axes, pred / 2 + 0.5), NORMALS_BACKGROUND where `mask` is false."""
    rgb = readout_to_uint8(normals_to_taskonomy(normals))
    rgb[~np.asarray(mask, dtype=bool)] = NORMALS_BACKGROUND
    return rgb


def normals_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Inverse of `normals_to_rgb`: camera-frame normals (up to 8-bit quantisation; zero-ish
    where nothing was seen)."""
    return -(np.asarray(rgb, dtype=np.float64) / 255 * 2 - 1)


def encode_buffer(rendering: Rendering, buffer: str) -> np.ndarray:
    """One buffer of a rendering as the uint8 image the dataset stores for it (the synthetic
    writer saves, per row of the modality table, the buffer its `render` names)."""
    if buffer == "rgb":
        return rendering.rgb
    if buffer == "mask":
        return rendering.mask.astype(np.uint8) * 255
    if buffer == "normals":
        return normals_to_rgb(rendering.normals, rendering.mask)
    if buffer == "boundaries":
        return rendering.boundaries.astype(np.uint8) * 255
    raise ValueError(f"no render buffer {buffer!r}; choose from rgb, mask, normals, boundaries")
