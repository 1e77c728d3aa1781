"""VAELLS's log-likelihood bound (``vaells.models.importance.bound_log_weights``, docs/method.md §3) where the answer
is known: with Psi = 0 and a linear decoder, p(x) is a Gaussian mixture in closed form; the estimate approaches it
from below as K grows; it rises with K; and two estimator seeds agree."""

from __future__ import annotations

import math

import torch

from vaells.distributions import gaussian_log_prob, log_mean_exp
from vaells.inference import CoefficientSolver
from vaells.models.importance import LatentDensities, bound_log_weights
from vaells.transport import TransportOperator

D, SIGMA, RECON, B = 3, 0.3, 4.0, 1.0


def _densities(psi: torch.Tensor) -> LatentDensities:
    transport = TransportOperator(psi.shape[-1], psi.shape[0])
    with torch.no_grad():
        transport.psi.copy_(psi)
    return LatentDensities(transport, CoefficientSolver(l1_weight=1e-6, restarts=[(0.0, 1.0)]),
                           CoefficientSolver(l1_weight=1e-6), coeff_scale=B, noise_std=SIGMA, latent_scale=1.0,
                           closest_anchor=False)


def _setting() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(D, 2, generator=gen, dtype=torch.float64)  # the linear decoder x = W z
    anchors = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [0.0, -1.2]], dtype=torch.float64)
    x = torch.randn(8, D, generator=gen, dtype=torch.float64)
    mu = torch.linalg.lstsq(w, x.T).solution.T  # an encoder that inverts the decoder (any q gives a bound)
    return w, anchors, x, mu


def _bound(densities, w, anchors, x, mu, k: int, seed: int = 0) -> torch.Tensor:
    """log (1/K) sum_k w_k for each point (N,)."""
    torch.manual_seed(seed)
    x_rep = x.repeat_interleave(k, 0)
    log_lik = lambda z: gaussian_log_prob(x_rep - z @ w.T, RECON**-0.5)  # noqa: E731
    return log_mean_exp(bound_log_weights(densities, mu, anchors, log_lik, k))


def test_with_psi_zero_it_approaches_the_closed_form_from_below() -> None:
    w, anchors, x, mu = _setting()
    densities = _densities(torch.zeros(1, 2, 2, dtype=torch.float64))
    # p(x) = (1/A) sum_i N(x; W a_i, sigma^2 W W^T + I / recon): z = a_i + sigma eps, whatever c is (T = I)
    cov = SIGMA**2 * w @ w.T + torch.eye(D, dtype=torch.float64) / RECON
    exact = torch.logsumexp(torch.distributions.MultivariateNormal(anchors @ w.T, cov).log_prob(x.unsqueeze(1)),
                            -1) - math.log(anchors.shape[0])  # (N,)
    one = torch.stack([_bound(densities, w, anchors, x, mu, 1, seed) for seed in range(40)])  # (40, N)
    many = _bound(densities, w, anchors, x, mu, 4000)
    assert float(one.mean()) < float(exact.mean())  # a bound: below on average
    assert float(one.mean(0).sub(exact).max()) < 0.1  # ... at every point, to its own sampling error
    torch.testing.assert_close(many, exact, atol=0.1, rtol=0.0)  # and it closes the gap as K grows


def test_it_rises_with_k_and_two_seeds_agree_on_a_rotation() -> None:
    w, anchors, x, mu = _setting()
    densities = _densities(torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64))
    ks = (1, 10, 100)
    means = [float(torch.stack([_bound(densities, w, anchors, x, mu, k, seed) for seed in range(5)]).mean())
             for k in ks]
    assert means[0] < means[1] < means[2]
    a, b = _bound(densities, w, anchors, x, mu, 100, seed=0), _bound(densities, w, anchors, x, mu, 100, seed=1)
    stderr = math.hypot(float(a.std()), float(b.std())) / math.sqrt(a.numel())
    assert abs(float(a.mean() - b.mean())) < 3 * stderr


def _exact_log_px_for_a_rotation(w, anchors, x) -> torch.Tensor:
    """log p(x) (N,) by quadrature: p(z) = (1/A) sum_i integral Lap(c; b) N(z; R(c) a_i, sigma^2 I) dc on a grid of
    c, then p(x) = integral N(x; W z, I / recon) p(z) dz on a grid of z."""
    g = torch.linspace(-2.4, 2.4, 161, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)  # (G, 2)
    c = torch.linspace(-20.0, 20.0, 2001, dtype=torch.float64)
    turn = torch.stack([torch.stack([c.cos(), -c.sin()], -1), torch.stack([c.sin(), c.cos()], -1)], -2)  # (C, 2, 2)
    log_lap = -c.abs() / B - math.log(2 * B) + math.log(float(c[1] - c[0]))
    log_pz = torch.stack([torch.logsumexp(gaussian_log_prob(z[:, None] - turn @ a, SIGMA) + log_lap, -1)
                          for a in anchors]).logsumexp(0) - math.log(anchors.shape[0])  # (G,)
    log_lik = gaussian_log_prob(x[:, None] - z @ w.T, RECON**-0.5)  # (N, G)
    return torch.logsumexp(log_lik + log_pz, -1) + 2 * math.log(float(g[1] - g[0]))


def test_on_a_rotation_it_stays_below_log_p_x_by_quadrature() -> None:
    w, anchors, x, mu = _setting()
    densities = _densities(torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64))
    exact = _exact_log_px_for_a_rotation(w, anchors, x)
    gap = torch.stack([_bound(densities, w, anchors, x, mu, 300, seed) for seed in range(6)]) - exact  # (6, N)
    stderr = float(gap.std()) / math.sqrt(gap.numel())
    assert float(gap.mean()) < 3 * stderr  # below log p(x) in expectation, to sampling error
    assert float(gap.mean()) > -0.5  # and not far below
