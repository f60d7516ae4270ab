"""pix3d.geometry: rotations, SE(3), pinhole projection and the inverse warp, batched."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pix3d import geometry as g


def random_axis_angles(n: int, max_angle: float, dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    angle = torch.rand(n, generator=gen, dtype=torch.float64) * max_angle
    return (axis * angle[:, None]).to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_so3_exp_is_a_rotation_and_log_inverts_it(dtype, tol):
    # Angles up to just below pi, plus tiny ones that hit the Taylor branch.
    omega = torch.cat([random_axis_angles(200, math.pi - 1e-2, dtype),
                       random_axis_angles(20, 1e-6, dtype, seed=1)])
    R = g.so3_exp(omega)
    assert R.shape == (220, 3, 3) and R.dtype == dtype
    eye = torch.eye(3, dtype=dtype)
    assert torch.allclose(R @ R.transpose(-1, -2), eye.expand_as(R), atol=tol * 10)
    assert torch.allclose(torch.linalg.det(R), torch.ones(220, dtype=dtype), atol=tol * 10)
    back = g.so3_log(R)
    assert torch.allclose(back, omega, atol=tol * 10)


def test_so3_log_near_pi_recovers_the_rotation():
    # At pi the axis sign is ambiguous; exp(log(R)) must still give R back.
    omega = random_axis_angles(50, 1.0, torch.float64)
    omega = omega / omega.norm(dim=-1, keepdim=True) * (math.pi - 1e-7)
    R = g.so3_exp(omega)
    assert torch.allclose(g.so3_exp(g.so3_log(R)), R, atol=1e-6)
    assert torch.allclose(g.so3_log(R).norm(dim=-1), torch.full((50,), math.pi - 1e-7, dtype=torch.float64), atol=1e-6)


def test_so3_exp_gradient_is_finite_at_identity():
    omega = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    g.so3_exp(omega).sum().backward()
    assert torch.isfinite(omega.grad).all()


def test_rotation_about_axis_matches_textbook_matrix():
    a = torch.tensor(0.3, dtype=torch.float64)
    c, s = math.cos(0.3), math.sin(0.3)
    Rz = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(g.rotation_about_axis("z", a), Rz, atol=1e-12)
    assert torch.allclose(g.rotation_about_axis(torch.tensor([0, 0, 2.0], dtype=torch.float64), a), Rz, atol=1e-12)
    with pytest.raises(ValueError, match="axis"):
        g.rotation_about_axis("w", a)


def test_look_at_puts_target_on_optical_axis_with_up_upwards():
    eye = torch.tensor([[1.0, 0.7, -2.0], [-3.0, 1.0, 0.5]], dtype=torch.float64)
    target = torch.tensor([0.2, 0.1, 0.0], dtype=torch.float64)
    R, t = g.look_at(eye, target)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(2, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(2, dtype=torch.float64))
    target_cam = (R @ target[:, None])[..., 0] + t
    assert torch.allclose(target_cam[:, :2], torch.zeros(2, 2, dtype=torch.float64), atol=1e-12)
    assert (target_cam[:, 2] > 0).all()
    # A point above the target (world +y) has a larger camera y (Pix3D's frame: y up).
    above = (R @ (target + torch.tensor([0, 0.1, 0], dtype=torch.float64))[:, None])[..., 0] + t
    assert (above[:, 1] > 0).all()
    assert torch.allclose(g.camera_centre(R, t), eye, atol=1e-12)


def test_se3_exp_matches_matrix_exponential():
    gen = torch.Generator().manual_seed(3)
    xi = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    xi[:4] *= 1e-7  # Taylor branch
    T = g.se3_exp(xi)
    twist = torch.zeros(16, 4, 4, dtype=torch.float64)
    twist[:, :3, :3] = g.hat(xi[:, 3:])
    twist[:, :3, 3] = xi[:, :3]
    assert torch.allclose(T, torch.linalg.matrix_exp(twist), atol=1e-10)
    assert torch.allclose(T[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(16, 4))


def test_transform_points_and_projection_of_known_points():
    # 35 mm on a 32 mm sensor, 320 px wide: f = 350 px, principal point (160, 120); Pix3D's
    # frame: u = cx - f X/Z, v = cy - f Y/Z.
    K = g.intrinsics(torch.tensor(35.0, dtype=torch.float64), 320, 240)
    assert K[0, 0].item() == pytest.approx(-350.0) and K[0, 2].item() == 160 and K[1, 2].item() == 120
    T = g.se3_exp(torch.tensor([0.0, 0.0, 2.0, 0.0, 0.0, 0.0], dtype=torch.float64))  # push 2 m forward
    points = torch.tensor([[0.0, 0.0, 0.0], [0.2, -0.1, 0.0], [0.0, 0.0, 1.5]], dtype=torch.float64)
    uv, z = g.project(g.transform_points(T, points), K)
    expected = torch.tensor([[160, 120], [160 - 350 * 0.1, 120 + 350 * 0.05], [160, 120]], dtype=torch.float64)
    assert torch.allclose(uv, expected)
    assert torch.allclose(z, torch.tensor([2.0, 2.0, 3.5], dtype=torch.float64))


def test_backproject_inverts_project():
    K = g.intrinsics(torch.tensor([30.0, 50.0]), 64, 48, dtype=torch.float32)
    depth = torch.rand(2, 48, 64) + 1.0
    points = g.backproject(depth, K)
    uv, z = g.project(points, K)
    centres = g.pixel_centres(48, 64).reshape(1, -1, 2).expand(2, -1, -1)
    assert torch.allclose(uv, centres, atol=1e-3)
    assert torch.allclose(z, depth.reshape(2, -1))


def test_inverse_warp_identity_and_known_shift():
    torch.manual_seed(0)
    B, H, W = 2, 24, 32
    K = g.intrinsics(torch.full((B,), 32.0), W, H, dtype=torch.float32)  # f = W px
    source = torch.rand(B, 3, H, W)
    depth = torch.full((B, H, W), 2.0)
    warped, valid = g.inverse_warp(source, depth, torch.zeros(B, 6), K)
    assert valid.all()
    assert torch.allclose(warped, source, atol=1e-5)
    # Moving the camera so that points shift by exactly 4 pixels left in the source:
    # du = -4 px at depth 2 m and f = 32 px, with u = cx - f X/Z -> tx = +4 * 2 / 32.
    xi = torch.tensor([[4 * 2.0 / W, 0, 0, 0, 0, 0]] * B)
    warped, valid = g.inverse_warp(source, depth, xi, K)
    assert torch.allclose(warped[..., 4:], source[..., :-4], atol=1e-5)
    assert not valid[..., :3].any() and valid[..., 5:].all()


def test_inverse_warp_is_differentiable_in_the_pose():
    B, H, W = 1, 16, 16
    K = g.intrinsics(torch.tensor([32.0]), W, H, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    source = torch.stack([xx, yy, xx * yy])[None].double()
    xi = torch.tensor([[0.01, -0.02, 0.0, 0.01, 0.0, -0.02]], dtype=torch.float64, requires_grad=True)
    warped, _ = g.inverse_warp(source, torch.full((B, H, W), 1.5, dtype=torch.float64), xi, K)
    F.l1_loss(warped, source).backward()
    assert torch.isfinite(xi.grad).all() and xi.grad.abs().sum() > 0
