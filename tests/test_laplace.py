"""The Laplace coefficient prior: inverse-CDF sampling l(u; b) and the log-density (docs/method.md §1.1)."""

from __future__ import annotations

import math

import pytest
import torch

from vaells.distributions import laplace_from_uniform, laplace_log_prob, sample_laplace

N = 200_000


@pytest.mark.parametrize("scale", [0.1, 1.0, 2.5])
def test_sample_moments_match_laplace(scale: float) -> None:
    """mean 0, E|c| = b, Var c = 2 b^2, each to 4 standard errors of the n-sample estimate."""
    c = sample_laplace((N,), scale, generator=torch.Generator().manual_seed(0))
    assert c.shape == (N,) and c.dtype == torch.float64
    assert torch.isfinite(c).all()
    b = scale
    # Standard errors: sd(c) = sqrt(2) b; |c| ~ Exp(b) has sd b; E c^4 = 24 b^4 gives sd(c^2) = sqrt(20) b^2.
    root_n = math.sqrt(N)
    se_mean, se_abs, se_var = math.sqrt(2) * b / root_n, b / root_n, math.sqrt(20) * b**2 / root_n
    assert abs(c.mean().item()) < 4 * se_mean
    assert abs(c.abs().mean().item() - b) < 4 * se_abs
    assert abs(c.pow(2).mean().item() - 2 * b**2) < 4 * se_var
    # the median of |c| is b log 2 (a check on the shape, not only on the moments)
    assert abs(c.abs().median().item() - b * math.log(2)) < 0.02 * b


def test_sample_shape_dtype_and_determinism() -> None:
    a = sample_laplace((3, 4), 1.0, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    b = sample_laplace((3, 4), 1.0, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    assert a.shape == (3, 4) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_laplace_from_uniform_is_finite_at_the_boundary() -> None:
    u = torch.tensor([0.5, -0.5, 0.5 - 1e-18, -(0.5 - 1e-18), 0.5 - 1e-9, 0.0], dtype=torch.float64)
    c = laplace_from_uniform(u, 1.5)
    assert torch.isfinite(c).all(), c
    assert c[0] > 0 and c[1] < 0 and c[-1] == 0
    # the clamp moves only the extreme tail: a point well inside keeps the exact inverse CDF
    assert c[4].item() == pytest.approx(-1.5 * math.log(2e-9), rel=1e-6)


def test_laplace_from_uniform_is_finite_at_the_boundary_float32() -> None:
    u = torch.tensor([0.5, -0.5, 0.5 - 1e-18, -(0.5 - 1e-18)], dtype=torch.float32)
    c = laplace_from_uniform(u, 1.0)
    assert c.dtype == torch.float32
    assert torch.isfinite(c).all(), c


def test_laplace_from_uniform_matches_inverse_cdf_and_is_odd() -> None:
    u = torch.rand(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) - 0.5
    u = torch.cat([u, torch.tensor([0.5, 0.5 - 1e-18, 0.25], dtype=torch.float64)])
    b = 0.7
    c = laplace_from_uniform(u, b)
    torch.testing.assert_close(laplace_from_uniform(-u, b), -c, rtol=0, atol=0)
    # Laplace(0, b).cdf(c) = u + 1/2 away from the clamped tail
    inner = u.abs() < 0.5 - 1e-6
    zero = torch.zeros((), dtype=torch.float64)
    cdf = torch.distributions.Laplace(zero, zero + b).cdf(c[inner])
    torch.testing.assert_close(cdf, u[inner] + 0.5, rtol=0, atol=1e-12)
    assert c[-1].item() == pytest.approx(b * math.log(2), rel=1e-14)  # u = 1/4 is the 3/4-quantile


def test_gradient_with_respect_to_scale() -> None:
    u = torch.tensor([0.5, -0.5, 0.5 - 1e-18, 0.3, -0.1, 0.0], dtype=torch.float64)
    scale = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    c = laplace_from_uniform(u, scale)
    (grad,) = torch.autograd.grad(c.sum(), scale)
    assert torch.isfinite(grad)
    # c = b * l(u; 1), so dc/db = c / b
    assert grad.item() == pytest.approx((c.detach() / 0.8).sum().item(), rel=1e-12)
    # through the sampler as well (the reparameterised prior sample)
    scale.grad = None
    s = sample_laplace((1000,), scale, generator=torch.Generator().manual_seed(3))
    s.abs().sum().backward()
    assert scale.grad is not None and torch.isfinite(scale.grad)
    assert scale.grad.item() == pytest.approx((s.detach().abs() / 0.8).sum().item(), rel=1e-12)


@pytest.mark.parametrize("scale", [0.05, 1.0, torch.tensor(3.0, dtype=torch.float64)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_prob_matches_torch_distributions(scale: float | torch.Tensor, dtype: torch.dtype) -> None:
    c = 2 * torch.randn(4, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    c[0, 0, 0] = 0.0
    b = torch.as_tensor(scale, dtype=torch.float64)
    expected = torch.distributions.Laplace(torch.zeros_like(b), b).log_prob(c).sum(-1)
    got = laplace_log_prob(c.to(dtype), scale)
    assert got.shape == (4, 5) and got.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


def test_log_prob_gradient_with_respect_to_scale() -> None:
    c = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    scale = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    laplace_log_prob(c, scale).sum().backward()
    # d/db [-|c|_1 / b - M log(2b)] summed over rows = sum|c| / b^2 - N M / b
    expected = c.abs().sum() / 0.36 - 12 / 0.6
    assert scale.grad.item() == pytest.approx(expected.item(), rel=1e-12)
