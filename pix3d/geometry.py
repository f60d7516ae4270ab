"""Rigid-body and pinhole-camera geometry in pure torch, batched over leading dimensions.

One module serves two users: the synthetic Pix3D renderer (camera placement, labels) and the
relative-pose study (SE(3) exponential map, point transform, projection and a differentiable
inverse warp). Every function accepts any leading batch shape and float32 or float64 tensors,
and is differentiable where the maths is.

Conventions: real Pix3D's camera frame, everywhere (the renderer, the synthetic writer's
rot_mat / trans_mat, the relative-pose warp; docs/design.md, "The camera frame"):
  * model frame: y up; camera frame: x left, y up, z forward (optical axis).
  * a pose (R, t) maps model to camera coordinates: X_c = R X_m + t; the camera centre in
    the model frame is C = -R^T t (Pix3D's `cam_position`).
  * pixels: u = cx - f_px X/Z, v = cy - f_px Y/Z, with pixel i covering [i, i+1), so pixel
    centres sit at i + 0.5 and the principal point of a W x H image is (W/2, H/2). `K`
    carries -f_px on its diagonal, so u = (K X)_0 / Z as for any pinhole matrix.
  * focal lengths in Pix3D are in millimetres on a 32 mm wide sensor: f_px = f_mm / 32 * W.
  * 6-vectors of se(3) are ordered (v, omega): translation part first, rotation second.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pix3d.constants import SENSOR_WIDTH_MM

# Below this angle (radians) so3_log's closed form divides 0 by 0; its series is exact there.
_SMALL_ANGLE = 1e-4

# Rodrigues' coefficients sin(t)/t, (1 - cos t)/t^2 and (t - sin t)/t^3 lose digits to
# cancellation near t = 0, and their derivatives lose about four times as many (the error of
# d/dt (t - sin t)/t^3 grows like eps / t^4). Below these angles they are summed as power
# series in t^2 instead, chosen per dtype so that both branches are accurate where they meet:
# in float32 the closed forms' gradients are good to 1e-6 only above t ~ 1; in float64 above
# t ~ 0.25. _SERIES_TERMS terms keep the series' truncation under float64 rounding up to
# t = 1 (the next term of the slowest one, t^16 / 19!, is 8e-18).
_SERIES_BELOW = {torch.float64: 0.25}
_SERIES_BELOW_DEFAULT = 1.0  # float32 and narrower
_SERIES_TERMS = 8


def _as_tensor(x, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    device = like.device if like is not None else None
    return torch.as_tensor(x, dtype=dtype, device=device)


def _series(theta2: torch.Tensor, first_factorial: int) -> torch.Tensor:
    """sum_k (-1)^k theta2^k / (2k + first_factorial)!, by Horner's rule."""
    denominators = []
    factorial = 1.0
    for n in range(1, first_factorial + 2 * _SERIES_TERMS):
        factorial *= n
        if n >= first_factorial and (n - first_factorial) % 2 == 0:
            denominators.append(factorial)
    total = torch.full_like(theta2, 1.0 / denominators[-1])
    for d in reversed(denominators[:-1]):
        total = 1.0 / d - theta2 * total
    return total


