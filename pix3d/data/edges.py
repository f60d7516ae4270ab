"""A Canny-like edge detector in numpy: how boundaries are derived where no map file exists.

Gaussian blur, Sobel gradients, non-maximum suppression and hysteresis with thresholds
that adapt to the image (`canny_edges`). The settings preparation uses, and records in the
manifest, are `pix3d.data.maps.CANNY_SETTINGS`.
"""

from __future__ import annotations

import functools
import math

import numpy as np

TAN_22_5 = math.tan(math.radians(22.5))
TAN_67_5 = math.tan(math.radians(67.5))


@functools.lru_cache(maxsize=8)
def _gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of `sigma` (radius 3 sigma, at least 1)."""
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
