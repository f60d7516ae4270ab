"""Procedural furniture: per Pix3D category, a seeded builder of axis-aligned boxes.

Owns `Box`, the builders and `CATEGORIES` (category name -> builder). Boxes live in a y-up
frame in metres with the furniture's front at -z, so azimuth 0 is a frontal view;
`pix3d.render.mesh` turns them into a mesh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Box:
    """Axis-aligned box: centre and full size (metres), and a material slot of the palette."""

    centre: tuple[float, float, float]
    size: tuple[float, float, float]
    material: int = 0


def _box(x, y, z, sx, sy, sz, material=0) -> Box:
    """A `Box` from six numbers (centre, then size) and a material slot."""
    return Box((float(x), float(y), float(z)), (float(sx), float(sy), float(sz)), material)


def _legs(width, depth, height, thick, inset=0.0, material=0) -> list[Box]:
    """Four legs standing on y = 0 under a width x depth footprint."""
    out = []
    for sx in (-1, 1):
        for sz in (-1, 1):
            x = sx * (width / 2 - thick / 2 - inset)
            z = sz * (depth / 2 - thick / 2 - inset)
            out.append(_box(x, height / 2, z, thick, height, thick, material))
    return out


def build_chair(rng: np.random.Generator) -> list[Box]:
    """Four legs and a seat; a solid or slatted back; sometimes arms."""
    w, d = rng.uniform(0.40, 0.55), rng.uniform(0.40, 0.52)
    seat_h, seat_t = rng.uniform(0.40, 0.50), rng.uniform(0.04, 0.08)
    leg = rng.uniform(0.03, 0.055)
    back_h, back_t = rng.uniform(0.35, 0.60), rng.uniform(0.03, 0.06)
    boxes = _legs(w, d, seat_h - seat_t, leg)
    boxes.append(_box(0, seat_h - seat_t / 2, 0, w, seat_t, d, 1))
    top = seat_h + back_h
    if rng.random() < 0.5:  # solid back panel
        boxes.append(_box(0, seat_h + back_h / 2, d / 2 - back_t / 2, w, back_h, back_t, 1))
    else:  # two posts, a top rail and slats
        for sx in (-1, 1):
            boxes.append(_box(sx * (w / 2 - leg / 2), seat_h + back_h / 2, d / 2 - leg / 2,
                              leg, back_h, leg))
        rail = rng.uniform(0.06, 0.14)
        boxes.append(_box(0, top - rail / 2, d / 2 - back_t / 2, w, rail, back_t))
        n_slats = int(rng.integers(2, 5))
        for k in range(n_slats):
            x = (k + 1) / (n_slats + 1) * w - w / 2
            boxes.append(_box(x, seat_h + (back_h - rail) / 2, d / 2 - back_t / 2,
                              0.03, back_h - rail, back_t * 0.7))
    if rng.random() < 0.3:  # armchair
        arm_h = rng.uniform(0.18, 0.26)
        for sx in (-1, 1):
            boxes.append(_box(sx * (w / 2 - 0.025), seat_h + arm_h, 0, 0.05, 0.04, d))
            boxes.append(_box(sx * (w / 2 - 0.02), seat_h + arm_h / 2, -d / 2 + 0.03,
                              0.04, arm_h, 0.04))
    return boxes


def build_table(rng: np.random.Generator) -> list[Box]:
    """A top on four legs (sometimes with an apron) or on a pedestal; some are square."""
    w, d = rng.uniform(0.8, 1.8), rng.uniform(0.6, 1.0)
    if rng.random() < 0.2:
        d = w = rng.uniform(0.7, 1.1)  # square table
    h, top_t = rng.uniform(0.68, 0.78), rng.uniform(0.03, 0.07)
    boxes = [_box(0, h - top_t / 2, 0, w, top_t, d, 1)]
    if rng.random() < 0.2:  # pedestal table
        boxes.append(_box(0, (h - top_t) / 2, 0, 0.1, h - top_t, 0.1))
        boxes.append(_box(0, 0.02, 0, w * 0.5, 0.04, d * 0.5))
    else:
        leg = rng.uniform(0.04, 0.08)
        inset = rng.uniform(0.0, 0.08)
        boxes += _legs(w, d, h - top_t, leg, inset)
        if rng.random() < 0.6:  # apron
            ap = rng.uniform(0.06, 0.12)
            y = h - top_t - ap / 2
            boxes.append(_box(0, y, d / 2 - inset - leg / 2, w - 2 * inset - leg, ap, 0.02))
            boxes.append(_box(0, y, -d / 2 + inset + leg / 2, w - 2 * inset - leg, ap, 0.02))
    return boxes


def build_desk(rng: np.random.Generator) -> list[Box]:
    """A top on a drawer pedestal and a side panel, with a modesty panel at the back."""
    w, d = rng.uniform(1.0, 1.6), rng.uniform(0.55, 0.8)
    h, top_t = rng.uniform(0.72, 0.78), rng.uniform(0.03, 0.05)
    boxes = [_box(0, h - top_t / 2, 0, w, top_t, d, 1)]
    ped_w = rng.uniform(0.35, 0.45)
    side = 1 if rng.random() < 0.5 else -1
    px = side * (w / 2 - ped_w / 2)
    boxes.append(_box(px, (h - top_t) / 2, 0, ped_w, h - top_t, d))  # drawer pedestal
    n_drawers = int(rng.integers(2, 4))
    dh = (h - top_t - 0.06) / n_drawers
    for k in range(n_drawers):  # drawer fronts and handles protrude at the front (-z)
        y = 0.05 + dh * (k + 0.5)
        boxes.append(_box(px, y, -d / 2 - 0.01, ped_w - 0.03, dh - 0.02, 0.02, 2))
        boxes.append(_box(px, y + dh * 0.2, -d / 2 - 0.03, 0.12, 0.02, 0.02, 0))
    boxes.append(_box(-side * (w / 2 - 0.02), (h - top_t) / 2, 0, 0.04, h - top_t, d))  # side panel
    boxes.append(_box(0, h * 0.55, d / 2 - 0.01, w - 0.04, h * 0.45, 0.02))  # modesty panel
    return boxes


def build_sofa(rng: np.random.Generator) -> list[Box]:
    """Base, back and two arms on short legs, with two or three seat cushions."""
    w, d = rng.uniform(1.4, 2.2), rng.uniform(0.75, 0.95)
    base_h, seat_h = rng.uniform(0.2, 0.3), rng.uniform(0.40, 0.46)
    back_h, back_t = rng.uniform(0.72, 0.9), rng.uniform(0.15, 0.25)
    arm_w, arm_h = rng.uniform(0.12, 0.22), rng.uniform(0.55, 0.68)
    leg = 0.08
    boxes = _legs(w, d, leg, 0.05, 0.03, 2)
    boxes.append(_box(0, leg + base_h / 2, 0, w, base_h, d, 1))
    boxes.append(_box(0, leg + back_h / 2, d / 2 - back_t / 2, w, back_h, back_t, 1))
    for sx in (-1, 1):
        boxes.append(_box(sx * (w / 2 - arm_w / 2), leg + arm_h / 2, -back_t / 2,
                          arm_w, arm_h, d - back_t, 1))
    n_cush = int(rng.integers(2, 4))
    inner = w - 2 * arm_w
    cw = inner / n_cush
    for k in range(n_cush):  # seat cushions, slightly separated so the seams show
        x = -inner / 2 + cw * (k + 0.5)
        boxes.append(_box(x, leg + (base_h + seat_h) / 2, -back_t / 2 + 0.01,
                          cw - 0.02, seat_h - base_h, d - back_t - 0.03, 2))
    return boxes


def build_bed(rng: np.random.Generator) -> list[Box]:
    """Frame, mattress, headboard at +z, pillows and sometimes a footboard."""
    w, length = rng.uniform(1.0, 1.8), rng.uniform(1.95, 2.2)
    frame_h, mat_h = rng.uniform(0.2, 0.35), rng.uniform(0.15, 0.25)
    head_h = rng.uniform(0.9, 1.3)
    boxes = _legs(w, length, 0.1, 0.06, 0.0)
    boxes.append(_box(0, 0.1 + frame_h / 2, 0, w, frame_h, length))
    boxes.append(_box(0, 0.1 + frame_h + mat_h / 2, 0, w - 0.06, mat_h, length - 0.08, 1))
    boxes.append(_box(0, head_h / 2, length / 2 + 0.03, w + 0.04, head_h, 0.06))  # headboard at +z
    if rng.random() < 0.6:
        foot_h = rng.uniform(0.35, 0.55)
        boxes.append(_box(0, foot_h / 2, -length / 2 - 0.03, w + 0.04, foot_h, 0.05))
    top = 0.1 + frame_h + mat_h
    n_pillows = 1 if w < 1.3 else 2
    pw = (w - 0.2) / n_pillows
    for k in range(n_pillows):
        x = -w / 2 + 0.1 + pw * (k + 0.5)
        boxes.append(_box(x, top + 0.06, length / 2 - 0.3, pw - 0.06, 0.12, 0.4, 2))
    return boxes


def build_bookcase(rng: np.random.Generator) -> list[Box]:
    """An open-fronted case of shelves, each often holding a row of books."""
    w, h, d = rng.uniform(0.6, 1.2), rng.uniform(1.0, 2.0), rng.uniform(0.25, 0.4)
    t = rng.uniform(0.02, 0.04)
    boxes = [
        _box(-w / 2 + t / 2, h / 2, 0, t, h, d),
        _box(w / 2 - t / 2, h / 2, 0, t, h, d),
        _box(0, h - t / 2, 0, w, t, d),
        _box(0, 0.04, 0, w, 0.08, d),
        _box(0, h / 2, d / 2 - 0.005, w, h, 0.01, 1),  # back panel at +z: the front is open
    ]
    n_shelves = int(rng.integers(2, 6))
    gap = (h - 0.08 - t) / (n_shelves + 1)
    for k in range(n_shelves + 1):
        y0 = 0.08 + gap * k
        if k > 0:
            boxes.append(_box(0, y0, 0, w - 2 * t, t, d - 0.01))
        if rng.random() < 0.6:  # a row of books on this shelf
            x = -w / 2 + t + rng.uniform(0.0, 0.1)
            while True:
                bw = rng.uniform(0.02, 0.06)
                if x + bw > w / 2 - t - 0.05:
                    break
                bh = rng.uniform(0.5, 0.85) * gap
                boxes.append(_box(x + bw / 2, y0 + t / 2 + bh / 2, 0.02,
                                  bw, bh, d * 0.7, 2 + int(rng.integers(0, 3))))
                x += bw + 0.002
                if rng.random() < 0.08:
                    x += rng.uniform(0.05, 0.15)
    return boxes


def build_wardrobe(rng: np.random.Generator) -> list[Box]:
    """A cabinet on a plinth under a cornice, with two or three doors and their handles."""
    w, h, d = rng.uniform(0.8, 1.6), rng.uniform(1.7, 2.1), rng.uniform(0.5, 0.62)
    plinth = rng.uniform(0.05, 0.1)
    boxes = [
        _box(0, plinth / 2, 0.02, w - 0.04, plinth, d - 0.04, 2),
        _box(0, plinth + (h - plinth) / 2, 0, w, h - plinth, d),
        _box(0, h + 0.015, 0, w + 0.04, 0.03, d + 0.03),  # cornice
    ]
    n_doors = int(rng.integers(2, 4))
    dw = w / n_doors
    for k in range(n_doors):  # doors and handles on the front (-z)
        x = -w / 2 + dw * (k + 0.5)
        boxes.append(_box(x, plinth + (h - plinth) / 2, -d / 2 - 0.01,
                          dw - 0.012, h - plinth - 0.02, 0.02, 1))
        hx = x + (dw / 2 - 0.06) * (1 if k % 2 == 0 else -1)
        boxes.append(_box(hx, plinth + (h - plinth) * 0.5, -d / 2 - 0.03, 0.02, 0.2, 0.02, 2))
    return boxes


# Category name -> builder. Names are real Pix3D categories.
CATEGORIES: dict[str, Callable[[np.random.Generator], list[Box]]] = {
    "bed": build_bed,
    "bookcase": build_bookcase,
    "chair": build_chair,
    "desk": build_desk,
    "sofa": build_sofa,
    "table": build_table,
    "wardrobe": build_wardrobe,
}