def rodrigues_coefficients(omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sin t / t, (1 - cos t) / t^2, (t - sin t) / t^3) for t = |omega|, over omega's batch shape.

    Exact in value and gradient at every angle in float32 and float64: the power series in
    t^2 below the dtype's threshold (see _SERIES_BELOW), the closed forms above it. The
    square root is only taken on the closed-form branch, so the gradient at omega = 0 is the
    series' own (finite) one instead of 0 * inf.
    """
    theta2 = (omega * omega).sum(-1)
    below = _SERIES_BELOW.get(omega.dtype, _SERIES_BELOW_DEFAULT)
    small = theta2 < below * below
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    sin, cos = torch.sin(theta), torch.cos(theta)
    a = torch.where(small, _series(theta2, 1), sin / theta)
    b = torch.where(small, _series(theta2, 2), (1 - cos) / theta**2)
    c = torch.where(small, _series(theta2, 3), (theta - sin) / theta**3)
    return a, b, c


def hat(omega: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) skew-symmetric matrix with hat(a) @ b = a x b."""
    omega = _as_tensor(omega)
    x, y, z = omega.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack(
        [
            torch.stack([zero, -z, y], -1),
            torch.stack([z, zero, -x], -1),
            torch.stack([-y, x, zero], -1),
        ],
        -2,
    )


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) -> rotation matrix (..., 3, 3) by Rodrigues' formula.

    The coefficients sin(t)/t and (1 - cos t)/t^2 switch to their Taylor series near t = 0
    (`rodrigues_coefficients`), so the map and its gradient are exact at and near the
    identity (where optimisation starts), in float32 as in float64.
    """
    omega = _as_tensor(omega)
    a, b, _ = rodrigues_coefficients(omega)
    K = hat(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand(K.shape)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) -> axis-angle (..., 3) with angle in [0, pi].

    The angle comes from atan2(|vee(R - R^T)| / 2, (tr R - 1) / 2), which keeps full precision
    at every angle (arccos of the trace alone loses half the digits near 0 and pi). Beyond
    3 pi / 4 the antisymmetric part is too small to give the axis accurately, so the axis is
    read from the symmetric part, (R + R^T) / 2 = cos t I + (1 - cos t) a a^T, with its sign
    taken from the antisymmetric remainder.
    """
    R = _as_tensor(R)
    trace = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    vee = torch.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]],
        -1,
    )
    sin2 = vee.norm(dim=-1)  # 2 sin t
    cos = (trace - 1) / 2
    theta = torch.atan2(sin2 / 2, cos)
    small = theta < _SMALL_ANGLE
    safe_sin2 = torch.where(small, torch.ones_like(sin2), sin2)
    factor = torch.where(small, 0.5 + theta**2 / 12, theta / safe_sin2)
    omega = factor[..., None] * vee

    large = theta > 0.75 * torch.pi
    if bool(large.any()):
        eye = torch.eye(3, dtype=R.dtype, device=R.device)
        sym = (R + R.transpose(-1, -2)) / 2
        outer = (sym - cos[..., None, None] * eye) / (1 - cos)[..., None, None].clamp_min(1e-12)
        best = torch.diagonal(outer, dim1=-2, dim2=-1).argmax(-1)  # largest |a_j|
        column = torch.gather(outer, -1, best[..., None, None].expand(*outer.shape[:-1], 1))[..., 0]
        axis = column / column.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        sign = torch.where((axis * vee).sum(-1) < 0, -1.0, 1.0).to(R.dtype)
        omega = torch.where(large[..., None], axis * (theta * sign)[..., None], omega)
    return omega


def rotation_about_axis(axis, angle) -> torch.Tensor:
    """Rotation by `angle` radians about `axis` ((..., 3) vector or one of 'x', 'y', 'z')."""
    angle = _as_tensor(angle)
    if isinstance(axis, str):
        index = "xyz".find(axis)
        if len(axis) != 1 or index < 0:
            raise ValueError(f"axis must be 'x', 'y', 'z' or a 3-vector, got {axis!r}")
        unit = torch.zeros(3, dtype=angle.dtype, device=angle.device)
        unit[index] = 1.0
        unit = unit.expand(*angle.shape, 3)
    else:
        unit = _as_tensor(axis, angle)
        unit = unit / unit.norm(dim=-1, keepdim=True)
    return so3_exp(unit * angle[..., None])


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera pose (R, t) of a camera at `eye` looking at `target`, in Pix3D's frame.

    The camera's y axis points up in the image: the world `up` projected off the viewing
    direction; x = y cross z completes a right-handed frame (x left, seen from the camera).
    Returns R (..., 3, 3) whose rows are the camera axes in world coordinates, and
    t = -R eye (..., 3).
    """
    eye = _as_tensor(eye)
    target = _as_tensor(target, eye)
    up = _as_tensor(up, eye).expand_as(eye)
    z = target - eye
    z = z / z.norm(dim=-1, keepdim=True)
    upward = up - (up * z).sum(-1, keepdim=True) * z
    norm = upward.norm(dim=-1, keepdim=True)
    if bool((norm < 1e-9).any()):
        raise ValueError("look_at: viewing direction is parallel to `up`")
    y = upward / norm
    x = torch.cross(y, z, dim=-1)
    R = torch.stack([x, y, z], -2)
    t = -(R @ eye[..., None])[..., 0]
    return R, t


def camera_centre(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Camera centre in the model frame, C = -R^T t (Pix3D's cam_position)."""
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Twist (..., 6) ordered (v, omega) -> homogeneous transform (..., 4, 4).

    The translation is V v with V = I + b K + c K^2 (the left Jacobian of SO(3)), so a
    constant twist is a screw motion and the map is the true group exponential.
    """
    xi = _as_tensor(xi)
    v, omega = xi[..., :3], xi[..., 3:]
    a, b, c = rodrigues_coefficients(omega)
    K = hat(omega)
    K2 = K @ K
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand(K.shape)
    V = eye + b[..., None, None] * K + c[..., None, None] * K2
    T = torch.zeros(*xi.shape[:-1], 4, 4, dtype=xi.dtype, device=xi.device)
    T[..., :3, :3] = eye + a[..., None, None] * K + b[..., None, None] * K2
    T[..., :3, 3] = (V @ v[..., None])[..., 0]
    T[..., 3, 3] = 1.0
    return T


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply a 4x4 (or 3x4) transform (..., 4, 4) to points (..., N, 3)."""
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    return points @ R.transpose(-1, -2) + t[..., None, :]


