"""The rasteriser: a z-buffer over triangles, and the boundary map drawn from its buffers.

Owns `rasterize` (visible triangle and perspective-correct depth per pixel, vectorised over
the pixels of each triangle's bounding box), `rasterize_projected` (the same for triangles
projected with any intrinsics, vectorised over the triangles too: CAD models, oracle maps)
and `edge_map` (occlusion and crease edges).
numpy only: it runs in the render workers, which do not import torch.
"""

from __future__ import annotations

import math

import numpy as np


def rasterize(vertices_cam: np.ndarray, faces: np.ndarray, focal_px: float,
              width: int, height: int, *, cull_backfaces: bool = True,
              face_normals_cam: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Visible triangle and depth per pixel: (face_id int32 H x W, -1 = empty; depth H x W).

    Pixel centres (i + 0.5) are inside a triangle when all three edge functions are >= 0;
    depth is interpolated perspective-correctly (1/z is affine in screen space). The loop
    runs over triangles (about a hundred per object), each step vectorised over the pixels
    of the triangle's bounding box; back faces are culled for closed meshes.
    """
    # Pix3D's camera frame (pix3d.geometry): x left, y up, so both image axes flip.
    z = vertices_cam[:, 2]
    u = width / 2 - focal_px * vertices_cam[:, 0] / z
    v = height / 2 - focal_px * vertices_cam[:, 1] / z
    face_id = np.full((height, width), -1, np.int32)
    inv_depth = np.zeros((height, width))  # 1/z, 0 = infinitely far
    tri_u, tri_v, tri_z = u[faces], v[faces], z[faces]
    visible = (tri_z > 1e-6).all(1)
    if cull_backfaces and face_normals_cam is not None:
        centroids = vertices_cam[faces].mean(1)
        visible &= (face_normals_cam * centroids).sum(1) < 0
    for f in np.flatnonzero(visible):
        (u0, u1, u2), (v0, v1, v2) = tri_u[f], tri_v[f]
        area = (u1 - u0) * (v2 - v0) - (v1 - v0) * (u2 - u0)
        if abs(area) < 1e-12:
            continue
        x_lo = max(int(math.floor(min(u0, u1, u2) - 0.5)), 0)
        x_hi = min(int(math.ceil(max(u0, u1, u2) - 0.5)), width - 1)
        y_lo = max(int(math.floor(min(v0, v1, v2) - 0.5)), 0)
        y_hi = min(int(math.ceil(max(v0, v1, v2) - 0.5)), height - 1)
        if x_lo > x_hi or y_lo > y_hi:
            continue
        px = np.arange(x_lo, x_hi + 1) + 0.5
        py = (np.arange(y_lo, y_hi + 1) + 0.5)[:, None]
        # Barycentric weights from the edge functions, normalised by the signed area so the
        # inside test does not depend on the winding seen on screen.
        w0 = ((u2 - u1) * (py - v1) - (v2 - v1) * (px - u1)) / area
        w1 = ((u0 - u2) * (py - v2) - (v0 - v2) * (px - u2)) / area
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        if not inside.any():
            continue
        z0, z1, z2 = tri_z[f]
        inv = w0 / z0 + w1 / z1 + w2 / z2
        region = inv_depth[y_lo:y_hi + 1, x_lo:x_hi + 1]
        closer = inside & (inv > region)
        region[closer] = inv[closer]
        face_id[y_lo:y_hi + 1, x_lo:x_hi + 1][closer] = f
    depth = np.where(inv_depth > 0, 1.0 / np.maximum(inv_depth, 1e-12), np.inf)
    return face_id, depth


def edge_map(mask: np.ndarray, depth: np.ndarray, normals: np.ndarray,
             *, depth_jump: float = 0.03, crease_cos: float = 0.8) -> np.ndarray:
    """Occlusion and crease edges from the G-buffers (bool H x W).

    A pixel is on a boundary when a 4-neighbour differs in silhouette (occluding contour),
    jumps in depth by more than `depth_jump` of its depth (self-occlusion), or turns its
    normal by more than acos(crease_cos) (~37 degrees: box edges are 90).
    """
    edges = np.zeros_like(mask)
    finite_depth = np.where(mask, depth, 0.0)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        contour = mask[a] != mask[b]
        both = mask[a] & mask[b]
        jump = np.abs(finite_depth[a] - finite_depth[b]) > depth_jump * np.maximum(finite_depth[a], 1e-6)
        crease = (normals[a] * normals[b]).sum(-1) < crease_cos
        hit = contour | (both & (jump | crease))
        edges[a] |= hit
        edges[b] |= hit
    return edges


def rasterize_projected(u: np.ndarray, v: np.ndarray, z: np.ndarray, faces: np.ndarray,
                        width: int, height: int, *, with_depth: bool = True,
                        chunk: int = 1 << 19) -> tuple[np.ndarray, np.ndarray | None]:
    """Triangles already projected to pixels (u, v per vertex, camera depth z) -> (face_id
    H x W int32, -1 = empty; depth H x W, inf outside) or, without depth, (mask H x W, None).

    The same pixel-centre rule and perspective-correct depth as `rasterize`, with any
    intrinsics (the caller projects) and no Python loop over triangles: triangles are bucketed
    by the power-of-two size of their pixel bounding box and each bucket is tested at once, so
    CAD models of 100k mostly sub-pixel triangles cost milliseconds. No back-face culling (Pix3D's
    meshes are not consistently wound); the nearest surface wins per pixel.
    """
    tu, tv, tz = u[faces], v[faces], z[faces]
    area = (tu[:, 1] - tu[:, 0]) * (tv[:, 2] - tv[:, 0]) - (tv[:, 1] - tv[:, 0]) * (tu[:, 2] - tu[:, 0])
    finite = np.isfinite(tu).all(1) & np.isfinite(tv).all(1) & (tz > 1e-9).all(1) & (np.abs(area) > 1e-12)
    # Pixel i is covered when its centre i + 0.5 lies in the triangle: i in [ceil(lo-.5), floor(hi-.5)].
    big = 4.0 * max(width, height) + 8.0
    x_lo = np.maximum(np.ceil(np.clip(tu.min(1), -big, big) - 0.5), 0)
    x_hi = np.minimum(np.floor(np.clip(tu.max(1), -big, big) - 0.5), width - 1)
    y_lo = np.maximum(np.ceil(np.clip(tv.min(1), -big, big) - 0.5), 0)
    y_hi = np.minimum(np.floor(np.clip(tv.max(1), -big, big) - 0.5), height - 1)
    keep = np.flatnonzero(finite & (x_lo <= x_hi) & (y_lo <= y_hi))
    pix_parts, inv_parts, face_parts = [], [], []
    if len(keep):
        bw = (x_hi[keep] - x_lo[keep] + 1).astype(np.int64)
        bh = (y_hi[keep] - y_lo[keep] + 1).astype(np.int64)
        kw = 1 << np.ceil(np.log2(bw)).astype(np.int64)
        kh = 1 << np.ceil(np.log2(bh)).astype(np.int64)
        buckets, which = np.unique(kw * 65536 + kh, return_inverse=True)
        for b, bucket in enumerate(buckets):
            members = keep[which == b]
            Kw, Kh = int(bucket // 65536), int(bucket % 65536)
            step = max(1, chunk // (Kw * Kh))
            for start in range(0, len(members), step):
                g = members[start:start + step]
                px = x_lo[g][:, None, None] + np.arange(Kw)[None, None, :]
                py = y_lo[g][:, None, None] + np.arange(Kh)[None, :, None]
                valid = (px <= x_hi[g][:, None, None]) & (py <= y_hi[g][:, None, None])
                cx, cy = px + 0.5, py + 0.5
                (u0, u1, u2), (v0, v1, v2) = (tu[g].T[..., None, None], tv[g].T[..., None, None])
                a = area[g][:, None, None]
                w0 = ((u2 - u1) * (cy - v1) - (v2 - v1) * (cx - u1)) / a
                w1 = ((u0 - u2) * (cy - v2) - (v0 - v2) * (cx - u2)) / a
                w2 = 1.0 - w0 - w1
                inside = valid & (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
                n_i, y_i, x_i = np.nonzero(inside)
                if not len(n_i):
                    continue
                pix_parts.append((py[n_i, y_i, 0] * width + px[n_i, 0, x_i]).astype(np.int64))
                if with_depth:
                    z0, z1, z2 = tz[g].T[..., None, None]
                    inv = w0 / z0 + w1 / z1 + w2 / z2
                    inv_parts.append(inv[n_i, y_i, x_i])
                    face_parts.append(g[n_i])
    if not with_depth:
        mask = np.zeros(height * width, bool)
        if pix_parts:
            mask[np.concatenate(pix_parts)] = True
        return mask.reshape(height, width), None
    face_id = np.full(height * width, -1, np.int32)
    depth = np.full(height * width, np.inf)
    if pix_parts:
        pix, inv, face = np.concatenate(pix_parts), np.concatenate(inv_parts), np.concatenate(face_parts)
        order = np.lexsort((-inv, pix))  # per pixel, the largest 1/z (the nearest) first
        pix, inv, face = pix[order], inv[order], face[order]
        first = np.ones(len(pix), bool)
        first[1:] = pix[1:] != pix[:-1]
        face_id[pix[first]] = face[first]
        depth[pix[first]] = 1.0 / inv[first]
    return face_id.reshape(height, width), depth.reshape(height, width)
