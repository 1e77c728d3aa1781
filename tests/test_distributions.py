"""TransportPosterior q(z|x) and AnchorPrior p(z): shapes, gradients, and log-densities against hand sums."""

from __future__ import annotations

import math

import pytest
import torch

from vaells.distributions import (
    AnchorPrior,
    TransportPosterior,
    anchor_log_mean_exp,
    gaussian_log_prob,
    laplace_log_prob,
)
from vaells.inference import CoefficientSolver
from vaells.transport import TransportOperator

B, D, M, NA = 5, 2, 2, 4
_SOLVER = CoefficientSolver(l1_weight=1e-6, restarts=((0.0, 1.0),), max_iter=20)


def _transport(d: int = D, m: int = M, seed: int = 0, init_std: float = 0.3) -> TransportOperator:
    torch.manual_seed(seed)
    return TransportOperator(d, m, init_std=init_std)


def _points(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _hand_component_log_prob(z, anchor, c, psi, noise_std, coeff_scale) -> float:
    """log N(z; expm(sum_m c_m Psi_m) a, s^2 I) + log prod_m Lap(c_m; 0, b), term by term with math and an
    independent matrix exponential (torch.linalg.matrix_exp)."""
    a = torch.linalg.matrix_exp(torch.einsum("m,mij->ij", c, psi))
    r = (z - a @ anchor).tolist()
    d, m = len(r), c.shape[0]
    gauss = -0.5 * sum(x * x for x in r) / noise_std**2 - d * math.log(noise_std) - 0.5 * d * math.log(2 * math.pi)
    lap = -sum(abs(x) for x in c.tolist()) / coeff_scale - m * math.log(2 * coeff_scale)
    return gauss + lap


# -- TransportPosterior -----------------------------------------------------------------------------------
def test_posterior_shapes_and_finite_log_prob() -> None:
    t = _transport()
    mu = _points(B, D, seed=1)
    q = TransportPosterior(mu, t, coeff_scale=1.0, noise_std=0.1, solver=_SOLVER)
    assert q.batch_shape == (B,) and q.event_shape == (D,) and q.has_rsample
    z = q.rsample()
    assert z.shape == (B, D) and z.dtype == torch.float64
    z_s, c_s = q.rsample_with_coefficients(torch.Size([7]))
    assert z_s.shape == (7, B, D) and c_s.shape == (7, B, M)
    assert q.rsample(torch.Size([7])).shape == (7, B, D)
    lp = q.log_prob(z)
    assert lp.shape == (B,) and torch.isfinite(lp).all()


def test_posterior_rsample_gradients_reach_encoder_and_psi() -> None:
    t = _transport(init_std=0.1)
    encoder = torch.nn.Linear(6, D, dtype=torch.float64)
    x = _points(B, 6, seed=2)
    q = TransportPosterior(encoder(x), t, coeff_scale=1.0, noise_std=0.1)
    q.rsample().sum().backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    assert encoder.bias.grad is not None and encoder.bias.grad.abs().sum() > 0
    assert t.psi.grad is not None and t.psi.grad.abs().sum() > 0


def test_posterior_log_prob_is_gaussian_plus_laplace_at_c_hat() -> None:
    t = _transport()
    mu, z = _points(B, D, seed=3), _points(B, D, seed=4)
    c_hat = _points(B, M, seed=5, scale=0.5)
    noise_std, b = 0.3, 0.7
    q = TransportPosterior(mu, t, coeff_scale=b, noise_std=noise_std, solver=_SOLVER)
    got = q.log_prob(z, c_hat=c_hat)
    # composed from the library's own pieces
    residual = z - (torch.linalg.matrix_exp(torch.einsum("bm,mij->bij", c_hat, t.psi)) @ mu.unsqueeze(-1)).squeeze(-1)
    composed = gaussian_log_prob(residual, noise_std) + laplace_log_prob(c_hat, b)
    torch.testing.assert_close(got, composed, rtol=1e-10, atol=1e-10)
    # and from the formula, one sample at a time
    hand = [_hand_component_log_prob(z[i], mu[i], c_hat[i], t.psi.detach(), noise_std, b) for i in range(B)]
    torch.testing.assert_close(got.detach(), torch.tensor(hand, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    # without c_hat it infers one
    lp = q.log_prob(z)
    assert lp.shape == (B,) and torch.isfinite(lp).all()


def test_gaussian_and_laplace_log_prob_match_torch_distributions() -> None:
    r = _points(B, D, seed=6)
    c = _points(B, M, seed=7)
    torch.testing.assert_close(gaussian_log_prob(r, 0.4), torch.distributions.Normal(0.0, 0.4).log_prob(r).sum(-1))
    torch.testing.assert_close(laplace_log_prob(c, 0.4), torch.distributions.Laplace(0.0, 0.4).log_prob(c).sum(-1))


def test_posterior_validate_args_rejects_nan_mu() -> None:
    t = _transport()
    mu = _points(B, D, seed=8)
    mu[2, 1] = float("nan")
    with pytest.raises(ValueError, match="mu"):
        TransportPosterior(mu, t, coeff_scale=1.0, noise_std=0.1, validate_args=True)
    with pytest.raises(ValueError, match="mu"):
        TransportPosterior(_points(B, D + 1, seed=8), t, coeff_scale=1.0, noise_std=0.1, validate_args=True)


# -- AnchorPrior ------------------------------------------------------------------------------------------
def _prior(noise_std: float, anchors: torch.Tensor, t: TransportOperator, **kwargs) -> AnchorPrior:
    solver = CoefficientSolver(l1_weight=1e-3, restarts=((-1.0, 1.0),), max_iter=30)
    return AnchorPrior(anchors, t, coeff_scale=0.8, noise_std=noise_std, solver=solver, **kwargs)


def test_prior_shapes_and_gradients() -> None:
    t = _transport(init_std=0.1)
    anchors = _points(B, NA, D, seed=9).requires_grad_()
    p = _prior(0.5, anchors, t)
    assert p.batch_shape == (B,) and p.event_shape == (D,) and p.has_rsample
    z = p.rsample()
    assert z.shape == (B, D)
    z_s, c_s, idx = p.rsample_with_coefficients(torch.Size([3]))
    assert z_s.shape == (3, B, D) and c_s.shape == (3, B, M) and idx.shape == (3, B)
    assert int(idx.min()) >= 0 and int(idx.max()) < NA
    z.sum().backward()
    assert anchors.grad is not None and anchors.grad.abs().sum() > 0 and t.psi.grad.abs().sum() > 0
    lp = p.log_prob(_points(B, D, seed=10))
    assert lp.shape == (B,) and torch.isfinite(lp).all()


def test_prior_log_prob_equals_naive_log_mean_exp_in_float64() -> None:
    t = _transport()
    anchors, z = _points(B, NA, D, seed=11), _points(B, D, seed=12)
    noise_std = 0.5
    p = _prior(noise_std, anchors, t)
    result = p.infer(z)  # the solver's restarts are random: evaluate both sides at the same c_hat
    assert result.c.shape == (B, NA, M) and result.energy.shape == (B, NA)
    got = p.log_prob(z, result)
    psi = t.psi.detach()
    for i in range(B):
        comps = [_hand_component_log_prob(z[i], anchors[i, k], result.c[i, k], psi, noise_std, p.coeff_scale)
                 for k in range(NA)]
        assert min(comps) > -600  # exp() is safe: the naive formula is a valid reference here
        naive = math.log(sum(math.exp(w) for w in comps) / NA)
        assert got[i].item() == pytest.approx(naive, rel=1e-10, abs=1e-10)


def test_prior_log_prob_stays_finite_where_the_naive_sum_underflows() -> None:
    t = _transport(init_std=0.01)
    anchors = _points(B, NA, D, seed=13, scale=5.0)
    z = _points(B, D, seed=14, scale=5.0)
    noise_std = 1e-4
    p = _prior(noise_std, anchors, t)
    result = p.infer(z)
    got = p.log_prob(z, result)
    psi = t.psi.detach()
    for i in range(B):
        comps = [_hand_component_log_prob(z[i], anchors[i, k], result.c[i, k], psi, noise_std, p.coeff_scale)
                 for k in range(NA)]
        assert sum(math.exp(w) for w in comps) == 0.0  # the naive log(mean(exp)) would be -inf here
        top = max(comps)
        stable = top + math.log(sum(math.exp(w - top) for w in comps) / NA)
        assert math.isfinite(got[i].item())
        assert got[i].item() == pytest.approx(stable, rel=1e-10)


def test_closest_anchor_reduces_to_the_lowest_energy_anchor() -> None:
    t = _transport()
    anchors, z = _points(B, NA, D, seed=15), _points(B, D, seed=16)
    noise_std = 0.5
    full = _prior(noise_std, anchors, t)
    closest = _prior(noise_std, anchors, t, closest_anchor=True)
    result = full.infer(z)
    residual, c_hat = closest.components(z, result)
    assert residual.shape == (B, 1, D) and c_hat.shape == (B, 1, M)
    got = closest.log_prob(z, result)
    best = result.energy.argmin(-1)
    psi = t.psi.detach()
    hand = [_hand_component_log_prob(z[i], anchors[i, best[i]], result.c[i, best[i]], psi, noise_std, 0.8)
            for i in range(B)]
    torch.testing.assert_close(got, torch.tensor(hand, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    # ... which is not the mixture (so this test can tell the two apart)
    assert not torch.allclose(got, full.log_prob(z, result))


def test_anchor_log_mean_exp_is_stable() -> None:
    w = torch.tensor([[-1e4, -1e4 - math.log(3.0)], [0.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor([-1e4 + math.log((1 + 1 / 3) / 2), 0.0], dtype=torch.float64)
    torch.testing.assert_close(anchor_log_mean_exp(w), expected)
