"""se3_exp's gradients are exact in float32 and float64 at every angle, including near zero.

Training the relative-pose head starts at the zero twist, so the gradients near theta = 0 are
the ones that matter most; the float32 closed forms lose their digits there (issue 14).
The references are independent of the code under test: the float64 gradient, and the matrix
exponential of the 4 x 4 twist matrix (torch.linalg.matrix_exp) and its autograd gradient.
"""

from __future__ import annotations

import math

import pytest
import torch

from pix3d import geometry

ANGLES = [0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1.5e-4, 3e-4, 1e-3, 3e-3, 1e-2, 0.1, 0.2499, 0.2501,
          0.5, 0.9999, 1.0001, 2.0, 3.0, math.pi]


def _twists(angle: float, n: int = 6, seed: int = 0) -> torch.Tensor:
    """n float64 twists (v, omega) with |omega| = angle along random axes."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=1, keepdim=True)
    v = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return torch.cat([v, axis * angle], 1)


def _jacobian(fn, xi: torch.Tensor) -> torch.Tensor:
    """d fn(xi) / d xi for one twist: (16, 6)."""
    return torch.autograd.functional.jacobian(lambda x: fn(x).reshape(-1), xi)


def _reference_exp(xi: torch.Tensor) -> torch.Tensor:
    """exp of the 4 x 4 se(3) matrix [[hat(omega), v], [0, 0]]: the group exponential itself."""
    m = torch.zeros(*xi.shape[:-1], 4, 4, dtype=xi.dtype)
    m[..., :3, :3] = geometry.hat(xi[..., 3:])
    m[..., :3, 3] = xi[..., :3]
    return torch.linalg.matrix_exp(m)


@pytest.mark.parametrize("angle", ANGLES)
def test_float32_gradients_match_float64(angle):
    worst = 0.0
    for xi in _twists(angle):
        j64 = _jacobian(geometry.se3_exp, xi)
        j32 = _jacobian(geometry.se3_exp, xi.float()).double()
        # The rotation columns (d/d omega) are where the small-angle coefficients act.
        for cols in (slice(0, 3), slice(3, 6)):
            ref = j64[:, cols]
            worst = max(worst, float((j32[:, cols] - ref).norm() / ref.norm()))
    assert worst <= 1e-3, f"theta={angle:g}: float32 gradient off by {worst:.2e} (relative) from float64"


@pytest.mark.parametrize("angle", ANGLES)
def test_float64_value_and_gradient_match_matrix_exponential(angle):
    for xi in _twists(angle, n=3, seed=1):
        assert torch.allclose(geometry.se3_exp(xi), _reference_exp(xi), rtol=1e-12, atol=1e-13)
        j = _jacobian(geometry.se3_exp, xi)
        ref = _jacobian(_reference_exp, xi)
        err = float((j - ref).norm() / ref.norm())
        assert err <= 1e-10, f"theta={angle:g}: float64 gradient off by {err:.2e} from matrix_exp's"


def test_gradcheck_float64_across_the_series_switch():
    # One batch spanning zero, the float64 switch at 0.25, the float32 one at 1, and pi.
    xi = torch.cat([_twists(a, n=2, seed=2) for a in (0.0, 1e-7, 1e-3, 0.2, 0.3, 0.9, 1.1, 3.0)])
    xi.requires_grad_(True)
    assert torch.autograd.gradcheck(geometry.se3_exp, (xi,), eps=1e-7, atol=1e-8, rtol=1e-6)
    omega = xi[:, 3:].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(geometry.so3_exp, (omega,), eps=1e-7, atol=1e-8, rtol=1e-6)


def test_gradient_at_the_identity_is_finite_in_float32():
    # The pose head starts at exactly zero: its first gradient must be a number, and d R / d omega
    # at zero is the generator hat(e_i), d t / d v the identity.
    xi = torch.zeros(6, requires_grad=True)
    j = _jacobian(geometry.se3_exp, xi).reshape(4, 4, 6)
    assert torch.isfinite(j).all()
    for i in range(3):
        e = torch.zeros(3)
        e[i] = 1
        assert torch.allclose(j[:3, :3, 3 + i], geometry.hat(e), atol=1e-7)
        assert torch.allclose(j[:3, 3, i], e, atol=1e-7)