def focal_mm_to_px(focal_mm, width_px, sensor_width_mm: float = SENSOR_WIDTH_MM):
    """Pix3D focal length (mm on a 32 mm wide sensor) -> pixels for an image `width_px` wide."""
    return focal_mm / sensor_width_mm * width_px


def intrinsics(focal_mm, width: int, height: int, *, dtype=torch.float64) -> torch.Tensor:
    """Pinhole matrix K (..., 3, 3) in Pix3D's frame: square pixels, principal point at the
    image centre, -f_px on the diagonal (x left and y up in the camera, u right and v down
    in the image)."""
    f = focal_mm_to_px(_as_tensor(focal_mm, torch.zeros((), dtype=dtype)), width)
    K = torch.zeros(*f.shape, 3, 3, dtype=f.dtype, device=f.device)
    K[..., 0, 0] = -f
    K[..., 1, 1] = -f
    K[..., 0, 2] = width / 2
    K[..., 1, 2] = height / 2
    K[..., 2, 2] = 1.0
    return K


def project(points_cam: torch.Tensor, K: torch.Tensor, eps: float = 1e-8):
    """Camera-frame points (..., N, 3) -> (pixels (..., N, 2), depth (..., N)).

    Depth is clamped away from zero only in the division, so points behind the camera keep
    their sign in the returned depth and callers can mask them.
    """
    z = points_cam[..., 2]
    safe = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
    xy = points_cam[..., :2] / safe[..., None]
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    uv = torch.stack([fx * xy[..., 0] + cx, fy * xy[..., 1] + cy], -1)
    return uv, z


def pixel_centres(height: int, width: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(H, W, 2) continuous (u, v) coordinates of the pixel centres (i + 0.5)."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack([u, v], -1)


def backproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Depth maps (B, H, W) -> camera-frame points (B, H*W, 3) through the pixel centres."""
    B, H, W = depth.shape
    uv = pixel_centres(H, W, dtype=depth.dtype, device=depth.device).reshape(1, -1, 2)
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    z = depth.reshape(B, -1)
    x = (uv[..., 0] - cx) / fx * z
    y = (uv[..., 1] - cy) / fy * z
    return torch.stack([x, y, z], -1)


def inverse_warp_grid(
    depth_target: torch.Tensor, target_to_source: torch.Tensor, K: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling grid that pulls a source image into the target view, for `grid_sample`.

    depth_target (B, H, W); target_to_source either a twist (B, 6) (through `se3_exp`, so a
    network can predict it) or a transform (B, 4, 4); K (B, 3, 3) shared by both views.
    Each target pixel is lifted with its depth, moved into the source camera and projected.
    Returns (grid (B, H, W, 2) in [-1, 1] for align_corners=False, valid (B, H, W) bool:
    in front of the source camera and inside its image).
    """
    B, H, W = depth_target.shape
    T = se3_exp(target_to_source) if target_to_source.shape[-1] == 6 else target_to_source
    points = transform_points(T, backproject(depth_target, K))
    uv, z = project(points, K)
    # align_corners=False: -1 and +1 are the outer edges of the border pixels, i.e. u = 0, W.
    gx = 2 * uv[..., 0] / W - 1
    gy = 2 * uv[..., 1] / H - 1
    grid = torch.stack([gx, gy], -1).reshape(B, H, W, 2)
    valid = (z > 0) & (gx.abs() <= 1) & (gy.abs() <= 1)
    return grid, valid.reshape(B, H, W)


def inverse_warp(
    source: torch.Tensor, depth_target: torch.Tensor, target_to_source: torch.Tensor, K: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp `source` (B, C, H, W) into the target view; returns (warped, valid mask)."""
    grid, valid = inverse_warp_grid(depth_target, target_to_source, K)
    warped = F.grid_sample(source, grid.to(source.dtype), mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    return warped, valid
